package image

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// gatedPool holds every data-object write until release is called, and
// counts data-object writes and their steps.
type gatedPool struct {
	objstore.Pool
	prefix string
	gate   chan struct{}
	ops    atomic.Int64
	steps  atomic.Int64
}

func (g *gatedPool) Operate(ctx context.Context, oid string, op *objstore.WriteOp) error {
	if strings.HasPrefix(oid, g.prefix) {
		g.ops.Add(1)
		g.steps.Add(int64(len(op.Steps())))
		<-g.gate
	}
	return g.Pool.Operate(ctx, oid, op)
}

func openGated(t *testing.T) (*Image, *gatedPool) {
	t.Helper()
	p := newPool(t)
	img := mustCreate(t, p, "comb", 8<<20, CreateOptions{Order: 22})
	g := &gatedPool{Pool: p, prefix: img.objectPrefix, gate: make(chan struct{})}
	gimg, err := Open(ctxT(t), g, "comb")
	if err != nil {
		t.Fatal(err)
	}
	return gimg, g
}

// waitQueued waits until n writes wait behind the in-flight operation on
// object objNo.
func waitQueued(t *testing.T, img *Image, objNo uint64, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		img.writes.mu.Lock()
		q := img.writes.queues[objNo]
		got := 0
		if q != nil {
			got = len(q.waiting)
		}
		img.writes.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d writes queued on object %d, want %d", got, objNo, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestCombinedWrites: writes queued behind an in-flight operation on one
// object go out as one operation, in queue order (an overlapping later
// write wins), and contiguous ones as one step.
func TestCombinedWrites(t *testing.T) {
	img, g := openGated(t)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	write := func(b byte, off, n int) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := img.WriteAt(ctx, bytes.Repeat([]byte{b}, n), int64(off)); err != nil {
				t.Error(err)
			}
		}()
	}
	write('a', 0, 4096) // in flight, held by the gate
	waitQueued(t, img, 0, 0)
	for g.ops.Load() != 1 {
		time.Sleep(time.Millisecond)
	}
	write('b', 8192, 4096)
	waitQueued(t, img, 0, 1)
	write('c', 12288, 4096) // contiguous with b: one step
	waitQueued(t, img, 0, 2)
	write('d', 100000, 1000)
	waitQueued(t, img, 0, 3)
	write('e', 100500, 1000) // overlaps d, queued after it
	waitQueued(t, img, 0, 4)
	close(g.gate)
	wg.Wait()
	if ops, steps := g.ops.Load(), g.steps.Load(); ops != 2 || steps != 4 {
		t.Fatalf("%d operations with %d steps, want 2 with 4 (a; b+c, d, e)", ops, steps)
	}
	want := make([]byte, 102000)
	copy(want[0:], bytes.Repeat([]byte{'a'}, 4096))
	copy(want[8192:], bytes.Repeat([]byte{'b'}, 4096))
	copy(want[12288:], bytes.Repeat([]byte{'c'}, 4096))
	copy(want[100000:], bytes.Repeat([]byte{'d'}, 1000))
	copy(want[100500:], bytes.Repeat([]byte{'e'}, 1000))
	got := make([]byte, len(want))
	if _, err := img.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("image content differs from the writes applied in order")
	}
	img.writes.mu.Lock()
	defer img.writes.mu.Unlock()
	if len(img.writes.queues) != 0 {
		t.Fatalf("queues left: %v", img.writes.queues)
	}
}

// TestCombinedWriteCancelled: a write whose ctx ends while it is queued is
// withdrawn (never written); the others still complete.
func TestCombinedWriteCancelled(t *testing.T) {
	img, g := openGated(t)
	ctx := ctxT(t)
	errs := make(chan error, 3)
	go func() { _, err := img.WriteAt(ctx, bytes.Repeat([]byte{1}, 512), 0); errs <- err }()
	for g.ops.Load() != 1 {
		time.Sleep(time.Millisecond)
	}
	cctx, cancel := context.WithCancel(ctx)
	go func() { _, err := img.WriteAt(cctx, bytes.Repeat([]byte{2}, 512), 512); errs <- err }()
	waitQueued(t, img, 0, 1)
	go func() { _, err := img.WriteAt(ctx, bytes.Repeat([]byte{3}, 512), 1024); errs <- err }()
	waitQueued(t, img, 0, 2)
	cancel()
	waitQueued(t, img, 0, 1)
	close(g.gate)
	var cancelled, ok int
	for range 3 {
		switch err := <-errs; {
		case err == nil:
			ok++
		case errors.Is(err, context.Canceled):
			cancelled++
		default:
			t.Fatal(err)
		}
	}
	if ok != 2 || cancelled != 1 {
		t.Fatalf("%d writes done, %d cancelled; want 2 and 1", ok, cancelled)
	}
	got := make([]byte, 1536)
	if _, err := img.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	want := append(append(bytes.Repeat([]byte{1}, 512), make([]byte, 512)...), bytes.Repeat([]byte{3}, 512)...)
	if !bytes.Equal(got, want) {
		t.Fatal("the withdrawn write reached the image, or another one did not")
	}
}

// TestWriteLinger: with a linger, writes to an idle object wait for later
// ones and go out together; enough bytes end the linger early.
func TestWriteLinger(t *testing.T) {
	p := newPool(t)
	img := mustCreate(t, p, "linger", 8<<20, CreateOptions{Order: 22})
	g := &gatedPool{Pool: p, prefix: img.objectPrefix, gate: make(chan struct{})}
	close(g.gate)
	limg, err := Open(ctxT(t), g, "linger")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	writeAll := func(n, size int) time.Duration {
		start := time.Now()
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := limg.WriteAt(ctx, bytes.Repeat([]byte{byte(i + 1)}, size), int64(i*size)); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		return time.Since(start)
	}

	limg.SetWriteLinger(300 * time.Millisecond)
	if d := writeAll(8, 4096); d < 300*time.Millisecond {
		t.Fatalf("lingering writes done after %v, before the linger", d)
	}
	if ops := g.ops.Swap(0); ops > 2 {
		t.Fatalf("8 concurrent writes in %d operations; the linger should gather them", ops)
	}

	limg.SetWriteLinger(time.Minute)
	if d := writeAll(4, lingerBytes/4); d > 30*time.Second {
		t.Fatalf("writes of %d bytes waited out the linger (%v)", lingerBytes, d)
	}
	got := make([]byte, lingerBytes)
	if _, err := limg.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if got[i*lingerBytes/4] != byte(i+1) || got[(i+1)*lingerBytes/4-1] != byte(i+1) {
			t.Fatalf("write %d not in the image", i)
		}
	}
}
