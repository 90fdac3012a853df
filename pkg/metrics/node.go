package metrics

import (
	"sort"
	"sync"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
	"github.com/prometheus/client_golang/prometheus"
)

// Node collects the metrics of the volumes this node serves. The node
// server tells it which (Served when a volume is staged or re-served after
// a restart, Unserved when it is unstaged); every series of a volume goes
// when it is unserved, so the series stay bounded by the volumes on this
// node. Its methods are safe for concurrent use.
type Node struct {
	mu     sync.Mutex
	vols   map[string]*nodeVolume // by volume id
	budget *blockdev.NodeBudget   // the node-wide bounds; nil until told

	ack, flush, appendLat, apply *prometheus.HistogramVec

	served                                        *prometheus.Desc
	requests, requestErrors, requestBytes         *prometheus.Desc
	pending, pendingLimit, bpWaits, bpWaitSeconds *prometheus.Desc
	dirty, dirtyLimit, dirtyWaits, dirtyWaitSecs  *prometheus.Desc
	nodePending, nodePendingLimit                 *prometheus.Desc
	nodeDirty, nodeDirtyLimit                     *prometheus.Desc
	nodeWaits, nodeWaitSeconds                    *prometheus.Desc
	lagEntries, lagBytes, objectSets              *prometheus.Desc
	journalEntries, journalWaves                  *prometheus.Desc
	replayEntries, replayBytes, replaySeconds     *prometheus.Desc
	replayTornExtents                             *prometheus.Desc
	handoverSeconds, handoverResent               *prometheus.Desc
	lockState, lockTakeovers, lockFencings        *prometheus.Desc
	state                                         *prometheus.Desc
}

type nodeVolume struct {
	dev *blockdev.Device
	obs *observer
	// set when the volume's FUSE connection was adopted after a restart
	adopted      bool
	adoptSeconds float64
	resent       uint64
}

const (
	labelVolume = "volume_id"
	labelOp     = "op"
	labelClient = "client"
	labelOwn    = "own"
	labelState  = "state"
)

