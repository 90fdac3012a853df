package journal

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Future is the outcome of one Append. It completes when its entry is
// durable ("safe") and every earlier entry has completed ("consistent"), so
// futures complete strictly in append order; if any append fails, it and
// every later future complete with the error.
type Future struct {
	TagTid    uint64
	EntryTid  uint64
	CommitTid uint64

	safe bool // guarded by Journaler.mu
	done chan struct{}
	err  error
}

// Done is closed when the future completes.
func (f *Future) Done() <-chan struct{} { return f.done }

// Err returns the outcome; valid once Done is closed.
func (f *Future) Err() error { return f.err }

// Wait blocks until the future completes or ctx ends.
func (f *Future) Wait(ctx context.Context) error {
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

type appendReq struct {
	fut    *Future
	data   []byte // the encoded entry
	commit *commitEntry
}

// splayRecorder batches the appends bound for one splay offset.
type splayRecorder struct {
	offset uint64
	// object is the data object appended to last and objectBytes what this
	// journaler appended to it: Ceph's ObjectRecorder closes an object once
	// it reaches the soft limit rather than relying on guard_append alone.
	object      uint64
	objectBytes int
	// sized: objectBytes is the object's true size, not only what this
	// journaler appended (see Journaler.sizeActiveSet). Appends to a sized
	// object need no guard_append: the batch is capped at the room left,
	// and no other client appends (an owner's lock is broken only after it
	// is fenced). An object of unknown size gets guarded appends.
	sized bool
	// inflight counts this object's appends in flight; guardOff and
	// guardHead are where the last entry sent to it starts and that
	// entry's header, which an append sent while it is in flight
	// compares (see maybeSendLocked).
	inflight     int
	guardOff     int
	guardHead    []byte
	pending      []*appendReq
	pendingBytes int
	firstPending time.Time
	timer        *time.Timer
}

// recorder is the append side (JournalRecorder). Guarded by Journaler.mu.
type recorder struct {
	splays     []*splayRecorder
	futures    []*Future // appended, not yet completed, in order
	flushUntil uint64    // send immediately every entry with commit tid <= this
	advancing  bool      // an object-set advance is draining in-flight appends
	waves      int       // waves in flight (at most Settings.MaxInflightWaves)
	lastFuture *Future
	// barriers are the commit tids of the first entry of each new tag: an
	// entry at or past a barrier is not sent until every entry before the
	// barrier is durable, so an epoch never lands ahead of its predecessor's
	// tail and replay stays a prefix of what was appended.
	barriers []uint64
	// emptySet is an object set known to hold nothing but this
	// journaler's appends (one it advanced to); noSet if none.
	emptySet uint64
}

// noSet is no object set.
const noSet = ^uint64(0)

// blocked reports whether sending the entry with commit tid must wait
// for an earlier epoch's entries.
func (r *recorder) blocked(tid uint64) bool {
	return len(r.barriers) > 0 && tid >= r.barriers[0]
}

// passBarriers drops the barriers every earlier entry of which is durable.
func (r *recorder) passBarriers() bool {
	passed := false
	for len(r.barriers) > 0 && (len(r.futures) == 0 || r.futures[0].CommitTid >= r.barriers[0]) {
		r.barriers = r.barriers[1:]
		passed = true
	}
	return passed
}

func (r *recorder) init(width int) {
	r.emptySet = noSet
	r.splays = make([]*splayRecorder, width)
	for i := range r.splays {
		r.splays[i] = &splayRecorder{offset: uint64(i), object: noSet}
	}
}

func (r *recorder) stopTimers() {
	for _, s := range r.splays {
		if s.timer != nil {
			s.timer.Stop()
			s.timer = nil
		}
	}
}

func (r *recorder) anyInflight() bool { return r.waves > 0 }

func (r *recorder) kickAllLocked(j *Journaler) { j.maybeSendLocked(nil) }

// Append journals payload under tagTid. The entry tid is the next of the
// tag's sequence. The returned future reports when the entry is durable.
func (j *Journaler) Append(tagTid uint64, payload []byte) *Future {
	return j.AppendBatch(tagTid, [][]byte{payload})[0]
}

// AppendBatch journals several payloads as consecutive entries of tagTid,
// sent together (the events of one request become durable with one sync).
func (j *Journaler) AppendBatch(tagTid uint64, payloads [][]byte) []*Future {
	return j.appendBatch(tagTid, payloads, false)
}

// NewFrame returns a buffer for one entry whose payload is n bytes: it holds
// the room for the entry's header and has the capacity for the payload and
// the checksum behind it. Append the payload to it and pass it to
// AppendFrames.
func NewFrame(n int) []byte { return make([]byte, entryHeaderSize, EntryOverhead+n) }

// FramePayload returns the payload of a frame made by NewFrame.
func FramePayload(frame []byte) []byte { return frame[entryHeaderSize:] }

// AppendFrames is AppendBatch for payloads built in NewFrame buffers: the
// journaler writes each entry's header and checksum into its frame instead
// of copying the payload into an encoded entry, so a write's data is held
// once. The frames must not be modified afterwards (their payloads may be
// read).
func (j *Journaler) AppendFrames(tagTid uint64, frames [][]byte) []*Future {
	return j.appendBatch(tagTid, frames, true)
}

func (j *Journaler) appendBatch(tagTid uint64, payloads [][]byte, framed bool) []*Future {
	fs := make([]*Future, len(payloads))
	failed := func(err error) []*Future {
		for i := range fs {
			fs[i] = &Future{TagTid: tagTid, done: make(chan struct{}), err: err}
			close(fs[i].done)
		}
		return fs
	}
	for _, p := range payloads {
		if framed {
			if len(p) < entryHeaderSize {
				return failed(fmt.Errorf("journal %s: %d-byte frame: no room for the entry header", j.id, len(p)))
			}
			p = p[entryHeaderSize:]
		}
		if len(p) > j.MaxAppendSize() {
			return failed(fmt.Errorf("journal %s: %d-byte payload: %w (max %d)", j.id, len(p), ErrTooLarge, j.MaxAppendSize()))
		}
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.appendableLocked(); err != nil {
		return failed(err)
	}
	for i, p := range payloads {
		fs[i] = j.appendLocked(tagTid, p, framed)
	}
	j.maybeSendLocked(nil)
	return fs
}

// appendLocked queues one entry: payload, or with framed a NewFrame
// buffer holding it.
func (j *Journaler) appendLocked(tagTid uint64, payload []byte, framed bool) *Future {
	frame := payload
	if framed {
		payload = payload[entryHeaderSize:]
	}
	var entryTid uint64
	if last, ok := j.lastEntryTid[tagTid]; ok {
		entryTid = last + 1
	}
	j.lastEntryTid[tagTid] = entryTid
	j.lag.add(tagTid, entryTid, len(payload))
	w := uint64(j.splayWidth)
	splay := entryTid % w
	c := j.commits.allocate(j.activeSet*w+splay, tagTid, entryTid)
	f := &Future{TagTid: tagTid, EntryTid: entryTid, CommitTid: c.tid, done: make(chan struct{})}
	if last := j.rec.lastFuture; last != nil && last.TagTid != tagTid {
		j.rec.barriers = append(j.rec.barriers, c.tid)
		j.rec.passBarriers()
	}
	e := Entry{TagTid: tagTid, EntryTid: entryTid, Data: payload}
	var data []byte
	if framed {
		data = e.encodeFramed(frame)
	} else {
		data = e.AppendEncoded(make([]byte, 0, e.EncodedLen()))
	}
	req := &appendReq{fut: f, data: data, commit: c}
	j.rec.futures = append(j.rec.futures, f)
	j.rec.lastFuture = f
	s := j.rec.splays[splay]
	if len(s.pending) == 0 {
		s.firstPending = time.Now()
	}
	s.pending = append(s.pending, req)
	s.pendingBytes += len(req.data)
	return f
}

func (j *Journaler) appendableLocked() error {
	switch {
	case j.failed != nil:
		return j.failed
	case j.closing:
		return ErrClosed
	}
	if _, ok := j.clients[j.clientID]; !ok {
		return fmt.Errorf("journal %s client %q: %w", j.id, j.clientID, ErrClientNotRegistered)
	}
	return nil
}

// Flush sends every pending append now and waits until all appends made
// before the call are durable (or failed).
func (j *Journaler) Flush(ctx context.Context) error {
	j.mu.Lock()
	last := j.rec.lastFuture
	if last != nil {
		j.rec.flushUntil = last.CommitTid
		j.rec.kickAllLocked(j)
	}
	j.mu.Unlock()
	if last == nil {
		return nil
	}
	return last.Wait(ctx)
}

// Kick sends every append queued so far as soon as it may be sent (a
// wave in flight still goes first), without waiting for FlushAge and
// without waiting for the appends: a writer that waits for one entry
// while most entries are batched for FlushAge (pkg/blockdev's metadata
// mode: its intents) kicks it.
func (j *Journaler) Kick() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if last := j.rec.lastFuture; last != nil {
		j.rec.flushUntil = max(j.rec.flushUntil, last.CommitTid)
		j.rec.kickAllLocked(j)
	}
}

// maybeSendLocked starts a wave of appends: every splay object with a due
// batch gets one append, all submitted together so that a backend with
// group commit makes them durable with one sync. Everything appended while
// a wave is in flight goes in the next one (group commit without added
// latency).
//
// Pipelining. With one wave in flight a writer waits for about two: the one
// in flight, then its own. So a second wave may be sent while the first is
// in flight (Settings.MaxInflightWaves, default 2), on two conditions that
// together keep every data object a prefix of the appends sent to it, in
// order, so that no later entry can land after a hole:
//
//  1. Ordered submission. Waves are submitted under j.mu through an
//     objstore.Submitter, which applies successive submissions on one
//     object in submission order (librados keeps one client's operations on
//     an object in order; the local store commits its queue in order).
//     Without a Submitter only one wave is in flight.
//  2. An expected-bytes guard. An append sent while an earlier one to the
//     same object is in flight carries a cmpext of the earlier append's
//     last entry header at the offset where it must be. Ordering alone is
//     not enough: an earlier append can fail (a timeout, a cancelled queue
//     entry, an OSD error) while the later one would succeed, leaving a
//     hole. By induction over the appends to one object: if its contents
//     are a prefix of what was sent, a guarded append applies only if the
//     earlier append's last entry header is where it was sent — entry
//     headers are unique (tag tid, entry tid) and begin with the non-zero
//     preamble, so neither other bytes nor the zeroes past the end match —
//     and the earlier append applied atomically, so the object ends exactly
//     there; appending keeps the prefix. An append sent with nothing in
//     flight on its object follows appends that all succeeded. If an append
//     fails, every later guarded one fails too, and the journaler fails:
//     no later future completes (completeFuturesLocked, failLocked).
//
// Only objects of known size (splayRecorder.sized) get pipelined appends:
// the guard needs the offset, and they never overflow (batches are capped
// at the room left). Appends to an object of unknown size carry
// guard_append and go one at a time, as Ceph's ObjectRecorder's do; its
// overflow handling (re-send to the next set) needs nothing in flight
// behind them. Ceph's recorder keeps several guard_append appends in flight
// per object and relies on librados' ordering alone; the cmpext makes the
// no-hole property independent of how an earlier append failed. Both
// leave the objects' bytes as Ceph's recorder would: the guards are
// conditions, not data.
func (j *Journaler) maybeSendLocked(_ *splayRecorder) {
	if j.rec.advancing || j.failed != nil || j.rec.waves >= j.s.MaxInflightWaves {
		return
	}
	sub, ordered := j.dataPool.(objstore.Submitter)
	pipelined := j.rec.waves > 0
	if pipelined && (!ordered || !j.pipelineWorthItLocked()) {
		return
	}
	var wave []waveOp
	for _, s := range j.rec.splays {
		if pipelined && !s.sized {
			continue
		}
		if op, ok := j.takeBatchLocked(s); ok {
			wave = append(wave, op)
		}
		if j.rec.advancing {
			break // an object is full: the wave waits for the next set
		}
	}
	if len(wave) == 0 {
		return
	}
	if pipelined {
		j.stats.pipelined.Add(1)
	}
	j.rec.waves++
	ops := make([]objstore.BatchOp, len(wave))
	for i, w := range wave {
		op := &objstore.WriteOp{}
		if w.guard {
			clsjournal.GuardAppend(op, 1<<j.order)
		}
		if w.cmpHead != nil {
			op.CmpExt(uint64(w.cmpOff), w.cmpHead)
		}
		op.Appendv(w.encodings())
		ops[i] = objstore.BatchOp{OID: j.DataOID(w.objNum), Op: op}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(j.bg), j.s.OpTimeout) // an append runs to the end even after Close cancels bg
	start := time.Now()
	var wait func() []error
	if ordered {
		wait = sub.Submit(ctx, ops)
	} else {
		wait = func() []error { return operateAll(ctx, j.dataPool, ops) }
	}
	j.wg.Add(1)
	go j.finishWave(wave, ops, wait, start, cancel)
}

// pipelineWorthItLocked reports whether enough waits for a pipelined wave
// (Settings.PipelineBytes). Each append costs the OSD an operation whatever
// its size; splitting small writes over two waves doubles the operations
// for the same bytes, which a CPU-bound OSD pays for in throughput
// (BenchmarkCephPipelined: 4 KiB appends, window 16), while large ones gain
// from overlapping (64 KiB, window 4).
func (j *Journaler) pipelineWorthItLocked() bool {
	n := 0
	for _, s := range j.rec.splays {
		if s.sized {
			n += s.pendingBytes
		}
	}
	return n >= j.s.PipelineBytes
}

// waveOp is one splay object's append in a wave.
type waveOp struct {
	s      *splayRecorder
	objNum uint64
	batch  []*appendReq
	size   int  // the total of the batch's encodings
	guard  bool // guard_append: the object's size is not known
	// cmpHead, if set, must be found at cmpOff (cmpext): the header of the
	// last entry of the append in flight before this one.
	cmpOff  int
	cmpHead []byte
}

// encodings returns the batch's encodings in order, the pieces of its one
// append step (Appendv): the store gathers them as it encodes the
// operation, so they are neither joined into a buffer of ours (copied and
// zeroed) nor each a step (a sub-operation on the OSD).
func (w waveOp) encodings() [][]byte {
	bufs := make([][]byte, len(w.batch))
	for i, req := range w.batch {
		bufs[i] = req.data
	}
	return bufs
}

// takeBatchLocked takes s's due batch, if any.
func (j *Journaler) takeBatchLocked(s *splayRecorder) (waveOp, bool) {
	if len(s.pending) == 0 || j.rec.blocked(s.pending[0].commit.tid) {
		return waveOp{}, false
	}
	due := j.s.FlushAge == 0 || s.pendingBytes >= j.s.FlushBytes ||
		s.pending[0].commit.tid <= j.rec.flushUntil || time.Since(s.firstPending) >= j.s.FlushAge
	if !due {
		if s.timer == nil && !j.closing {
			s.timer = time.AfterFunc(j.s.FlushAge-time.Since(s.firstPending), func() {
				j.mu.Lock()
				defer j.mu.Unlock()
				s.timer = nil
				if !j.closing {
					j.maybeSendLocked(s)
				}
			})
		}
		return waveOp{}, false
	}
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	w := uint64(j.splayWidth)
	objNum := j.activeSet*w + s.offset
	if objNum != s.object {
		// Sets this journaler advanced to start empty: Ceph's recorder
		// also appends to a set only once the header names it.
		s.object, s.objectBytes, s.sized = objNum, 0, j.activeSet == j.rec.emptySet
		s.inflight, s.guardHead = 0, nil
	}
	limit := 1 << j.order
	if s.objectBytes >= limit {
		j.startAdvanceLocked()
		return waveOp{}, false
	}
	maxBatch := min(j.s.MaxBatchBytes, limit-s.objectBytes)
	n, size := 0, 0
	for n < len(s.pending) && (n == 0 || (size+len(s.pending[n].data) <= maxBatch && !j.rec.blocked(s.pending[n].commit.tid))) {
		size += len(s.pending[n].data)
		n++
	}
	batch := s.pending[:n:n]
	s.pending = s.pending[n:]
	s.pendingBytes -= size
	if len(s.pending) > 0 {
		s.firstPending = time.Now()
	}
	for _, req := range batch {
		req.commit.objectNumber = objNum
	}
	op := waveOp{s: s, objNum: objNum, batch: batch, size: size, guard: !s.sized}
	if s.inflight > 0 {
		op.cmpOff, op.cmpHead = s.guardOff, s.guardHead
	}
	last := batch[n-1].data
	s.guardOff = s.objectBytes + size - len(last)
	s.guardHead = last[:entryHeaderSize-4] // preamble, version, entry tid, tag tid
	s.objectBytes += size                  // counted when sent: the next batch's room and offsets
	s.inflight++
	return op, true
}

// finishWave waits for a wave's appends and records their outcome. An
// append to an object of unknown size is guarded so that a full object
// refuses it (-EOVERFLOW) instead of growing without bound; the guard is a
// class call, which costs the OSD about twice a plain append.
func (j *Journaler) finishWave(wave []waveOp, ops []objstore.BatchOp, wait func() []error, start time.Time, cancel context.CancelFunc) {
	defer j.wg.Done()
	errs := wait()
	j.stats.record(wave, time.Since(start))
	cancel()

	j.mu.Lock()
	defer j.mu.Unlock()
	j.rec.waves--
	for i, w := range wave {
		s, err := w.s, errs[i]
		if s.object == w.objNum {
			s.inflight--
		}
		switch {
		case err == nil:
			for _, req := range w.batch {
				req.fut.safe = true
			}
		case errors.Is(err, objstore.ErrOverflow):
			// Only guard_append (objects of unknown size, never
			// pipelined) overflows.
			if s.object == w.objNum {
				s.objectBytes = 1 << j.order
			}
			// The object is full: re-send this batch, ahead of what queued
			// behind it, to the next object set.
			s.pending = append(append([]*appendReq(nil), w.batch...), s.pending...)
			s.pendingBytes += w.size
			j.startAdvanceLocked()
		default:
			j.failLocked(fmt.Errorf("journal %s: append to %s: %w", j.id, ops[i].OID, err))
		}
	}
	j.completeFuturesLocked()
	j.cond.Broadcast()
	j.maybeSendLocked(nil)
}

// Stats count the journaler's appends since Open.
type Stats struct {
	// Waves are rounds of appends sent together; Appends the object-store
	// operations they made (one per splay object with entries), Guarded
	// those that carried guard_append; Entries the entries they carried.
	Waves, Appends, Guarded, Entries uint64
	// Pipelined counts the waves sent while another was in flight.
	Pipelined uint64
	// WaveTime is the summed duration of the waves.
	WaveTime time.Duration
}

type stats struct {
	waves, appends, guarded, entries, nanos, pipelined atomic.Uint64
}

func (s *stats) record(wave []waveOp, d time.Duration) {
	s.waves.Add(1)
	s.appends.Add(uint64(len(wave)))
	for _, w := range wave {
		s.entries.Add(uint64(len(w.batch)))
		if w.guard {
			s.guarded.Add(1)
		}
	}
	s.nanos.Add(uint64(d))
}

// Stats returns the journaler's append counters.
func (j *Journaler) Stats() Stats {
	return Stats{
		Waves: j.stats.waves.Load(), Appends: j.stats.appends.Load(), Guarded: j.stats.guarded.Load(),
		Entries: j.stats.entries.Load(), WaveTime: time.Duration(j.stats.nanos.Load()),
		Pipelined: j.stats.pipelined.Load(),
	}
}

// operateAll applies ops, in one call where the pool takes batches.
func operateAll(ctx context.Context, pool objstore.Pool, ops []objstore.BatchOp) []error {
	if b, ok := pool.(objstore.Batcher); ok {
		return b.OperateBatch(ctx, ops)
	}
	errs := make([]error, len(ops))
	var wg sync.WaitGroup
	for i, o := range ops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = pool.Operate(ctx, o.OID, o.Op)
		}()
	}
	wg.Wait()
	return errs
}

