package blockdev

import (
	"context"
	"errors"
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
	// busy's came first; then busy (holding 8 after its release of 2,
	// against quiet's 2).
	busy.release(2)
	granted(t, got, "quiet1", "quiet2")
	busy.release(2)
	granted(t, got, "busy1", "busy2")
	w.mu.Lock()
	bh, qh, cur := busy.held, quiet.held, w.cur
	w.mu.Unlock()
	if bh != 8 || qh != 2 || cur != 10 {
		t.Fatalf("held busy %d, quiet %d, in all %d; want 8, 2, 10", bh, qh, cur)
	}
	// A waiter of the least-holding share that does not fit is not
	// overtaken by a smaller one of another share.
	wait(quiet, "quiet-big", 5)
	waitFor(t, func() bool { return waiting(w) == 1 })
	wait(busy, "busy-small", 1)
	waitFor(t, func() bool { return waiting(w) == 2 })
	busy.release(4) // 4 free: quiet-big (5) does not fit, busy-small must wait
	select {
	case g := <-got:
		t.Fatalf("%s granted before the waiting share holding the least", g)
	case <-time.After(100 * time.Millisecond):
	}
	busy.release(2)
	granted(t, got, "quiet-big", "busy-small")
	busy.release(3)
	quiet.release(7)
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
