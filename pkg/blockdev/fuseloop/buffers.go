package fuseloop

import "os"

// RequestBuffers bounds, node-wide, the max_write-sized buffers the
// devices sharing it read requests into (one per node plugin process, like
// blockdev.NodeBudget). A reader takes a buffer only to read a request and
// gives it back once the request is answered (or moved to a small buffer,
// shrink): a request the kernel has not handed over costs this process
// nothing. Without it every device can hold up to maxReaders buffers, 68
// MiB: with 50 volumes writing 1 MiB blocks, 380 requests (380 MiB) waited
// at the node's memory bounds in their request buffers, on top of the
// bytes those bounds admit. Its methods are safe for concurrent use.
type RequestBuffers struct {
	tokens chan struct{}
	free   chan *[]byte // buffers given back, shared by every device
}

// DefaultRequestBuffers is the node-wide number of request buffers of
// NewRequestBuffers(0): 128 MiB, enough for 1 MiB requests at queue depth
// 16 on 8 volumes at once.
const DefaultRequestBuffers = 128

// maxDeviceBuffers caps the node-wide buffers one device holds, so that a
// device whose requests are stuck (its cluster unreachable, until the
// watchdog aborts it) leaves the others most of them. Requests that hold a
// buffer for long are large writes waiting at the node's memory bounds or
// for the image: 16 MiB of 1 MiB writes per device.
const maxDeviceBuffers = 16

// NewRequestBuffers returns a bound of n buffers (0: DefaultRequestBuffers).
func NewRequestBuffers(n int) *RequestBuffers {
	if n <= 0 {
		n = DefaultRequestBuffers
	}
	return &RequestBuffers{tokens: make(chan struct{}, n), free: make(chan *[]byte, n)}
}

// get takes a buffer within the bound, or returns nil once stop is closed.
// Buffers go from device to device: at most n exist.
func (r *RequestBuffers) get(stop <-chan struct{}) *[]byte {
	select {
	case r.tokens <- struct{}{}:
	case <-stop:
		return nil
	}
	select {
	case b := <-r.free:
		return b
	default:
		return newRequestBuffer(readBufSize)
	}
}

// put gives back a buffer of get.
func (r *RequestBuffers) put(b *[]byte) {
	select {
	case r.free <- b:
	default: // cannot happen: as many tokens as free slots
	}
	<-r.tokens
}

// newRequestBuffer returns a buffer of size bytes for the kernel to copy
// requests into, every page of it already mapped writable.
//
// Why: the kernel copies a request (a WRITE's data: up to max_write) into
// the reader's buffer with get_user_pages. Its fast path takes the pages
// that are mapped; a page that is not (memory Go took fresh from the
// system and never wrote: it zeroes only reused memory) takes the slow
// path, which gives up at once when a SIGKILL is pending for the process,
// and the kernel then ends the request with EIO (fuse_dev_do_read) instead
// of leaving it for a successor to be resent. A server killed while a
// reader was in read(2) failed the write it was reading in this way ("loop:
// writeback error", an I/O error in the filesystem on the device): 2 of 17
// runs of TestHandoverJournaled on a loaded machine did, and 8 of 12 of
// its subtests when an experiment dropped the buffer's pages before every
// read (0 of 12 when they were written again before the read). A page
// stays mapped while the buffer is in use: Go returns to the system only
// the memory of freed objects, and a node without swap never pages
// anonymous memory out.
func newRequestBuffer(size int) *[]byte {
	b := make([]byte, size)
	prefault(b)
	return &b
}

// prefault writes to every page of b: a write fault maps a page of its own
// (a read could map the shared zero page, which a copy into b cannot use).
func prefault(b []byte) {
	step := os.Getpagesize()
	for i := 0; i < len(b); i += step {
		b[i] = 0
	}
	if len(b) > 0 {
		b[len(b)-1] = 0
	}
}
