package local

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

const (
	reqPending int32 = iota
	reqClaimed
	reqCancelled

	maxBatchOps   = 1024
	maxBatchBytes = 64 << 20
)

// request is one Operate call waiting for the committer.
type request struct {
	p     *pool
	oid   string
	op    *objstore.WriteOp
	size  int
	state atomic.Int32
	err   error
	done  chan struct{}
	// barrier marks a Sync request: no operation, only its completion
	// (op is nil).
	barrier bool
	// background: queued by SubmitBackground (not counted by gather).
	background bool
}

func opSize(op *objstore.WriteOp) int {
	n := 0
	for _, s := range op.Steps() {
		n += 64 + len(s.Data)
		for _, b := range s.Bufs {
			n += len(b)
		}
		for k, v := range s.Omap {
			n += len(k) + len(v)
		}
	}
	return n
}

// Operate applies op to oid atomically and durably.
func (p *pool) Operate(ctx context.Context, oid string, op *objstore.WriteOp) error {
	return p.OperateBatch(ctx, []objstore.BatchOp{{OID: oid, Op: op}})[0]
}

// OperateBatch queues every operation at once, so that one log sync can
// commit them all, and waits for each.
func (p *pool) OperateBatch(ctx context.Context, ops []objstore.BatchOp) []error {
	return p.Submit(ctx, ops)()
}

// Submit queues every operation at once (objstore.Submitter): the committer
// applies queued operations in queue order, so successive submissions apply
// in order on each object.
func (p *pool) Submit(ctx context.Context, ops []objstore.BatchOp) func() []error {
	return p.submit(ctx, ops, false)
}

// SubmitBackground is Submit for operations whose completion nobody
// answers at once with new operations (pkg/extentlog's lazy appends): the
// committer does not count them among the operations it expects to see
// queued again after their batch (gather), so a batch that held one does
// not make the next one wait for an operation that is not coming.
func (p *pool) SubmitBackground(ctx context.Context, ops []objstore.BatchOp) func() []error {
	return p.submit(ctx, ops, true)
}

func (p *pool) submit(ctx context.Context, ops []objstore.BatchOp, background bool) func() []error {
	c := p.c
	errs := make([]error, len(ops))
	if err := c.enter(); err != nil {
		for i, o := range ops {
			errs[i] = &objstore.OpError{Op: "operate", OID: o.OID, Err: err}
		}
		return func() []error { return errs }
	}
	reqs := make([]*request, len(ops))
	for i, o := range ops {
		switch {
		case o.OID == "" || o.Op == nil:
			errs[i] = &objstore.OpError{Op: "operate", OID: o.OID, Err: syscall.EINVAL}
		case ctx.Err() != nil:
			errs[i] = &objstore.OpError{Op: "operate", OID: o.OID, Err: ctx.Err()}
		default:
			reqs[i] = &request{p: p, oid: o.OID, op: o.Op, size: opSize(o.Op), done: make(chan struct{}), background: background}
		}
	}
	c.enqueue(reqs)
	return func() []error {
		defer c.exit()
		for i, r := range reqs {
			if r != nil {
				errs[i] = c.wait(ctx, r)
			}
		}
		return errs
	}
}

// Sync returns once every operation this client completed before the call
// is durable, lazy ones (objstore.WriteOp.SetLazy) included: it is a
// non-lazy operation that changes nothing, so by SetLazy's contract the
// lazy operations before it are durable when it completes. It costs a log
// sync only if this client logged a lazy operation since its last sync.
// pkg/extentlog finds it by an interface assertion (a backend whose
// operations are all durable has nothing to sync).
func (p *pool) Sync(ctx context.Context) error {
	c := p.c
	if err := c.enter(); err != nil {
		return &objstore.OpError{Op: "sync", Err: err}
	}
	defer c.exit()
	if err := ctx.Err(); err != nil {
		return &objstore.OpError{Op: "sync", Err: err}
	}
	r := &request{p: p, barrier: true, done: make(chan struct{})}
	c.enqueue([]*request{r})
	return c.wait(ctx, r)
}

