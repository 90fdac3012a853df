package fuseloop

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
		b := make([]byte, readBufSize)
		return &b
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