// completeFuturesLocked completes, in order, every future whose entry and
// predecessors are safe.
func (j *Journaler) completeFuturesLocked() {
	i := 0
	for ; i < len(j.rec.futures) && j.rec.futures[i].safe; i++ {
		close(j.rec.futures[i].done)
	}
	j.rec.futures = j.rec.futures[i:]
	if len(j.rec.futures) == 0 {
		j.rec.futures = nil
	}
	if j.rec.passBarriers() {
		j.rec.kickAllLocked(j)
	}
}

// failLocked makes the journaler refuse further appends and completes every
// outstanding future with err: once an append is lost, no later entry may be
// reported durable (it would not be replayed past the hole).
func (j *Journaler) failLocked(err error) {
	if j.failed == nil {
		j.failed = err
		if !errors.Is(err, ErrClosed) {
			j.log.Error(err, "Journal failed; further appends are refused", "journal", j.id)
		}
	}
	j.completeFuturesLocked()
	for _, f := range j.rec.futures {
		f.err = j.failed
		close(f.done)
	}
	j.rec.futures = nil
	for _, s := range j.rec.splays {
		s.pending, s.pendingBytes = nil, 0
	}
}

// Err returns why the journaler refuses appends, or nil.
func (j *Journaler) Err() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.failed
}