// enqueue queues the requests (nil ones skipped) for the committer.
func (c *Cluster) enqueue(reqs []*request) {
	c.pendMu.Lock()
	for _, r := range reqs {
		if r != nil {
			c.pending = append(c.pending, r)
		}
	}
	c.pendMu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// syncLog syncs the log (counted in the stats); afterwards no lazy record
// of this client is unsynced. A failure is logged and returned.
func (c *Cluster) syncLog() error {
	c.stats.syncs.Add(1)
	if err := c.sync(c.wal); err != nil {
		c.log.Error(err, "local cluster: log sync failed", "dir", c.dir)
		return err
	}
	c.lazyUnsynced = false
	return nil
}

// wait waits for a queued request's outcome.
func (c *Cluster) wait(ctx context.Context, r *request) error {
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		if r.state.CompareAndSwap(reqPending, reqCancelled) {
			return &objstore.OpError{Op: "operate", OID: r.oid, Err: ctx.Err()}
		}
	case <-c.ctx.Done():
		if r.state.CompareAndSwap(reqPending, reqCancelled) {
			return &objstore.OpError{Op: "operate", OID: r.oid, Err: errClosed}
		}
	}
	<-r.done // already being committed: its outcome is known shortly
	return r.err
}

// committer is the goroutine that commits queued operations in batches: one
// log write and one fsync per batch (group commit).
func (c *Cluster) committer() {
	defer c.wg.Done()
	for {
		select {
		case <-c.kick:
		case <-c.ctx.Done():
			c.failPending()
			return
		}
		prev := 0
		for {
			c.gather(prev)
			batch := c.takeBatch()
			if len(batch) == 0 {
				break
			}
			prev = 0
			for _, r := range batch {
				if !r.background {
					prev++
				}
			}
			c.commitBatch(batch)
		}
	}
}

// gatherWait bounds how long the committer waits for a batch to fill.
const gatherWait = 250 * time.Microsecond

// gather waits briefly, after a batch of prev operations, until about as
// many are queued again. The callers of the last batch react to its
// completion with new operations (the journal's next append per splay
// object, a device's apply of what was just journaled); taking the queue at
// once would start a sync for the first of them and leave the rest a whole
// sync behind.
func (c *Cluster) gather(prev int) {
	if prev < 2 {
		return
	}
	deadline := time.Now().Add(gatherWait)
	for {
		c.pendMu.Lock()
		n := len(c.pending)
		c.pendMu.Unlock()
		left := time.Until(deadline)
		if n >= prev || left <= 0 {
			return
		}
		t := time.NewTimer(left)
		select {
		case <-c.kick:
		case <-t.C:
		case <-c.ctx.Done():
		}
		t.Stop()
	}
}

func (c *Cluster) takeBatch() []*request {
	c.pendMu.Lock()
	defer c.pendMu.Unlock()
	n, bytes := 0, 0
	for n < len(c.pending) && n < maxBatchOps {
		if n > 0 && bytes+c.pending[n].size > maxBatchBytes {
			break
		}
		bytes += c.pending[n].size
		n++
	}
	batch := c.pending[:n:n]
	c.pending = c.pending[n:]
	if len(c.pending) == 0 {
		c.pending = nil
	}
	return batch
}

func (c *Cluster) failPending() {
	c.pendMu.Lock()
	batch := c.pending
	c.pending = nil
	c.pendMu.Unlock()
	for _, r := range batch {
		if r.state.CompareAndSwap(reqPending, reqClaimed) {
			r.err = &objstore.OpError{Op: "operate", OID: r.oid, Err: errClosed}
			close(r.done)
		}
	}
}

type objKey struct {
	pool int64
	oid  string
}

