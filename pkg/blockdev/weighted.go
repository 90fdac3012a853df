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
// golang.org/x/sync/semaphore). Between shares, two rules keep volumes
// from starving each other:
//
//   - Room that frees up goes to the waiting share that holds the least,
//     ties to the one whose first waiter came first. Serving the whole
//     node in arrival order was not enough: a volume whose requests take
//     longer to apply piles up more of them (up to the whole node's
//     bound), and with them more goroutines competing for the CPU that
//     applies them, so it drew ahead; with 50 volumes the slowest wrote at
//     a third of the fastest's rate.
//   - Beyond an equal part of the whole (rounded up to a whole request),
//     a share may not take room that another active share (one holding or
//     waiting) is entitled to and has recently used: as much as that one
//     held at most in the last second or two, twice over, up to its equal
//     part. Least-held-first alone only decides between waiters, and the
//     room frees up in bursts (a journal batch applied at once): whoever
//     came back for more fastest took all of it, and with 50 volumes on
//     `local` the slowest wrote at 0.40 of the fastest's rate (0.90-0.95
//     with the reserves). A share alone, or beside shares that use
//     little, may still take everything but their reserves, and a share
//     holding nothing may always take one request that fits (so a request
//     larger than its part still proceeds).
type weighted struct {
	mu      sync.Mutex
	size    int64
	cur     int64
	waiting list.List // of *share with waiters
	active  list.List // of *share holding something or waiting
	def     share     // the share of acquire and release
	arrival uint64    // waiters' arrival numbers, for ties between shares
	start   time.Time // origin of the demand windows
	now     func() time.Time

	waits     atomic.Uint64 // acquisitions that had to wait
	waitNanos atomic.Int64  // their summed wait
}

// demandWindow is the span over which a share's peak holding is its
// demand: long enough to span a few journal batches and the bursts
// between them, short enough that a volume gone quiet soon leaves its
// room to the others.
const demandWindow = time.Second

// share is one holder group of a weighted: what it holds and its waiters.
// Only its weighted's mutex guards it.
type share struct {
	w       *weighted
	held    int64
	waiters list.List     // of *waiter, in arrival order
	elem    *list.Element // in w.waiting while it has waiters
	aelem   *list.Element // in w.active while it holds or waits
	// peak is the most the share held in demand window win, prevPeak in
	// the window before it.
	peak, prevPeak int64
	win            int64
}

type waiter struct {
	n       int64
	arrival uint64
	ready   chan struct{} // closed when the bytes were granted
}

func newWeighted(size int64) *weighted {
	w := &weighted{size: size, start: time.Now(), now: time.Now}
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
	if w.waiting.Len() == 0 && w.grantableLocked(s, n) {
		s.takeLocked(n)
		w.mu.Unlock()
		return nil
	}
	w.arrival++
	wt := &waiter{n: n, arrival: w.arrival, ready: make(chan struct{})}
	elem := s.waiters.PushBack(wt)
	if s.elem == nil {
		s.elem = w.waiting.PushBack(s)
	}
	s.updateActiveLocked()
	// Room may be free (others were waiting, not holding it all, or it
	// was reserved for s) and s may be the share it goes to.
	w.grantLocked()
	w.mu.Unlock()
	select {
	case <-wt.ready:
		return nil // granted at once: not a wait
	default:
	}
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
		s.updateActiveLocked()
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
	s.updateActiveLocked()
	w.grantLocked()
	w.mu.Unlock()
}

// takeLocked grants n to s.
func (s *share) takeLocked(n int64) {
	w := s.w
	w.cur += n
	s.held += n
	if win := w.windowLocked(); win != s.win {
		if win == s.win+1 {
			s.prevPeak = s.peak
		} else {
			s.prevPeak = 0
		}
		s.peak, s.win = 0, win
	}
	s.peak = max(s.peak, s.held)
	s.updateActiveLocked()
}

// windowLocked is the number of the current demand window.
func (w *weighted) windowLocked() int64 { return int64(w.now().Sub(w.start) / demandWindow) }

// reserveLocked is the room s is entitled to beyond what it holds, given
// each active share's equal part: as much as it held at most in this
// demand window or the one before, twice over, up to the part.
func (s *share) reserveLocked(part int64, win int64) int64 {
	var demand int64
	switch s.win {
	case win:
		demand = max(s.peak, s.prevPeak)
	case win - 1:
		demand = s.peak
	}
	return max(min(part, 2*max(demand, s.held))-s.held, 0)
}

// grantableLocked reports whether n may go to s now: it fits, and s holds
// nothing, or less than its part, or leaves the other active shares their
// reserves.
func (w *weighted) grantableLocked(s *share, n int64) bool {
	if w.cur+n > w.size {
		return false
	}
	if s.held == 0 { // even with parts rounded down to nothing
		return true
	}
	actives := int64(w.active.Len())
	if s.aelem == nil {
		actives++
	}
	part := w.size / actives
	if s.held < part {
		return true
	}
	win := w.windowLocked()
	free := w.size - w.cur - n
	for e := w.active.Front(); e != nil; e = e.Next() {
		if o := e.Value.(*share); o != s {
			if free -= o.reserveLocked(part, win); free < 0 {
				return false
			}
		}
	}
	return true
}

// updateActiveLocked puts s in or takes it off w's active shares.
func (s *share) updateActiveLocked() {
	switch active := s.held > 0 || s.waiters.Len() > 0; {
	case active && s.aelem == nil:
		s.aelem = s.w.active.PushBack(s)
	case !active && s.aelem != nil:
		s.w.active.Remove(s.aelem)
		s.aelem = nil
	}
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

// grantLocked grants waiters while the next one may go: the first waiter
// of the waiting share that holds the least (ties: the earliest first
// waiter). When that one may not go (it does not fit, or the room is
// other shares' reserve), nobody else is served before it.
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
		if !w.grantableLocked(next, wt.n) {
			return
		}
		next.removeWaiterLocked(front)
		next.takeLocked(wt.n)
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
