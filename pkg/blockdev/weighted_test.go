package blockdev

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestWeightedFIFO: a request waiting for room is served before later,
// smaller ones that would fit; a waiter that gives up lets those behind
// it through; the bytes add up.
func TestWeightedFIFO(t *testing.T) {
	ctx := context.Background()
	w := newWeighted(10)
	if err := w.acquire(ctx, 8); err != nil {
		t.Fatal(err)
	}
	big := make(chan error, 1)
	go func() { big <- w.acquire(ctx, 6) }()
	waitFor(t, func() bool { return waiting(w) == 1 })
	// 2 bytes are free, but the big request came first.
	sctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := w.acquire(sctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a small request overtook a waiting big one: %v", err)
	}
	w.release(8)
	if err := <-big; err != nil {
		t.Fatal(err)
	}
	// A waiter that gives up lets a smaller one behind it in.
	gctx, gcancel := context.WithCancel(ctx)
	gave := make(chan error, 1)
	go func() { gave <- w.acquire(gctx, 9) }()
	waitFor(t, func() bool { return waiting(w) == 1 })
	small := make(chan error, 1)
	go func() { small <- w.acquire(ctx, 3) }()
	waitFor(t, func() bool { return waiting(w) == 2 })
	gcancel()
	if err := <-gave; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v", err)
	}
	if err := <-small; err != nil {
		t.Fatal(err)
	}
	if cur, waits, _ := w.stats(); cur != 9 || waits != 4 {
		t.Fatalf("holding %d bytes after %d waits, want 9 and 4", cur, waits)
	}
	w.release(6)
	w.release(3)
	if cur, _, _ := w.stats(); cur != 0 {
		t.Fatalf("holding %d bytes at the end", cur)
	}
}

// TestWeightedLeastHeldShareFirst: room that frees up goes to the waiting
// share that holds the least, even when another share's waiter came first;
// within a share, arrival order; a share alone takes everything.
func TestWeightedLeastHeldShareFirst(t *testing.T) {
	ctx := context.Background()
	w := newWeighted(10)
	busy, quiet := w.newShare(), w.newShare()
	// Alone, a share may take all of it.
	if err := busy.acquire(ctx, 10); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 4)
	wait := func(s *share, name string, n int64) {
		go func() {
			if err := s.acquire(ctx, n); err != nil {
				got <- "error: " + err.Error()
				return
			}
			got <- name
		}()
	}
	wait(busy, "busy1", 1)
	waitFor(t, func() bool { return waiting(w) == 1 })
	wait(busy, "busy2", 1)
	waitFor(t, func() bool { return waiting(w) == 2 })
	wait(quiet, "quiet1", 1)
	waitFor(t, func() bool { return waiting(w) == 3 })
	wait(quiet, "quiet2", 1)
	waitFor(t, func() bool { return waiting(w) == 4 })
	// busy holds 10, quiet nothing: quiet's waiters go first although
	// busy's came first.
	busy.release(2)
	granted(t, got, "quiet1", "quiet2")
	// The 2 that free up next are quiet's reserve (it has just used 2,
	// and busy holds more than its half): busy waits until quiet, done,
	// holds nothing.
	busy.release(2)
	granted(t, got)
	quiet.release(2)
	granted(t, got, "busy1", "busy2")
	w.mu.Lock()
	bh, qh, cur := busy.held, quiet.held, w.cur
	w.mu.Unlock()
	if bh != 8 || qh != 0 || cur != 8 {
		t.Fatalf("held busy %d, quiet %d, in all %d; want 8, 0, 8", bh, qh, cur)
	}
	// With quiet holding nothing and not waiting, busy alone takes the rest.
	if err := busy.acquire(ctx, 2); err != nil {
		t.Fatal(err)
	}
	// A waiter of the least-holding share that does not fit is not
	// overtaken by a smaller one of another share.
	wait(quiet, "quiet-big", 5)
	waitFor(t, func() bool { return waiting(w) == 1 })
	wait(busy, "busy-small", 1)
	waitFor(t, func() bool { return waiting(w) == 2 })
	busy.release(4) // 4 free: quiet-big (5) does not fit, busy-small must wait
	granted(t, got)
	busy.release(2)
	granted(t, got, "quiet-big", "busy-small")
	busy.release(5)
	quiet.release(5)
	if cur, _, _ := w.stats(); cur != 0 {
		t.Fatalf("holding %d at the end", cur)
	}
}

// granted checks that exactly the waiters named report from got (in any
// order: one grant wakes them together) and no other within 100ms.
func granted(t *testing.T, got <-chan string, names ...string) {
	t.Helper()
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	for range names {
		var g string
		select {
		case g = <-got:
		case <-time.After(10 * time.Second):
			t.Fatalf("still waiting for %v after 10s", want)
		}
		if !want[g] {
			t.Fatalf("granted %s, want %v", g, names)
		}
		delete(want, g)
	}
	select {
	case g := <-got:
		t.Fatalf("granted %s too, want only %v", g, names)
	case <-time.After(100 * time.Millisecond):
	}
}

