package blockdev

import (
	"container/list"
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// weighted is a counting semaphore over bytes (or requests): writers wait
// while the device (or, shared through a NodeBudget, every device of the
// node) holds too many journaled-but-unapplied or
// acknowledged-but-not-durable bytes.
//
// Its holders are grouped in shares (one per device for a NodeBudget's
// semaphores; a device's own semaphores have a single share). Within a
// share, waiters are served first come, first served: a large request is
// not overtaken for ever by small ones (the algorithm of
// golang.org/x/sync/semaphore). Between shares, the room that frees up goes
// to the waiting share that holds the least, ties to the one whose first
// waiter came first. Serving the whole node in arrival order was not
// enough to keep volumes from starving each other: a volume whose
// requests take longer to apply piles up more of them (up to the whole
// node's bound), and with them more goroutines competing for the CPU that
// applies them, so it drew ahead; with 50 volumes the slowest wrote at a
// third of the fastest's rate. Least-held-first keeps the backlogs even,
// and it is work-conserving: a share alone may still take everything.
type weighted struct {
	mu      sync.Mutex
	size    int64
	cur     int64
	waiting list.List // of *share with waiters
	def     share     // the share of acquire and release
	arrival uint64    // waiters' arrival numbers, for ties between shares

	waits     atomic.Uint64 // acquisitions that had to wait
	waitNanos atomic.Int64  // their summed wait
}

// share is one holder group of a weighted: what it holds and its waiters.
// Only its weighted's mutex guards it.
type share struct {
	w       *weighted
	held    int64
	waiters list.List     // of *waiter, in arrival order
	elem    *list.Element // in w.waiting while it has waiters
}

type waiter struct {
	n       int64
	arrival uint64
	ready   chan struct{} // closed when the bytes were granted
}

func newWeighted(size int64) *weighted {
	w := &weighted{size: size}
	w.def.w = w
	return w
}

// newShare returns a new holder group of w.
func (w *weighted) newShare() *share { return &share{w: w} }

// acquire takes n from the default share.
func (w *weighted) acquire(ctx context.Context, n int64) error { return w.def.acquire(ctx, n) }

// release gives back n taken with acquire.
func (w *weighted) release(n int64) { w.def.release(n) }

// acquire takes n (capped at the whole size, so one huge request still
// proceeds alone) for s.
func (s *share) acquire(ctx context.Context, n int64) error {
	w := s.w
	n = min(n, w.size)
	w.mu.Lock()
	if w.waiting.Len() == 0 && w.cur+n <= w.size {
		w.cur += n
		s.held += n
		w.mu.Unlock()
		return nil
	}
	w.arrival++
	wt := &waiter{n: n, arrival: w.arrival, ready: make(chan struct{})}
	elem := s.waiters.PushBack(wt)
	if s.elem == nil {
		s.elem = w.waiting.PushBack(s)
	}
	// Room may be free (others were waiting, not holding it all) and s may
	// be the share it goes to.
	w.grantLocked()
	w.mu.Unlock()
	w.waits.Add(1)
	start := time.Now()
	defer func() { w.waitNanos.Add(int64(time.Since(start))) }()
	select {
	case <-wt.ready:
		return nil
	case <-ctx.Done():
		w.mu.Lock()
		select {
		case <-wt.ready:
			// Granted meanwhile: give it back.
			w.cur -= n
			s.held -= n
		default:
			s.removeWaiterLocked(elem)
		}
		// Those behind it may fit now.
		w.grantLocked()
		w.mu.Unlock()
		return ctx.Err()
	}
}

// release gives back n taken with s.acquire.
func (s *share) release(n int64) {
	w := s.w
	n = min(n, w.size)
	w.mu.Lock()
	w.cur -= n
	s.held -= n
	w.grantLocked()
	w.mu.Unlock()
}

// removeWaiterLocked takes waiter e off s; a share left without waiters
// leaves its weighted's waiting list.
func (s *share) removeWaiterLocked(e *list.Element) {
	s.waiters.Remove(e)
	if s.waiters.Len() == 0 {
		s.w.waiting.Remove(s.elem)
		s.elem = nil
	}
}

// grantLocked grants waiters while the next one fits: the first waiter of
// the waiting share that holds the least (ties: the earliest first
// waiter). When that one does not fit, nobody else is served before it.
func (w *weighted) grantLocked() {
	for {
		var next *share
		for e := w.waiting.Front(); e != nil; e = e.Next() {
			s := e.Value.(*share)
			if next == nil || s.held < next.held ||
				s.held == next.held && s.waiters.Front().Value.(*waiter).arrival < next.waiters.Front().Value.(*waiter).arrival {
				next = s
			}
		}
		if next == nil {
			return
		}
		front := next.waiters.Front()
		wt := front.Value.(*waiter)
		if w.cur+wt.n > w.size {
			return
		}
		w.cur += wt.n
		next.held += wt.n
		next.removeWaiterLocked(front)
		close(wt.ready)
	}
}

// stats returns the bytes held, and how many acquisitions waited and for
// how long in all.
func (w *weighted) stats() (cur int64, waits uint64, waited time.Duration) {
	w.mu.Lock()
	cur = w.cur
	w.mu.Unlock()
	return cur, w.waits.Load(), time.Duration(w.waitNanos.Load())
}
