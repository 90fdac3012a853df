package image

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Limits of one combined data-object write.
const (
	maxCombinedSteps = 256
	maxCombinedBytes = 8 << 20
	// lingerBytes cuts a linger short: an operation this big gains
	// little from waiting for more, and waiting holds its writers' memory.
	lingerBytes = 1 << 20
)

// combiner merges concurrent writes to one data object into a single
// object-store operation: while an operation on an object is in flight,
// later writes to it queue, and when it completes the first of them sends
// every queued write in one operation (flat combining). A store pays per
// operation far more than per byte, so under load one operation carries
// many writes, while a lone write still goes out at once. Writes reach
// the object in the order they queued.
//
// With a linger, a write to an idle object first waits that long for more
// writes to join it: a caller that does not wait for its writes (the
// journaled device applies in the background what its journal already
// holds) trades their latency for far fewer operations.
type combiner struct {
	mu     sync.Mutex
	queues map[uint64]*objectQueue
	linger time.Duration
}

// objectQueue is the writes to one data object waiting for its in-flight
// operation. An object has a queue exactly while an operation on it is in
// flight.
type objectQueue struct {
	waiting []*queuedWrite
	// full is closed when the writes of a lingering leader and those
	// queued behind it reach lingerBytes: they go out without waiting
	// out the linger (nil when not lingering).
	full  chan struct{}
	bytes int
}

type queuedWrite struct {
	off  uint64
	data []byte // the caller's buffer: the caller waits until it is sent
	// wake is closed when the write's operation completed (err says how)
	// or, batch set, when this write is to send the next operation.
	wake  chan struct{}
	batch []*queuedWrite
	err   error
}

// write writes data at off in data object objNo, combined with other
// writes to that object. A write still queued when ctx ends is withdrawn
// (nothing of it is written); one already sent is waited for.
func (c *combiner) write(ctx context.Context, img *Image, objNo uint64, off uint64, data []byte) error {
	w := &queuedWrite{off: off, data: data, wake: make(chan struct{})}
	c.mu.Lock()
	if c.queues == nil {
		c.queues = map[uint64]*objectQueue{}
	}
	q := c.queues[objNo]
	if q == nil {
		q = &objectQueue{}
		c.queues[objNo] = q
		linger := c.linger
		if linger > 0 && len(data) < lingerBytes {
			q.full, q.bytes = make(chan struct{}), len(data)
		}
		full := q.full
		c.mu.Unlock()
		batch := []*queuedWrite{w}
		if full != nil {
			// Not cut short by ctx: writes of other callers may have
			// joined, and they go out with this one.
			t := time.NewTimer(linger)
			select {
			case <-t.C:
			case <-full:
				t.Stop()
			}
			c.mu.Lock()
			q.full = nil
			n := batchLen(q.waiting, len(w.data))
			batch = append(batch, q.waiting[:n]...)
			q.waiting = append([]*queuedWrite(nil), q.waiting[n:]...)
			c.mu.Unlock()
		}
		c.send(ctx, img, objNo, batch)
		return w.err
	}
	q.waiting = append(q.waiting, w)
	if q.full != nil {
		if q.bytes += len(data); q.bytes >= lingerBytes {
			close(q.full)
			q.full = nil
		}
	}
	c.mu.Unlock()
	select {
	case <-w.wake:
	case <-ctx.Done():
		if c.withdraw(objNo, w) {
			return ctx.Err()
		}
		<-w.wake // sent already: the operation is bounded by the store
	}
	if w.batch != nil {
		c.send(ctx, img, objNo, w.batch)
	}
	return w.err
}

// withdraw removes w from its object's queue if it is still there.
func (c *combiner) withdraw(objNo uint64, w *queuedWrite) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.queues[objNo]
	if q == nil {
		return false
	}
	for i, x := range q.waiting {
		if x == w {
			q.waiting = append(q.waiting[:i], q.waiting[i+1:]...)
			return true
		}
	}
	return false
}

// send writes batch in one operation, completes its writes, and passes the
// object on to the first write queued meanwhile (or releases it).
// batch[0] is the caller's own write.
func (c *combiner) send(ctx context.Context, img *Image, objNo uint64, batch []*queuedWrite) {
	// The operation carries other callers' writes: it is not abandoned
	// when this caller's ctx ends.
	err := img.writeObject(context.WithoutCancel(ctx), objNo, batch)
	c.mu.Lock()
	q := c.queues[objNo]
	var next []*queuedWrite
	if len(q.waiting) == 0 {
		delete(c.queues, objNo)
	} else {
		n := 1 + batchLen(q.waiting[1:], len(q.waiting[0].data))
		next = q.waiting[:n:n]
		q.waiting = append([]*queuedWrite(nil), q.waiting[n:]...)
	}
	c.mu.Unlock()
	batch[0].err, batch[0].batch = err, nil
	for _, w := range batch[1:] {
		w.err = err
		close(w.wake)
	}
	if next != nil {
		next[0].batch = next
		close(next[0].wake)
	}
}

// batchLen is how many of ws fit in one operation after size bytes.
func batchLen(ws []*queuedWrite, size int) int {
	n := 0
	for n < len(ws) && n+1 < maxCombinedSteps && size+len(ws[n].data) <= maxCombinedBytes {
		size += len(ws[n].data)
		n++
	}
	return n
}

// writeObject sends the writes of batch, in order, as one operation on
// data object objNo; contiguous writes become one write step.
func (img *Image) writeObject(ctx context.Context, objNo uint64, batch []*queuedWrite) error {
	if err := img.copyupObject(ctx, objNo); err != nil { // a clone (parent.go)
		return err
	}
	op := img.newWriteOp()
	for i := 0; i < len(batch); {
		j, end := i+1, batch[i].off+uint64(len(batch[i].data))
		for j < len(batch) && batch[j].off == end {
			end += uint64(len(batch[j].data))
			j++
		}
		if j == i+1 {
			op.Write(batch[i].off, batch[i].data)
		} else {
			// One step gathered from the writers' buffers by the
			// store: no buffer of its own to allocate and fill.
			bufs := make([][]byte, j-i)
			for k, w := range batch[i:j] {
				bufs[k] = w.data
			}
			op.Writev(batch[i].off, bufs)
		}
		i = j
	}
	oid := img.DataOID(objNo)
	if err := img.pool.Operate(ctx, oid, op); err != nil {
		return fmt.Errorf("write %s: %w", oid, err)
	}
	return nil
}