// waiting counts w's waiters.
func waiting(w *weighted) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for e := w.waiting.Front(); e != nil; e = e.Next() {
		n += e.Value.(*share).waiters.Len()
	}
	return n
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestWeightedReserve: what a share may take beside other active shares:
// its equal part (rounded up to a whole request), beyond it everything but
// their reserves (twice what each held at most in the last demand window
// or two, up to an equal part), always one request that fits when it holds
// nothing, never more than fits.
func TestWeightedReserve(t *testing.T) {
	type other struct {
		peak, held int64 // peak: taken in window 0, then released down to held
		idle       bool  // other has no waiter and holds nothing: not active
	}
	for _, tc := range []struct {
		name   string
		held   int64 // the asking share's
		others []other
		window int64 // the current demand window
		n      int64
		want   bool
	}{
		{name: "alone takes the rest", held: 8, n: 2, want: true},
		{name: "alone, more than fits", held: 8, n: 3, want: false},
		{name: "other's reserve is twice its peak", held: 5, others: []other{{peak: 2, held: 1}}, n: 1, want: true},
		{name: "into other's reserve", held: 5, others: []other{{peak: 2, held: 1}}, n: 2, want: false},
		{name: "within its own part, rounded up to a request", held: 4, others: []other{{peak: 2, held: 1}}, n: 3, want: true},
		{name: "reserve capped at an equal part", held: 3, others: []other{{peak: 3, held: 1}, {peak: 1, held: 1}}, n: 1, want: true},
		{name: "peak of the window before counts", held: 5, others: []other{{peak: 2, held: 1}}, window: 1, n: 2, want: false},
		{name: "older peak does not", held: 5, others: []other{{peak: 2, held: 1}}, window: 2, n: 3, want: true},
		{name: "holding nothing, one request that fits", held: 0, others: []other{{peak: 5, held: 1}}, n: 9, want: true},
		{name: "holding nothing, not more than fits", held: 0, others: []other{{peak: 5, held: 2}}, n: 9, want: false},
		{name: "idle share reserves nothing", held: 5, others: []other{{peak: 5, held: 0, idle: true}}, n: 5, want: true},
		{name: "parts shrink with more active shares", held: 3, others: []other{{peak: 4, held: 2}, {peak: 4, held: 2}}, n: 1, want: true},
		{name: "parts shrink with more active shares, beyond", held: 3, others: []other{{peak: 4, held: 2}, {peak: 4, held: 2}}, n: 2, want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWeighted(10)
			now := w.start
			w.now = func() time.Time { return now }
			s := w.newShare()
			w.mu.Lock()
			defer w.mu.Unlock()
			for _, o := range tc.others {
				sh := w.newShare()
				sh.takeLocked(o.peak)
				w.cur -= o.peak - o.held
				sh.held = o.held
				sh.updateActiveLocked()
				if o.idle != (sh.aelem == nil) {
					t.Fatalf("share holding %d: active %v", o.held, sh.aelem != nil)
				}
			}
			if tc.held > 0 {
				s.takeLocked(tc.held)
			}
			now = now.Add(time.Duration(tc.window) * demandWindow)
			if got := w.grantableLocked(s, tc.n); got != tc.want {
				t.Fatalf("holding %d of 10 (in all %d), %d more: grantable %v, want %v", tc.held, w.cur, tc.n, got, tc.want)
			}
		})
	}
}

// TestWeightedFairUnderBursts: room that frees up in bursts (a journal
// batch applied at once) is shared evenly between shares that come back
// for more at once and shares that take a while to: least-held-first
// alone let the quick ones take all of each burst.
func TestWeightedFairUnderBursts(t *testing.T) {
	const (
		shares  = 6
		depth   = 4 // requests each share has waiting or on their way back
		size    = 60
		burst   = 20 * time.Millisecond
		runtime = 600 * time.Millisecond
	)
	w := newWeighted(size)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type state struct {
		s       *share
		held    atomic.Int64 // granted and not yet released by the applier
		granted atomic.Int64
	}
	var st [shares]state
	var wg sync.WaitGroup
	for i := range st {
		st[i].s = w.newShare()
		slow := i%2 == 1 // comes back a millisecond after each grant
		for range depth {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					if err := st[i].s.acquire(ctx, 1); err != nil {
						return
					}
					st[i].held.Add(1)
					st[i].granted.Add(1)
					if slow {
						select {
						case <-time.After(time.Millisecond):
						case <-ctx.Done():
							return
						}
					}
				}
			}()
		}
	}
	// The applier: every burst period, everything granted is released at once.
	tick := time.NewTicker(burst)
	defer tick.Stop()
	end := time.After(runtime)
loop:
	for {
		select {
		case <-tick.C:
			for i := range st {
				st[i].s.release(st[i].held.Swap(0))
			}
		case <-end:
			break loop
		}
	}
	cancel()
	wg.Wait()
	lo, hi := st[0].granted.Load(), st[0].granted.Load()
	var got []int64
	for i := range st {
		g := st[i].granted.Load()
		got = append(got, g)
		lo, hi = min(lo, g), max(hi, g)
	}
	// About even now, a tenth before the reserves; a quarter leaves room
	// for a loaded machine delaying the slow shares' timers.
	if lo*4 < hi {
		t.Fatalf("grants per share %v (odd ones slow): slowest under a quarter of the fastest", got)
	}
	t.Logf("grants per share (odd ones slow): %v", got)
}
