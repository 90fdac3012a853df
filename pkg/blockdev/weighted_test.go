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
	waitFor(t, func() bool { w.mu.Lock(); defer w.mu.Unlock(); return w.waiters.Len() == 1 })
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
	waitFor(t, func() bool { w.mu.Lock(); defer w.mu.Unlock(); return w.waiters.Len() == 1 })
	small := make(chan error, 1)
	go func() { small <- w.acquire(ctx, 3) }()
	waitFor(t, func() bool { w.mu.Lock(); defer w.mu.Unlock(); return w.waiters.Len() == 2 })
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
