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
