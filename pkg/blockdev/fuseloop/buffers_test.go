package fuseloop

import (
	"os"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

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

// TestRequestBufferMapped: every page of a new request buffer is in memory
// before the kernel copies a request into it (see newRequestBuffer), for
// every way a reader gets one. The control, a plain buffer as large and
// as fresh, shows the check can see pages that are not: with Go's fresh
// memory it has some (it is skipped where the runtime hands out mapped
// memory only).
func TestRequestBufferMapped(t *testing.T) {
	control := make([]byte, 16<<20)
	if unmappedPages(t, control) == 0 {
		t.Skip("a fresh 16 MiB buffer is all in memory: the check cannot tell")
	}
	d := &Device{}
	d.initBufPools()
	for name, get := range map[string]func() *[]byte{
		"newRequestBuffer":   func() *[]byte { return newRequestBuffer(4 << 20) },
		"RequestBuffers.get": func() *[]byte { return NewRequestBuffers(4).get(nil) },
		"the device's pool":  d.getBuf,
	} {
		var kept []*[]byte // kept, so that the next ones are new memory
		for range 8 {
			b := get()
			if n := unmappedPages(t, *b); n != 0 {
				t.Fatalf("%s: %d of the buffer's pages are not in memory", name, n)
			}
			kept = append(kept, b)
		}
		runtime.KeepAlive(kept)
	}
}

// unmappedPages counts the whole pages of b that mincore(2) says are not in
// memory.
func unmappedPages(t *testing.T, b []byte) int {
	t.Helper()
	ps := os.Getpagesize()
	start := (int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) + ps - 1) / ps * ps
	end := (int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) + len(b)) / ps * ps
	if end <= start {
		return 0
	}
	vec := make([]byte, (end-start)/ps)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(start), uintptr(end-start), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatalf("mincore: %v", e)
	}
	runtime.KeepAlive(b)
	n := 0
	for _, v := range vec {
		if v&1 == 0 {
			n++
		}
	}
	return n
}