// startAdvanceLocked moves appends to the next object set once every
// in-flight append has finished, as Ceph's JournalRecorder does, so that no
// splay offset skips a set (librbd's player walks the sets one by one).
func (j *Journaler) startAdvanceLocked() {
	if j.rec.advancing || j.failed != nil {
		return
	}
	j.rec.advancing = true
	j.wg.Add(1)
	go j.advanceSet()
}

func (j *Journaler) advanceSet() {
	defer j.wg.Done()
	j.mu.Lock()
	for j.rec.anyInflight() && j.bg.Err() == nil {
		j.cond.Wait()
	}
	next := j.activeSet + 1
	j.mu.Unlock()

	op := &objstore.WriteOp{}
	clsjournal.SetActiveSet(op, next)
	ctx, cancel := j.opCtx(j.bg)
	err := j.pool.Operate(ctx, j.headerOID, op)
	cancel()
	if errors.Is(err, objstore.ErrStale) {
		// Someone recorded a newer set already; adopt it.
		err = j.refresh(j.bg)
	}

	j.mu.Lock()
	j.rec.advancing = false
	if err != nil {
		j.failLocked(fmt.Errorf("journal %s: advance to object set %d: %w", j.id, next, err))
		j.mu.Unlock()
		return
	}
	if next > j.activeSet {
		j.activeSet = next
		j.rec.emptySet = next
	}
	j.log.V(4).Info("Journal advanced object set", "journal", j.id, "activeSet", j.activeSet)
	j.rec.kickAllLocked(j)
	j.mu.Unlock()
	j.notifyUpdate(j.bg)
}

