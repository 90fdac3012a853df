//go:build linux

package fuseloop

import (
	"context"
	"errors"
	"sync"
	"syscall"
	"time"
)

func (d *Device) inRange(off, length int64) bool {
	size := d.size.Load()
	return off >= 0 && length >= 0 && off <= size && length <= size-off
}

// ioError maps a backend error to EIO and logs it (rate limited).
func (d *Device) ioError(kind opKind, off, length int64, err error) syscall.Errno {
	if ok, suppressed := d.errLog.allow(); ok {
		d.log.Error(err, "fuseloop: backend I/O failed, returning EIO", "name", d.name, "device", d.loopPath,
			"op", kind.String(), "off", off, "len", length, "suppressedSinceLast", suppressed,
			"cancelled", errors.Is(err, context.Canceled))
	}
	return syscall.EIO
}

// begin registers a Backend call with the watchdog; nil when the device has
// failed (the caller returns EIO without calling the backend).
func (d *Device) begin(kind opKind, off, length int64) *op {
	if d.failed.Load() {
		return nil
	}
	return d.tr.add(kind, off, length)
}

func (d *Device) end(o *op) { d.tr.remove(o) }

type opKind uint8

const (
	opRead opKind = iota
	opWrite
	opFlush
	opDiscard
	opWriteZeroes
)

func (k opKind) String() string {
	switch k {
	case opRead:
		return "read"
	case opWrite:
		return "write"
	case opFlush:
		return "flush"
	case opDiscard:
		return "discard"
	case opWriteZeroes:
		return "write-zeroes"
	}
	return "unknown"
}

// op is one Backend call in flight.
type op struct {
	prev, next *op
	kind       opKind
	off, len   int64
	start      time.Time
}

// tracker keeps the Backend calls in flight in start order (oldest first),
// so the watchdog only looks at the head.
type tracker struct {
	mu   sync.Mutex
	head op // sentinel of a circular list
	n    int
	pool sync.Pool
}

func (t *tracker) init() {
	t.head.next, t.head.prev = &t.head, &t.head
	t.pool.New = func() any { return new(op) }
}

func (t *tracker) add(kind opKind, off, length int64) *op {
	o := t.pool.Get().(*op)
	o.kind, o.off, o.len = kind, off, length
	o.start = time.Now()
	t.mu.Lock()
	o.prev, o.next = t.head.prev, &t.head
	t.head.prev.next = o
	t.head.prev = o
	t.n++
	t.mu.Unlock()
	return o
}

func (t *tracker) remove(o *op) {
	t.mu.Lock()
	o.prev.next = o.next
	o.next.prev = o.prev
	t.n--
	t.mu.Unlock()
	*o = op{}
	t.pool.Put(o)
}

// oldest returns a copy of the oldest call in flight and its age.
func (t *tracker) oldest(now time.Time) (*op, time.Duration, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == 0 {
		return nil, 0, 0
	}
	c := *t.head.next
	c.prev, c.next = nil, nil
	return &c, now.Sub(c.start), t.n
}

func (t *tracker) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n
}