// NewNode returns the node collector; register it with the registry.
func NewNode() *Node {
	vol := []string{labelVolume}
	desc := func(name, help string, extra ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "volume", name), help, append(vol[:1:1], extra...), nil)
	}
	nodeDesc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "node", name), help, nil, nil)
	}
	hist := func(name, help string, extra ...string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "volume", Name: name, Help: help, Buckets: latencyBuckets,
		}, append(vol[:1:1], extra...))
	}
	return &Node{
		vols: map[string]*nodeVolume{},
		ack: hist("ack_duration_seconds",
			"Latency of the volume's read, write, write_zeroes and discard requests, from the request to its acknowledgement (a write: once queued for the journal with the writeback ack policy, once journaled with the journaled one, once also applied with the applied one).", labelOp),
		flush:     hist("flush_duration_seconds", "Latency of the volume's flush requests (every earlier acknowledged write durable)."),
		appendLat: hist("journal_append_duration_seconds", "Time from a request's journal append to its entry being durable in the journal."),
		apply:     hist("apply_duration_seconds", "Time one journaled change took to be applied to the image (after its entry was durable)."),

		served:           nodeDesc("volumes_served", "Volumes this node plugin serves (journaled devices open)."),
		requests:         desc("requests_total", "Requests the volume's device completed, by kind (read, write, write_zeroes, discard, flush), since it was last opened.", labelOp),
		requestErrors:    desc("request_errors_total", "Requests of the volume's device that failed, by kind, since it was last opened.", labelOp),
		requestBytes:     desc("request_bytes_total", "Bytes the volume's successful requests read, wrote, zeroed or discarded, by kind, since it was last opened.", labelOp),
		pending:          desc("pending_bytes", "Written bytes journaled (or being journaled) but not yet applied to the image."),
		pendingLimit:     desc("pending_bytes_limit", "Bound of pending_bytes: writers wait beyond it (backpressure)."),
		bpWaits:          desc("backpressure_waits_total", "Requests that waited because the pending bytes were at their bound."),
		bpWaitSeconds:    desc("backpressure_wait_seconds_total", "Summed time requests waited for pending bytes to drain."),
		dirty:            desc("dirty_bytes", "Ack policy writeback: written bytes acknowledged but not yet durable in the journal (what a crash may lose after the last completed flush; 0 with the other policies)."),
		dirtyLimit:       desc("dirty_bytes_limit", "Bound of dirty_bytes: writers wait beyond it (0 unless the ack policy is writeback)."),
		dirtyWaits:       desc("dirty_waits_total", "Requests that waited because the volume's dirty bytes were at their bound."),
		dirtyWaitSecs:    desc("dirty_wait_seconds_total", "Summed time requests waited for the volume's dirty bytes to become durable."),
		nodePending:      nodeDesc("pending_bytes", "Written bytes journaled (or being journaled) but not yet applied, summed over every volume this node plugin serves (held in memory)."),
		nodePendingLimit: nodeDesc("pending_bytes_limit", "Node-wide bound of node_pending_bytes (--max-pending-bytes): writers of every volume wait beyond it."),
		nodeDirty:        nodeDesc("dirty_bytes", "Bytes acknowledged but not yet durable (ack policy writeback), summed over every volume this node plugin serves."),
		nodeDirtyLimit:   nodeDesc("dirty_bytes_limit", "Node-wide bound of node_dirty_bytes (--max-dirty-bytes)."),
		nodeWaits:        nodeDesc("budget_waits_total", "Requests that waited at a node-wide bound (pending or dirty bytes)."),
		nodeWaitSeconds:  nodeDesc("budget_wait_seconds_total", "Summed time requests waited at a node-wide bound."),
		lagEntries: desc("journal_lag_entries",
			"Journal entries past a registered client's commit position: client is the journal client id (\"\" is librbd's and this plugin's own, own=\"true\"; rbd-mirror peers register under their mirror uuid). Returns to 0 once everything written is applied and committed.", labelClient, labelOwn),
		lagBytes: desc("journal_lag_bytes",
			"Payload bytes of the journal entries past a registered client's commit position (entries this node appended or replayed since it opened the volume; a lower bound for a client behind those).", labelClient, labelOwn),
		objectSets:        desc("journal_object_sets", "Journal object sets in use (active set - minimum set + 1): grows while some client's commit position holds trimming back."),
		journalEntries:    desc("journal_entries_total", "Journal entries appended since the volume was last opened."),
		journalWaves:      desc("journal_append_waves_total", "Rounds of journal object appends sent together (each one sync of the journal) since the volume was last opened."),
		replayEntries:     desc("replay_entries", "Journal entries replayed when the volume was last opened (writes acknowledged but not applied before a crash or takeover)."),
		replayBytes:       desc("replay_bytes", "Payload bytes replayed when the volume was last opened."),
		replaySeconds:     desc("replay_duration_seconds", "How long the replay took when the volume was last opened."),
		handoverSeconds:   desc("handover_seconds", "After a node plugin restart that adopted the volume's FUSE connection from the fuse-holder: this plugin's part of the pause pods saw (fence, replay, adopt), in seconds. Absent if the volume was not adopted."),
		handoverResent:    desc("handover_resent_requests", "After an adoption: the FUSE requests the dead predecessor had read but not answered that the kernel sent again (FUSE_NOTIFY_RESEND)."),
		replayTornExtents: desc("replay_torn_extents", "journalMode metadata: extents named by log entries past the commit position that no longer held the data their entry records when the volume was last opened (0 in full mode)."),
		lockState:         desc("lock_state", "The image's exclusive lock as this node holds it: 1 for the current state (held, rewatching, lost, released), 0 for the others.", labelState),
		lockTakeovers:     desc("lock_takeovers_total", "Times opening the volume took the lock from another holder (released on request, or fenced) since it was last opened."),
		lockFencings:      desc("lock_fencings_total", "Holders fenced (blocklisted) before their lock was broken, when the volume was last opened."),
		state:             desc("state", "The volume's device: 1 for the current state (serving, failed, closed), 0 for the others.", labelState),
	}
}

