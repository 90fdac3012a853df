package testwait

import (
	"sync/atomic"
	"testing"
	"time"
)

// fatalRecorder is a testing.TB whose Fatalf records instead of stopping.
type fatalRecorder struct {
	testing.TB
	failed atomic.Bool
}

func (r *fatalRecorder) Helper()               {}
func (r *fatalRecorder) Fatalf(string, ...any) { r.failed.Store(true) }

// TestFor: For returns once the condition holds and fails the test when it
// does not hold in time.
func TestFor(t *testing.T) {
	var n atomic.Int32
	r := &fatalRecorder{TB: t}
	For(r, 5*time.Second, "three polls", func() bool { return n.Add(1) >= 3 })
	if r.failed.Load() || n.Load() != 3 {
		t.Fatalf("failed %v after %d polls", r.failed.Load(), n.Load())
	}
	start := time.Now()
	For(r, 50*time.Millisecond, "never", func() bool { return r.failed.Load() })
	if !r.failed.Load() || time.Since(start) < 50*time.Millisecond {
		t.Fatalf("failed %v after %v", r.failed.Load(), time.Since(start))
	}
}

// TestRecv: Recv returns what is sent and fails the test when nothing comes
// in time.
func TestRecv(t *testing.T) {
	ch := make(chan int, 1)
	r := &fatalRecorder{TB: t}
	ch <- 7
	if got := Recv(r, ch, 5*time.Second, "a value"); got != 7 || r.failed.Load() {
		t.Fatalf("got %d, failed %v", got, r.failed.Load())
	}
	start := time.Now()
	if got := Recv(r, ch, 50*time.Millisecond, "nothing"); got != 0 || !r.failed.Load() || time.Since(start) < 50*time.Millisecond {
		t.Fatalf("got %d, failed %v after %v", got, r.failed.Load(), time.Since(start))
	}
}
