package blockdev

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// weighted is a counting semaphore over bytes: writers wait while the
// device holds too many journaled-but-unapplied bytes.
type weighted struct {
	mu      sync.Mutex
	size    int64
	cur     int64
	waiters []chan struct{}

	waits     atomic.Uint64 // acquisitions that had to wait
	waitNanos atomic.Int64  // their summed wait
}

func newWeighted(size int64) *weighted { return &weighted{size: size} }

// acquire takes n (capped at the whole size, so one huge request still
// proceeds alone).
func (w *weighted) acquire(ctx context.Context, n int64) error {
	n = min(n, w.size)
	var waitStart time.Time
	for {
		w.mu.Lock()
		if w.cur+n <= w.size {
			w.cur += n
			w.mu.Unlock()
			if !waitStart.IsZero() {
				w.waitNanos.Add(int64(time.Since(waitStart)))
			}
			return nil
		}
		if waitStart.IsZero() {
			waitStart = time.Now()
			w.waits.Add(1)
		}
		ch := make(chan struct{})
		w.waiters = append(w.waiters, ch)
		w.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			w.waitNanos.Add(int64(time.Since(waitStart)))
			return ctx.Err()
		}
	}
}

func (w *weighted) release(n int64) {
	n = min(n, w.size)
	w.mu.Lock()
	w.cur -= n
	ws := w.waiters
	w.waiters = nil
	w.mu.Unlock()
	for _, ch := range ws {
		close(ch)
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