// Served starts collecting the metrics of the device serving volumeID
// (replacing a previous device of the same volume).
func (n *Node) Served(volumeID string, dev *blockdev.Device) {
	obs := &observer{
		flush:  n.flush.WithLabelValues(volumeID),
		append: n.appendLat.WithLabelValues(volumeID),
		apply:  n.apply.WithLabelValues(volumeID),
	}
	for op := range blockdev.NumOps {
		if op != blockdev.OpFlush {
			obs.ack[op] = n.ack.WithLabelValues(volumeID, op.String())
		}
	}
	n.mu.Lock()
	old := n.vols[volumeID]
	n.vols[volumeID] = &nodeVolume{dev: dev, obs: obs}
	n.mu.Unlock()
	if old != nil && old.dev != dev {
		old.dev.SetObserver(nil)
	}
	dev.SetObserver(obs)
}

// Unserved stops collecting volumeID's metrics and drops its series.
func (n *Node) Unserved(volumeID string) {
	n.mu.Lock()
	v := n.vols[volumeID]
	delete(n.vols, volumeID)
	n.mu.Unlock()
	if v != nil {
		v.dev.SetObserver(nil)
	}
	l := prometheus.Labels{labelVolume: volumeID}
	for _, h := range []*prometheus.HistogramVec{n.ack, n.flush, n.appendLat, n.apply} {
		h.DeletePartialMatch(l)
	}
}

