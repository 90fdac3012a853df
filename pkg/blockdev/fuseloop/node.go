//go:build linux

package fuseloop

import (
	"context"
	"errors"
	"io"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// rootNode is the FUSE root directory; it holds only the disk file.
type rootNode struct {
	fs.Inode
	disk *diskNode
}

var _ = (fs.NodeOnAdder)((*rootNode)(nil))

func (r *rootNode) OnAdd(ctx context.Context) {
	ch := r.NewPersistentInode(ctx, r.disk, fs.StableAttr{Mode: syscall.S_IFREG, Ino: 2})
	r.AddChild(diskFileName, ch, false)
}

// diskNode is the file the loop device is bound to. Its requests are served
// concurrently by go-fuse's reader goroutines.
type diskNode struct {
	fs.Inode
	dev *Device
}

var (
	_ = (fs.NodeGetattrer)((*diskNode)(nil))
	_ = (fs.NodeSetattrer)((*diskNode)(nil))
	_ = (fs.NodeOpener)((*diskNode)(nil))
	_ = (fs.NodeReader)((*diskNode)(nil))
	_ = (fs.NodeWriter)((*diskNode)(nil))
	_ = (fs.NodeFsyncer)((*diskNode)(nil))
	_ = (fs.NodeFlusher)((*diskNode)(nil))
	_ = (fs.NodeAllocater)((*diskNode)(nil))
)

func (n *diskNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	size := n.dev.size.Load()
	out.Mode = syscall.S_IFREG | 0o600
	if n.dev.readOnly {
		out.Mode = syscall.S_IFREG | 0o400
	}
	out.Size = uint64(size)
	out.Blocks = uint64(size / 512)
	out.Blksize = 4096
	out.Nlink = 1
	out.SetTimeout(time.Hour)
	return 0
}

func (n *diskNode) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok && int64(sz) != n.dev.size.Load() {
		return syscall.EPERM // the size follows the backend (Resize), never truncate
	}
	return n.Getattr(ctx, f, out)
}

func (n *diskNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if n.dev.readOnly && flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EROFS
	}
	return nil, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES, 0
}

func (n *diskNode) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	d := n.dev
	size := d.size.Load()
	if off < 0 || off > size {
		return nil, syscall.EINVAL
	}
	if off == size {
		return fuse.ReadResultData(nil), 0 // EOF, for tools reading the file directly
	}
	if int64(len(dest)) > size-off {
		dest = dest[:size-off]
	}
	o := d.begin(opRead, off, int64(len(dest)))
	if o == nil {
		return nil, syscall.EIO
	}
	nr, err := d.b.ReadAt(d.bctx, dest, off)
	d.end(o)
	if err == io.EOF && nr == len(dest) {
		err = nil
	}
	if err == nil && nr != len(dest) {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return nil, d.ioError(opRead, off, int64(len(dest)), err)
	}
	return fuse.ReadResultData(dest), 0
}

func (n *diskNode) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	d := n.dev
	if d.readOnly {
		return 0, syscall.EROFS
	}
	if !d.inRange(off, int64(len(data))) {
		return 0, syscall.EINVAL
	}
	o := d.begin(opWrite, off, int64(len(data)))
	if o == nil {
		return 0, syscall.EIO
	}
	nw, err := d.b.WriteAt(d.bctx, data, off)
	d.end(o)
	if err == nil && nw != len(data) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return 0, d.ioError(opWrite, off, int64(len(data)), err)
	}
	return uint32(nw), 0
}

// Fsync is how the loop driver forwards REQ_OP_FLUSH (vfs_fsync on the file).
// It must never return ENOSYS: the kernel would stop sending it, silently.
func (n *diskNode) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	d := n.dev
	if d.readOnly {
		return 0
	}
	o := d.begin(opFlush, 0, 0)
	if o == nil {
		return syscall.EIO
	}
	err := d.b.Flush(d.bctx)
	d.end(o)
	if err != nil {
		return d.ioError(opFlush, 0, 0, err)
	}
	return 0
}

// Flush is sent on close(2) of the file; durability is Fsync's job.
func (n *diskNode) Flush(ctx context.Context, f fs.FileHandle) syscall.Errno { return 0 }

// Allocate serves the loop driver's discard (PUNCH_HOLE|KEEP_SIZE) and
// write-zeroes (ZERO_RANGE|KEEP_SIZE with REQ_NOUNMAP, else PUNCH_HOLE|KEEP_SIZE).
func (n *diskNode) Allocate(ctx context.Context, f fs.FileHandle, off uint64, length uint64, mode uint32) syscall.Errno {
	d := n.dev
	if d.readOnly {
		return syscall.EROFS
	}
	var kind opKind
	switch mode &^ unix.FALLOC_FL_KEEP_SIZE {
	case unix.FALLOC_FL_PUNCH_HOLE:
		kind = opDiscard
	case unix.FALLOC_FL_ZERO_RANGE:
		kind = opWriteZeroes
	default:
		return syscall.EOPNOTSUPP
	}
	if mode&unix.FALLOC_FL_PUNCH_HOLE != 0 && mode&unix.FALLOC_FL_KEEP_SIZE == 0 {
		return syscall.EOPNOTSUPP // fallocate(2) requires KEEP_SIZE with PUNCH_HOLE
	}
	if off > 1<<62 || length > 1<<62 || !d.inRange(int64(off), int64(length)) {
		return syscall.EINVAL
	}
	if length == 0 {
		return 0
	}
	o := d.begin(kind, int64(off), int64(length))
	if o == nil {
		return syscall.EIO
	}
	var err error
	if kind == opDiscard {
		err = d.b.Discard(d.bctx, int64(off), int64(length))
	} else {
		err = d.b.WriteZeroes(d.bctx, int64(off), int64(length))
	}
	d.end(o)
	if err != nil {
		return d.ioError(kind, int64(off), int64(length), err)
	}
	return 0
}

func (d *Device) inRange(off, length int64) bool {
	size := d.size.Load()
	return off >= 0 && length >= 0 && off <= size && length <= size-off
}

// ioError maps a backend error to EIO and logs it (rate limited).
func (d *Device) ioError(kind opKind, off, length int64, err error) syscall.Errno {
	if ok, suppressed := d.errLog.allow(); ok {
		klog.ErrorS(err, "fuseloop: backend I/O failed, returning EIO", "name", d.name, "device", d.loopPath,
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
