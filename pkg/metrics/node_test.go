package metrics

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local/localtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/testwait"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

const (
	testVolume = "rbdj1/local/default/rbd/csi-vol-0123"
	testPeer   = "peer-mirror-uuid"
)

// localPool is a pool of a new local cluster.
func localPool(t *testing.T) objstore.Pool {
	t.Helper()
	_, pool := localtest.Open(t, t.TempDir(), local.Options{NoSync: true})
	return pool
}

// openTestDevice creates a journaled image on a new local cluster, registers
// a second journal client (a mirror peer that never commits) and opens the
// image as a device.
func openTestDevice(t *testing.T, o blockdev.Options) (*blockdev.Device, objstore.Pool) {
	t.Helper()
	pool := localPool(t)
	return openDeviceOn(t, pool, "vol", o), pool
}

// openDeviceOn is openTestDevice on pool, with image name.
func openDeviceOn(t *testing.T, pool objstore.Pool, name string, o blockdev.Options) *blockdev.Device {
	t.Helper()
	ctx := context.Background()
	if err := image.Create(ctx, pool, name, 16<<20, image.CreateOptions{Order: 20}); err != nil {
		t.Fatal(err)
	}
	// Runs after the device is closed (cleanups run last first): a
	// shared (Ceph) pool keeps nothing of the test.
	t.Cleanup(func() {
		if err := image.Remove(context.Background(), pool, name); err != nil {
			t.Logf("remove image %s: %v", name, err) // e.g. a fenced client
		}
	})
	img, err := image.Open(ctx, pool, name)
	if err != nil {
		t.Fatal(err)
	}
	peer, err := journal.Open(ctx, pool, img.ID(), testPeer, journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := peer.RegisterClient(ctx, []byte("peer")); err != nil {
		t.Fatal(err)
	}
	if err := peer.Close(ctx); err != nil {
		t.Fatal(err)
	}
	o.Journal.CommitAge = 20 * time.Millisecond
	dev, err := blockdev.Open(ctx, pool, name, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close(context.Background()) })
	return dev
}

// gather returns the collector's metrics of one name, by their label pairs
// ("k=v,k=v", sorted as the registry sorts them).
func gather(t *testing.T, c prometheus.Collector, name string) map[string]*dto.Metric {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.Metric{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			var kv []string
			for _, l := range m.Label {
				kv = append(kv, l.GetName()+"="+l.GetValue())
			}
			out[strings.Join(kv, ",")] = m
		}
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m == nil:
		return -1
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return -1
}

func sampleCount(m *dto.Metric) uint64 {
	if m == nil || m.Histogram == nil {
		return 0
	}
	return m.Histogram.GetSampleCount()
}

// TestNodeCollector writes through a real device on the local backend and
// checks that the volume's counters and histograms move, that the journal
// lag of our own client returns to 0 once everything is applied and
// committed while the peer's keeps every entry, and that unserving the
// volume removes its series.
func TestNodeCollector(t *testing.T) {
	testNodeCollector(t, localPool)
}

// ackPolicies are the ack policies the collector tests run with.
var ackPolicies = []struct {
	name   string
	policy blockdev.AckPolicy
}{
	{"journaled", blockdev.AckJournaled},
	{"applied", blockdev.AckApplied},
}