// Describe implements prometheus.Collector.
func (n *Node) Describe(ch chan<- *prometheus.Desc) {
	for _, h := range []*prometheus.HistogramVec{n.ack, n.flush, n.appendLat, n.apply} {
		h.Describe(ch)
	}
	for _, d := range []*prometheus.Desc{
		n.served, n.requests, n.requestErrors, n.requestBytes, n.pending, n.pendingLimit, n.bpWaits, n.bpWaitSeconds,
		n.dirty, n.dirtyLimit, n.dirtyWaits, n.dirtyWaitSecs,
		n.nodePending, n.nodePendingLimit, n.nodeDirty, n.nodeDirtyLimit, n.nodeWaits, n.nodeWaitSeconds,
		n.lagEntries, n.lagBytes, n.objectSets, n.journalEntries, n.journalWaves,
		n.replayEntries, n.replayBytes, n.replaySeconds, n.replayTornExtents, n.handoverSeconds, n.handoverResent, n.lockState, n.lockTakeovers, n.lockFencings, n.state,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: it reads every served device's
// counters.
func (n *Node) Collect(ch chan<- prometheus.Metric) {
	for _, h := range []*prometheus.HistogramVec{n.ack, n.flush, n.appendLat, n.apply} {
		h.Collect(ch)
	}
	n.mu.Lock()
	ids := make([]string, 0, len(n.vols))
	devs := make(map[string]*blockdev.Device, len(n.vols))
	handovers := map[string]nodeVolume{}
	for id, v := range n.vols {
		ids = append(ids, id)
		devs[id] = v.dev
		if v.adopted {
			handovers[id] = *v
		}
	}
	budget := n.budget
	n.mu.Unlock()
	sort.Strings(ids)
	ch <- prometheus.MustNewConstMetric(n.served, prometheus.GaugeValue, float64(len(ids)))
	if budget != nil {
		b := budget.Stats()
		ch <- prometheus.MustNewConstMetric(n.nodePending, prometheus.GaugeValue, float64(b.PendingBytes))
		ch <- prometheus.MustNewConstMetric(n.nodePendingLimit, prometheus.GaugeValue, float64(b.MaxPendingBytes))
		ch <- prometheus.MustNewConstMetric(n.nodeDirty, prometheus.GaugeValue, float64(b.DirtyBytes))
		ch <- prometheus.MustNewConstMetric(n.nodeDirtyLimit, prometheus.GaugeValue, float64(b.MaxDirtyBytes))
		ch <- prometheus.MustNewConstMetric(n.nodeWaits, prometheus.CounterValue, float64(b.Waits))
		ch <- prometheus.MustNewConstMetric(n.nodeWaitSeconds, prometheus.CounterValue, b.Wait.Seconds())
	}
	for _, id := range ids {
		n.collectVolume(ch, id, devs[id])
		if h, ok := handovers[id]; ok {
			ch <- prometheus.MustNewConstMetric(n.handoverSeconds, prometheus.GaugeValue, h.adoptSeconds, id)
			ch <- prometheus.MustNewConstMetric(n.handoverResent, prometheus.GaugeValue, float64(h.resent), id)
		}
	}
}

// NodeBudget sets the node-wide bounds whose use Collect reports
// (nodeserver.BudgetMetrics).
func (n *Node) NodeBudget(b *blockdev.NodeBudget) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.budget = b
}

// Adopted records that volumeID's FUSE connection was adopted after a
// restart (nodeserver.HandoverMetrics): took is this process's part of the
// pause, resent the requests the kernel sent again.
func (n *Node) Adopted(volumeID string, took time.Duration, resent uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if v := n.vols[volumeID]; v != nil {
		v.adopted, v.adoptSeconds, v.resent = true, took.Seconds(), resent
	}
}

func (n *Node) collectVolume(ch chan<- prometheus.Metric, id string, dev *blockdev.Device) {
	counter := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, append([]string{id}, lv...)...)
	}
	gauge := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{id}, lv...)...)
	}
	st := dev.Stats()
	for op := range blockdev.NumOps {
		o := st.Ops[op]
		counter(n.requests, float64(o.Requests), op.String())
		counter(n.requestErrors, float64(o.Errors), op.String())
		counter(n.requestBytes, float64(o.Bytes), op.String())
	}
	gauge(n.pending, float64(st.PendingBytes))
	gauge(n.pendingLimit, float64(st.MaxPendingBytes))
	counter(n.bpWaits, float64(st.BackpressureWaits))
	counter(n.bpWaitSeconds, st.BackpressureWait.Seconds())
	gauge(n.dirty, float64(st.DirtyBytes))
	gauge(n.dirtyLimit, float64(st.MaxDirtyBytes))
	counter(n.dirtyWaits, float64(st.DirtyWaits))
	counter(n.dirtyWaitSecs, st.DirtyWait.Seconds())
	gauge(n.replayEntries, float64(st.Replay.Entries))
	gauge(n.replayBytes, float64(st.Replay.Bytes))
	gauge(n.replaySeconds, st.ReplayDuration.Seconds())
	gauge(n.replayTornExtents, float64(dev.MetadataReplayStats().TornExtents))
	for _, s := range exclusivelock.States {
		gauge(n.lockState, boolFloat(st.Lock.State == s), string(s))
	}
	counter(n.lockTakeovers, float64(st.Lock.Takeovers))
	counter(n.lockFencings, float64(st.Lock.Fencings))
	for _, s := range blockdev.States {
		gauge(n.state, boolFloat(st.State == s), string(s))
	}
	j := dev.Journal()
	if j == nil {
		return // unjournaled (benchmark baseline): no journal series
	}
	for _, l := range j.Lag() {
		own := boolLabel(l.Own)
		gauge(n.lagEntries, float64(l.Entries), l.ID, own)
		gauge(n.lagBytes, float64(l.Bytes), l.ID, own)
	}
	minSet, activeSet := j.Sets()
	sets := uint64(0)
	if activeSet >= minSet {
		sets = activeSet - minSet + 1
	}
	gauge(n.objectSets, float64(sets))
	js := j.Stats()
	counter(n.journalEntries, float64(js.Entries))
	counter(n.journalWaves, float64(js.Waves))
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func boolLabel(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

// observer is a volume's blockdev.Observer: its histograms, curried with
// its volume id.
type observer struct {
	ack                  [blockdev.NumOps]prometheus.Observer
	flush, append, apply prometheus.Observer
}

func (o *observer) ObserveRequest(op blockdev.Op, d time.Duration) {
	if op == blockdev.OpFlush {
		o.flush.Observe(d.Seconds())
		return
	}
	if op >= 0 && op < blockdev.NumOps && o.ack[op] != nil {
		o.ack[op].Observe(d.Seconds())
	}
}

func (o *observer) ObserveJournalAppend(d time.Duration) { o.append.Observe(d.Seconds()) }
func (o *observer) ObserveApply(d time.Duration)         { o.apply.Observe(d.Seconds()) }