// commitBatch runs a batch: under the commit lock it checks the blocklist,
// executes every operation against the current state (later operations see
// earlier ones), appends the records of those that succeeded to the log,
// syncs it once, applies the records to the object files and completes the
// requests.
func (c *Cluster) commitBatch(batch []*request) {
	if err := c.lockCommit(c.ctx); err != nil {
		for _, r := range batch {
			if r.state.CompareAndSwap(reqPending, reqClaimed) {
				if c.ctx.Err() != nil {
					err = errClosed
				}
				r.err = &objstore.OpError{Op: "operate", OID: r.oid, Err: err}
				close(r.done)
			}
		}
		return
	}
	claimed := batch[:0]
	for _, r := range batch {
		if r.state.CompareAndSwap(reqPending, reqClaimed) {
			claimed = append(claimed, r)
		}
	}
	batch = claimed
	defer func() {
		for _, r := range batch {
			close(r.done)
		}
	}()
	defer c.unlockCommit()
	if len(batch) == 0 {
		return
	}
	if c.blocklisted() {
		for _, r := range batch {
			r.err = blocklistedErr("operate", r.oid)
		}
		return
	}
	s := c.shm
	s.busy().Store(1)
	now := time.Now().UnixNano()
	states := map[objKey]*objState{}
	type pendingRec struct {
		r   *request
		rec *record
	}
	recs := make([]pendingRec, 0, len(batch))
	lsn := s.nextLSN().Load()
	buf := c.walBuf[:0]
	// A lazy operation is durable once a later non-lazy one of this
	// client completes (objstore.WriteOp.SetLazy), even one that fails
	// or changes nothing (a Sync): such a batch syncs the log if lazy
	// records are not yet synced.
	nonLazy := false
	for _, r := range batch {
		nonLazy = nonLazy || r.barrier || !r.op.Lazy()
	}
	for _, r := range batch {
		if r.barrier {
			continue
		}
		// A write with a newer snapshot context first preserves its
		// object (snap.go): those records precede the write's.
		pre, keep, err := c.snapPrepare(r, states, now)
		if err != nil {
			r.err = err
			continue
		}
		rec, err := c.execWrite(r, states, now)
		if err != nil {
			r.err = err
			continue
		}
		if rec == nil {
			continue
		}
		keep()
		for _, pr := range pre {
			pr.lsn = lsn
			lsn++
			buf = pr.appendTo(buf)
			recs = append(recs, pendingRec{r, pr})
		}
		rec.lsn = lsn
		lsn++
		buf = rec.appendTo(buf)
		recs = append(recs, pendingRec{r, rec})
	}
	if cap(buf) <= 16<<20 {
		c.walBuf = buf[:0]
	} else {
		c.walBuf = nil
	}
	if len(recs) == 0 {
		s.busy().Store(0)
		if nonLazy && c.lazyUnsynced {
			if err := c.syncLog(); err != nil {
				for _, r := range batch {
					if r.err == nil {
						r.err = &objstore.OpError{Op: "sync", OID: r.oid, Err: fmt.Errorf("%w: %v", syscall.EIO, err)}
					}
				}
			}
		}
		return
	}
	logEnd := int64(s.logEnd().Load())
	fail := func(err error) {
		for _, pr := range recs {
			pr.r.err = &objstore.OpError{Op: "operate", OID: pr.r.oid, Err: fmt.Errorf("%w: %v", syscall.EIO, err)}
		}
	}
	if err := c.preallocWAL(logEnd + int64(len(buf))); err != nil {
		s.busy().Store(0)
		c.log.Error(err, "local cluster: log preallocation failed", "dir", c.dir)
		fail(err)
		return
	}
	if _, err := c.wal.WriteAt(buf, logEnd); err != nil {
		c.abandonLogged(logEnd)
		c.log.Error(err, "local cluster: log write failed", "dir", c.dir)
		fail(err)
		return
	}
	if testHookAfterLogWrite != nil {
		testHookAfterLogWrite()
	}
	// A batch of lazy operations only is not synced: a later synced batch
	// syncs the whole log, these records included.
	c.stats.batches.Add(1)
	c.stats.ops.Add(uint64(len(recs)))
	if !nonLazy {
		c.lazyUnsynced = true
	} else if err := c.syncLog(); err != nil {
		c.abandonLogged(logEnd)
		fail(err)
		return
	}
	for _, pr := range recs {
		if err := c.applyLogged(pr.rec); err != nil {
			// The records are durable; the next commit-lock holder replays
			// them (busy stays set). Report the outcome as unknown.
			c.log.Error(err, "local cluster: applying a logged operation failed", "dir", c.dir, "oid", pr.rec.oid)
			fail(err)
			return
		}
	}
	s.logEnd().Store(uint64(logEnd + int64(len(buf))))
	s.nextLSN().Store(lsn)
	s.commitSeq().Add(1)
	s.busy().Store(0)
	for _, pr := range recs {
		if m := pr.rec.muts; len(m) > 0 && m[len(m)-1].kind == mutRemove {
			// As an OSD does, removing an object disconnects its watchers
			// (they notice their registration is gone).
			esc, _ := escapeName(pr.rec.oid)
			os.RemoveAll(filepath.Join(c.poolDir(pr.rec.poolID), "watch", esc))
		}
	}
	if int64(s.logEnd().Load()) > c.opts.MaxLogBytes {
		if err := c.checkpoint(); err != nil {
			c.log.Error(err, "local cluster: checkpoint failed", "dir", c.dir)
		}
	}
}

