package fuseloop

import (
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/testwait"
)

// TestRequestBuffersBound: at most n buffers are out; a reader wanting
// another waits until one is given back (and gets that one), or returns
// nil once told to stop.
func TestRequestBuffersBound(t *testing.T) {
	r := NewRequestBuffers(2)
	stop := make(chan struct{})
	a, b := r.get(stop), r.get(stop)
	if a == nil || b == nil || len(*a) != readBufSize {
		t.Fatal("the first two buffers were not granted")
	}
	got := make(chan *[]byte, 1)
	go func() { got <- r.get(stop) }()
	select {
	case <-got:
		t.Fatal("a third buffer was granted past the bound of 2")
	case <-time.After(100 * time.Millisecond):
	}
	r.put(a)
	if c := testwait.Recv(t, got, 5*time.Second, "the buffer given back to reach the waiting reader"); c != a {
		t.Fatal("the waiting reader did not get the buffer given back")
	}
	go func() { got <- r.get(stop) }()
	close(stop)
	if c := testwait.Recv(t, got, 5*time.Second, "the reader waiting for a buffer to stop"); c != nil {
		t.Fatal("a reader told to stop got a buffer past the bound")
	}
	if n := NewRequestBuffers(0); cap(n.tokens) != DefaultRequestBuffers {
		t.Fatalf("default bound %d, want %d", cap(n.tokens), DefaultRequestBuffers)
	}
}
