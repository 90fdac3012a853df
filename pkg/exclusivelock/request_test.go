package exclusivelock_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
)

// TestProxyResize: the requester's side of a proxied resize (what the
// controller does on the local backend, and librbd's `rbd resize` on
// Ceph) against this package's owner side: the owner performs it and the
// requester gets its result; a refusal carries the owner's errno; with no
// owner (a watcher that is not the owner, or none at all) the requester
// learns ErrNoOwner instead of waiting.
func TestProxyResize(t *testing.T) {
	dir, _, p := newHeader(t)
	_, p2 := client(t, dir)
	var got atomic.Uint64
	var calls atomic.Int32
	ctx := context.Background()

	// Nobody watches: no owner.
	if err := exclusivelock.ProxyResize(ctx, p2, oid, 64<<20); !errors.Is(err, exclusivelock.ErrNoOwner) {
		t.Fatalf("resize without a watcher: %v, want ErrNoOwner", err)
	}
	// A watcher that is not the owner (acknowledges empty): no owner.
	watchSpy(t, p)
	if err := exclusivelock.ProxyResize(ctx, p2, oid, 64<<20); !errors.Is(err, exclusivelock.ErrNoOwner) {
		t.Fatalf("resize with a non-owner watcher: %v, want ErrNoOwner", err)
	}

	l := acquire(t, p, exclusivelock.Options{Resize: func(ctx context.Context, size uint64, allowShrink bool) error {
		calls.Add(1)
		if allowShrink {
			return fmt.Errorf("the requester must not allow shrinking: %w", syscall.EINVAL)
		}
		if size < 32<<20 {
			return fmt.Errorf("shrink refused: %w", syscall.EBUSY)
		}
		time.Sleep(100 * time.Millisecond) // the requester waits for AsyncComplete, not for the ack
		got.Store(size)
		return nil
	}})
	for _, tc := range []struct {
		size    uint64
		wantErr error
	}{
		{64 << 20, nil},
		{128 << 20, nil},
		{4 << 20, syscall.EBUSY},
	} {
		start := time.Now()
		err := exclusivelock.ProxyResize(ctx, p2, oid, tc.size)
		t.Logf("ProxyResize(%d): %v after %v", tc.size, err, time.Since(start).Round(time.Millisecond))
		switch {
		case tc.wantErr == nil && err != nil:
			t.Fatalf("ProxyResize(%d): %v", tc.size, err)
		case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
			t.Fatalf("ProxyResize(%d) = %v, want %v", tc.size, err, tc.wantErr)
		case tc.wantErr == nil && got.Load() != tc.size:
			t.Fatalf("owner resized to %d, want %d", got.Load(), tc.size)
		}
	}
	if n := calls.Load(); n != 3 {
		t.Fatalf("owner ran %d resizes, want 3", n)
	}
	// A released lock has no owner any more.
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := exclusivelock.ProxyResize(ctx, p2, oid, 256<<20); !errors.Is(err, exclusivelock.ErrNoOwner) {
		t.Fatalf("resize after release: %v, want ErrNoOwner", err)
	}
	// A cancelled wait ends the request.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := exclusivelock.ProxyResize(cctx, p2, oid, 256<<20); err == nil {
		t.Fatal("ProxyResize with a cancelled context succeeded")
	}
}