// abandonLogged drops the records a failed batch may have left after
// logEnd: they were not acknowledged, and a stale record must never follow
// the next batch's records in the log. If even that fails, the batch is left
// for the next commit-lock holder's recovery (which may apply it).
func (c *Cluster) abandonLogged(logEnd int64) {
	if err := c.wal.Truncate(logEnd); err != nil {
		return // busy stays set
	}
	c.shm.busy().Store(0)
}

// walChunk is the unit by which the log file grows. The log is extended with
// written zeros ahead of the records, so that a batch overwrites allocated
// blocks and its fdatasync has no file metadata to commit (several times
// cheaper than an appending fdatasync on ext4 and xfs). After a checkpoint
// the log is reused from the start: stale records there carry older LSNs and
// never continue the expected sequence.
const walChunk = 4 << 20

// preallocWAL makes the log file at least end bytes long.
func (c *Cluster) preallocWAL(end int64) error {
	st, err := c.wal.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	if size >= end {
		return nil
	}
	target := (end + walChunk - 1) / walChunk * walChunk
	zeros := make([]byte, 1<<20)
	for size < target {
		n := min(int64(len(zeros)), target-size)
		if _, err := c.wal.WriteAt(zeros[:n], size); err != nil {
			return err
		}
		size += n
	}
	return nil
}

// testHookAfterLogWrite, if set, runs after a batch's records are written to
// the log and before they are synced and applied (crash tests).
var testHookAfterLogWrite func()

// execWrite runs r's steps against the batch state of its object and returns
// the record of its effect (nil if it changed nothing). On failure the batch
// state is left as it was.
func (c *Cluster) execWrite(r *request, states map[objKey]*objState, now int64) (*record, error) {
	key := objKey{r.p.id, r.oid}
	base, ok := states[key]
	if !ok {
		st, err := loadState(r.p.paths(r.oid))
		if err != nil {
			return nil, stepErr("operate", r.oid, err)
		}
		base = st
	}
	st := base.branch()
	o := &opCtx{c: c, oid: r.oid, st: st, write: true, caller: c.client}
	for i := range r.op.Steps() {
		s := &r.op.Steps()[i]
		if err := o.writeStep(s); err != nil {
			return nil, stepErr(s.OpName(), r.oid, err)
		}
	}
	rec := &record{poolID: r.p.id, oid: r.oid, muts: st.muts[len(base.muts):]}
	if st.exists && o.metaChanged {
		rec.hasMeta = true
		rec.meta = st.meta.encode()
		if st.meta.empty() {
			rec.meta = nil
		}
	}
	if st.exists && o.touched {
		rec.mtime = now
		st.mtime = now
	}
	if rec.bodyLen() > maxRecordBody {
		return nil, &objstore.OpError{Op: "operate", OID: r.oid, Err: fmt.Errorf("%w: %v", syscall.EFBIG, errRecordTooBig)}
	}
	states[key] = st
	if len(rec.muts) == 0 && !rec.hasMeta && rec.mtime == 0 {
		return nil, nil
	}
	return rec, nil
}
