package blockdev

import (
	"context"
	"sync"
)

// weighted is a counting semaphore over bytes: writers wait while the
// device holds too many journaled-but-unapplied bytes.
type weighted struct {
	mu      sync.Mutex
	size    int64
	cur     int64
	waiters []chan struct{}
}

func newWeighted(size int64) *weighted { return &weighted{size: size} }

// acquire takes n (capped at the whole size, so one huge request still
// proceeds alone).
func (w *weighted) acquire(ctx context.Context, n int64) error {
	n = min(n, w.size)
	for {
		w.mu.Lock()
		if w.cur+n <= w.size {
			w.cur += n
			w.mu.Unlock()
			return nil
		}
		ch := make(chan struct{})
		w.waiters = append(w.waiters, ch)
		w.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
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