// testNodeCollector is TestNodeCollector on the pools newPool returns (one
// per ack policy).
func testNodeCollector(t *testing.T, newPool func(*testing.T) objstore.Pool) {
	for i, tc := range ackPolicies {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			// A long linger keeps journaled writes pending long enough to
			// see them as lag (journaled policy).
			name := fmt.Sprintf("metrics-%d-%d", time.Now().UnixNano(), i)
			dev := openDeviceOn(t, newPool(t), name, blockdev.Options{AckPolicy: tc.policy, ApplyLinger: 2 * time.Second})
			n := NewNode()
			n.Served(testVolume, dev)
			if problems, err := testutil.CollectAndLint(n); err != nil || len(problems) > 0 {
				t.Fatalf("lint: %v %v", problems, err)
			}

			const writes, size = 3, 4096
			buf := make([]byte, size)
			for i := range writes {
				buf[0] = byte(i + 1)
				if _, err := dev.WriteAt(ctx, buf, int64(i)*size); err != nil {
					t.Fatal(err)
				}
			}
			if tc.policy == blockdev.AckJournaled {
				lag := gather(t, n, "csi_rbdj_volume_journal_lag_entries")["client=,own=true,volume_id="+testVolume]
				if v := value(lag); v < writes {
					t.Errorf("own lag right after %d lingering writes = %v, want >= %d", writes, v, writes)
				}
				if v := value(gather(t, n, "csi_rbdj_volume_pending_bytes")["volume_id="+testVolume]); v < writes*size {
					t.Errorf("pending bytes = %v, want >= %d", v, writes*size)
				}
			}
			if _, err := dev.ReadAt(ctx, buf, 0); err != nil {
				t.Fatal(err)
			}
			if err := dev.Discard(ctx, 1<<20, 1<<20); err != nil {
				t.Fatal(err)
			}
			if err := dev.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := dev.ReadAt(ctx, buf, 16<<20); err == nil {
				t.Fatal("read past the end succeeded")
			}

			vol := "volume_id=" + testVolume
			for _, c := range []struct {
				metric, labels string
				want           float64
			}{
				{"csi_rbdj_volume_requests_total", "op=write," + vol, writes},
				{"csi_rbdj_volume_request_bytes_total", "op=write," + vol, writes * size},
				{"csi_rbdj_volume_requests_total", "op=read," + vol, 2},
				{"csi_rbdj_volume_request_errors_total", "op=read," + vol, 1},
				{"csi_rbdj_volume_request_bytes_total", "op=read," + vol, size},
				{"csi_rbdj_volume_requests_total", "op=discard," + vol, 1},
				{"csi_rbdj_volume_request_bytes_total", "op=discard," + vol, 1 << 20},
				{"csi_rbdj_volume_requests_total", "op=flush," + vol, 1},
				{"csi_rbdj_volume_requests_total", "op=write_zeroes," + vol, 0},
				{"csi_rbdj_volume_state", "state=serving," + vol, 1},
				{"csi_rbdj_volume_state", "state=failed," + vol, 0},
				{"csi_rbdj_volume_lock_state", "state=held," + vol, 1},
				{"csi_rbdj_volume_lock_takeovers_total", vol, 0},
				{"csi_rbdj_volume_replay_entries", vol, 0},
				{"csi_rbdj_volume_journal_object_sets", vol, 1},
				{"csi_rbdj_volume_pending_bytes_limit", vol, 64 << 20},
				{"csi_rbdj_node_volumes_served", "", 1},
			} {
				if got := value(gather(t, n, c.metric)[c.labels]); got != c.want {
					t.Errorf("%s{%s} = %v, want %v", c.metric, c.labels, got, c.want)
				}
			}
			// journal entries: 3 writes, a discard and a flush event.
			if got := value(gather(t, n, "csi_rbdj_volume_journal_entries_total")[vol]); got != writes+2 {
				t.Errorf("journal entries = %v, want %d", got, writes+2)
			}
			ack := gather(t, n, "csi_rbdj_volume_ack_duration_seconds")
			if got := sampleCount(ack["op=write,"+vol]); got != writes {
				t.Errorf("write ack samples = %d, want %d", got, writes)
			}
			if got := sampleCount(ack["op=read,"+vol]); got != 1 {
				t.Errorf("read ack samples = %d, want 1 (failed requests are not observed)", got)
			}
			if got := sampleCount(gather(t, n, "csi_rbdj_volume_flush_duration_seconds")[vol]); got != 1 {
				t.Errorf("flush samples = %d, want 1", got)
			}
			if got := sampleCount(gather(t, n, "csi_rbdj_volume_journal_append_duration_seconds")[vol]); got != writes+1 {
				t.Errorf("journal append samples = %d, want %d (writes and the discard)", got, writes+1)
			}

			// Everything applied and committed: our lag returns to 0, the
			// peer (which commits nothing) is behind by every entry.
			testwait.For(t, 15*time.Second, "own lag 0 and every change applied", func() bool {
				m := gather(t, n, "csi_rbdj_volume_journal_lag_entries")
				b := gather(t, n, "csi_rbdj_volume_journal_lag_bytes")
				own := "client=,own=true," + vol
				return value(m[own]) == 0 && value(b[own]) == 0 &&
					sampleCount(gather(t, n, "csi_rbdj_volume_apply_duration_seconds")[vol]) == writes+1 &&
					value(gather(t, n, "csi_rbdj_volume_pending_bytes")[vol]) == 0
			})
			peer := "client=" + testPeer + ",own=false," + vol
			if got := value(gather(t, n, "csi_rbdj_volume_journal_lag_entries")[peer]); got != writes+2 {
				t.Errorf("peer lag entries = %v, want %d", got, writes+2)
			}
			if got := value(gather(t, n, "csi_rbdj_volume_journal_lag_bytes")[peer]); got < writes*size {
				t.Errorf("peer lag bytes = %v, want >= %d", got, writes*size)
			}

			n.Unserved(testVolume)
			if _, err := dev.WriteAt(ctx, buf, 0); err != nil {
				t.Fatal(err)
			}
			// Only volumes_served (0) is left: no series of the volume.
			if got := testutil.CollectAndCount(n); got != 1 {
				t.Errorf("%d series after Unserved, want 1 (volumes_served)", got)
			}
			if got := value(gather(t, n, "csi_rbdj_node_volumes_served")[""]); got != 0 {
				t.Errorf("volumes served = %v, want 0", got)
			}
		})
	}
}