// commitEntry tracks one entry from append (or replay) to commit.
type commitEntry struct {
	tid          uint64
	objectNumber uint64
	tagTid       uint64
	entryTid     uint64
	committed    bool
}

// commitTracker hands out commit tids in order and reports the entries the
// commit position may move past: those committed with every earlier one.
type commitTracker struct {
	next    uint64
	pending []*commitEntry // tids next-len(pending) .. next-1, oldest first
}

func (c *commitTracker) init() { c.next = 1 }

func (c *commitTracker) allocate(objectNumber, tagTid, entryTid uint64) *commitEntry {
	e := &commitEntry{tid: c.next, objectNumber: objectNumber, tagTid: tagTid, entryTid: entryTid}
	c.next++
	c.pending = append(c.pending, e)
	return e
}

// commit marks tid committed and returns the entries that became
// contiguous-committed, oldest first.
func (c *commitTracker) commit(tid uint64) []*commitEntry {
	if len(c.pending) == 0 {
		return nil
	}
	base := c.pending[0].tid
	if tid < base || tid >= base+uint64(len(c.pending)) {
		return nil // already committed, or never allocated
	}
	c.pending[tid-base].committed = true
	n := 0
	for n < len(c.pending) && c.pending[n].committed {
		n++
	}
	if n == 0 {
		return nil
	}
	done := c.pending[:n:n]
	c.pending = c.pending[n:]
	if len(c.pending) == 0 {
		c.pending = nil
	}
	return done
}
