package blockdev

import (
	"container/list"
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// weighted is a counting semaphore over bytes: writers wait while the
// device (or, shared through a NodeBudget, every device of the node) holds
// too many journaled-but-unapplied or acknowledged-but-not-durable bytes.
// Waiters are served first come, first served: a large request is not
// overtaken for ever by small ones, and with a node-wide budget no volume
// starves another (the algorithm of golang.org/x/sync/semaphore).
type weighted struct {
	mu      sync.Mutex
	size    int64
	cur     int64
	waiters list.List // of *waiter, in arrival order

	waits     atomic.Uint64 // acquisitions that had to wait
	waitNanos atomic.Int64  // their summed wait
}

type waiter struct {
	n     int64
	ready chan struct{} // closed when the bytes were granted
}

func newWeighted(size int64) *weighted { return &weighted{size: size} }

// acquire takes n (capped at the whole size, so one huge request still
// proceeds alone).
func (w *weighted) acquire(ctx context.Context, n int64) error {
	n = min(n, w.size)
	w.mu.Lock()
	if w.waiters.Len() == 0 && w.cur+n <= w.size {
		w.cur += n
		w.mu.Unlock()
		return nil
	}
	wt := &waiter{n: n, ready: make(chan struct{})}
	elem := w.waiters.PushBack(wt)
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
			w.grantLocked()
		default:
			front := w.waiters.Front() == elem
			w.waiters.Remove(elem)
			if front {
				// Those behind it may fit now.
				w.grantLocked()
			}
		}
		w.mu.Unlock()
		return ctx.Err()
	}
}

func (w *weighted) release(n int64) {
	n = min(n, w.size)
	w.mu.Lock()
	w.cur -= n
	w.grantLocked()
	w.mu.Unlock()
}

// grantLocked grants waiters in order while the first one fits.
func (w *weighted) grantLocked() {
	for {
		e := w.waiters.Front()
		if e == nil {
			return
		}
		wt := e.Value.(*waiter)
		if w.cur+wt.n > w.size {
			return
		}
		w.cur += wt.n
		w.waiters.Remove(e)
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