// TestNodeCollectorClosedDevice: a closed device reports state closed and
// its lock released.
func TestNodeCollectorClosedDevice(t *testing.T) {
	dev, _ := openTestDevice(t, blockdev.Options{})
	n := NewNode()
	n.Served(testVolume, dev)
	if err := dev.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	vol := "volume_id=" + testVolume
	if got := value(gather(t, n, "csi_rbdj_volume_state")["state=closed,"+vol]); got != 1 {
		t.Errorf("state closed = %v, want 1", got)
	}
	if got := value(gather(t, n, "csi_rbdj_volume_lock_state")["state=released,"+vol]); got != 1 {
		t.Errorf("lock state released = %v, want 1", got)
	}
}

// TestNodeCollectorBackpressure: a write that finds the pending bytes at
// their bound waits for an apply, and the wait is counted.
func TestNodeCollectorBackpressure(t *testing.T) {
	const linger = 200 * time.Millisecond
	dev, _ := openTestDevice(t, blockdev.Options{AckPolicy: blockdev.AckJournaled, MaxPendingBytes: 4096, ApplyLinger: linger})
	n := NewNode()
	n.Served(testVolume, dev)
	buf := make([]byte, 4096)
	for i := range 2 {
		if _, err := dev.WriteAt(context.Background(), buf, int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	vol := "volume_id=" + testVolume
	if got := value(gather(t, n, "csi_rbdj_volume_backpressure_waits_total")[vol]); got != 1 {
		t.Errorf("backpressure waits = %v, want 1 (the second write waits for the first's apply)", got)
	}
	if got := value(gather(t, n, "csi_rbdj_volume_backpressure_wait_seconds_total")[vol]); got < (linger / 2).Seconds() {
		t.Errorf("backpressure wait = %vs, want about the %v apply linger", got, linger)
	}
	if got := value(gather(t, n, "csi_rbdj_volume_pending_bytes_limit")[vol]); got != 4096 {
		t.Errorf("pending bytes limit = %v, want 4096", got)
	}
}

// TestNodeCollectorFenced: a device whose client was fenced (blocklisted,
// as a takeover by another node does) reports state failed and its lock
// lost.
func TestNodeCollectorFenced(t *testing.T) {
	dir := t.TempDir()
	_, pool := localtest.Open(t, dir, local.Options{NoSync: true})
	dev := openDeviceOn(t, pool, "vol", blockdev.Options{})
	n := NewNode()
	n.Served(testVolume, dev)
	vol := "volume_id=" + testVolume
	if got := value(gather(t, n, "csi_rbdj_volume_state")["state=serving,"+vol]); got != 1 {
		t.Fatalf("state serving = %v before the fencing", got)
	}
	other, _ := localtest.Open(t, dir, local.Options{NoSync: true})
	if err := other.Blocklist(context.Background(), pool.Client().Addr, time.Hour); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, 15*time.Second, "state failed and lock lost", func() bool {
		return value(gather(t, n, "csi_rbdj_volume_state")["state=failed,"+vol]) == 1 &&
			value(gather(t, n, "csi_rbdj_volume_state")["state=serving,"+vol]) == 0 &&
			value(gather(t, n, "csi_rbdj_volume_lock_state")["state=lost,"+vol]) == 1
	})
}

// TestNodeCollectorTakeover: a second node takes a volume over from one
// whose writes were journaled but not applied: it fences the first, breaks
// its lock and replays the writes; its metrics say so.
func TestNodeCollectorTakeover(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	_, pool1 := localtest.Open(t, dir, local.Options{NoSync: true})
	// The apply lingers: the writes stay in the journal only.
	dev1 := openDeviceOn(t, pool1, "vol", blockdev.Options{AckPolicy: blockdev.AckJournaled, ApplyLinger: time.Second})
	const writes = 4
	buf := make([]byte, 4096)
	for i := range writes {
		if _, err := dev1.WriteAt(ctx, buf, int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	c2, pool2 := localtest.Open(t, dir, local.Options{NoSync: true})
	dev2, err := blockdev.Open(ctx, pool2, "vol", blockdev.Options{Fencer: c2, DeadOwners: []string{pool1.Client().Addr},
		Journal: journal.Settings{CommitAge: 20 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev2.Close(context.Background()) })
	n := NewNode()
	n.Served(testVolume, dev2)
	vol := "volume_id=" + testVolume
	for _, c := range []struct {
		metric, labels string
		want           float64
	}{
		{"csi_rbdj_volume_lock_takeovers_total", vol, 1},
		{"csi_rbdj_volume_lock_fencings_total", vol, 1},
		{"csi_rbdj_volume_replay_entries", vol, writes},
		{"csi_rbdj_volume_state", "state=serving," + vol, 1},
	} {
		if got := value(gather(t, n, c.metric)[c.labels]); got != c.want {
			t.Errorf("%s{%s} = %v, want %v", c.metric, c.labels, got, c.want)
		}
	}
	if got := value(gather(t, n, "csi_rbdj_volume_replay_bytes")[vol]); got < writes*4096 {
		t.Errorf("replay bytes = %v, want >= %d", got, writes*4096)
	}
	if got := value(gather(t, n, "csi_rbdj_volume_replay_duration_seconds")[vol]); got <= 0 {
		t.Errorf("replay duration = %v, want > 0", got)
	}
	// The fenced first node's device fails.
	n1 := NewNode()
	n1.Served("first", dev1)
	testwait.For(t, 15*time.Second, "the fenced device to fail", func() bool {
		return value(gather(t, n1, "csi_rbdj_volume_state")["state=failed,volume_id=first"]) == 1
	})
}

// TestNodeCollectorHandover: a volume adopted after a restart reports this
// process's part of the pause and the resent requests; one that was not
// adopted, or is unserved, has no such series.
func TestNodeCollectorHandover(t *testing.T) {
	dev, _ := openTestDevice(t, blockdev.Options{})
	n := NewNode()
	n.Served(testVolume, dev)
	vol := "volume_id=" + testVolume
	if got := gather(t, n, "csi_rbdj_volume_handover_seconds"); len(got) != 0 {
		t.Errorf("handover series before any adoption: %v", got)
	}
	n.Adopted("not-served", time.Second, 1) // ignored: not served here
	n.Adopted(testVolume, 250*time.Millisecond, 3)
	if got := value(gather(t, n, "csi_rbdj_volume_handover_seconds")[vol]); got != 0.25 {
		t.Errorf("handover seconds = %v, want 0.25", got)
	}
	if got := value(gather(t, n, "csi_rbdj_volume_handover_resent_requests")[vol]); got != 3 {
		t.Errorf("resent requests = %v, want 3", got)
	}
	if got := gather(t, n, "csi_rbdj_volume_handover_seconds"); len(got) != 1 {
		t.Errorf("handover series %v, want only %s", got, testVolume)
	}
	n.Unserved(testVolume)
	if got := gather(t, n, "csi_rbdj_volume_handover_seconds"); len(got) != 0 {
		t.Errorf("handover series after Unserved: %v", got)
	}
}

// heldPool holds back the journal's data appends until release is closed.
type heldPool struct {
	objstore.Pool
	release chan struct{}
}

func (p *heldPool) Operate(ctx context.Context, oid string, op *objstore.WriteOp) error {
	if strings.HasPrefix(oid, "journal_data.") {
		select {
		case <-p.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return p.Pool.Operate(ctx, oid, op)
}

// TestNodeCollectorWriteBack: a write-back volume reports its dirty bytes
// (acknowledged, not yet durable) and their bound; the node-wide series
// report the shared budget; both drop to 0 once a flush made them durable.
func TestNodeCollectorWriteBack(t *testing.T) {
	hp := &heldPool{Pool: localPool(t), release: make(chan struct{})}
	budget := blockdev.NewNodeBudget(8<<20, 1<<20)
	dev := openDeviceOn(t, hp, "vol", blockdev.Options{AckPolicy: blockdev.AckWriteBack, MaxDirtyBytes: 512 << 10, Node: budget})
	released := false
	release := func() {
		if !released {
			released = true
			close(hp.release)
		}
	}
	t.Cleanup(release) // before the device closes
	n := NewNode()
	n.NodeBudget(budget)
	n.Served(testVolume, dev)
	vol := "volume_id=" + testVolume
	if _, err := dev.WriteAt(context.Background(), make([]byte, 8192), 0); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, labels string
		want         float64
	}{
		{"csi_rbdj_volume_dirty_bytes", vol, 8192},
		{"csi_rbdj_volume_dirty_bytes_limit", vol, 512 << 10},
		{"csi_rbdj_node_dirty_bytes", "", 8192},
		{"csi_rbdj_node_dirty_bytes_limit", "", 1 << 20},
		{"csi_rbdj_node_pending_bytes", "", 8192},
		{"csi_rbdj_node_pending_bytes_limit", "", 8 << 20},
	} {
		if got := value(gather(t, n, tc.name)[tc.labels]); got != tc.want {
			t.Errorf("%s{%s} = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	release()
	if err := dev.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The flush's entry is durable after the write's, but the goroutine
	// applying the write releases its dirty bytes on its own schedule:
	// the gauges reach 0 shortly after the flush, not with it.
	testwait.For(t, 10*time.Second, "dirty bytes (volume and node) 0 after a flush", func() bool {
		return value(gather(t, n, "csi_rbdj_volume_dirty_bytes")[vol]) == 0 &&
			value(gather(t, n, "csi_rbdj_node_dirty_bytes")[""]) == 0
	})
}
