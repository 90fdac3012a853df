//go:build linux

package fuseloop

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// Backend is what gets exposed. Offsets and lengths are in bytes.
//
// Calls arrive concurrently. Every call gets a context that is cancelled when
// the device is aborted (watchdog, Abort, or a Close that ran out of time): a
// Backend must return promptly once it is cancelled, or the serving goroutine
// that called it cannot stop (the kernel side is unaffected: the FUSE
// connection is aborted regardless).
type Backend interface {
	// Size is the size in bytes at Attach time (a multiple of 512).
	Size() int64
	// ReadAt fills p entirely or returns an error.
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
	// WriteAt writes p entirely or returns an error; once it returns the
	// write is acknowledged to the kernel.
	WriteAt(ctx context.Context, p []byte, off int64) (int, error)
	// Flush makes every earlier acknowledged write durable (FSYNC/FLUSH).
	Flush(ctx context.Context) error
	// Discard deallocates a range; afterwards it must read back as zeroes
	// (the loop driver also sends write-zeroes that may unmap as a discard).
	Discard(ctx context.Context, off, length int64) error
	// WriteZeroes makes the range read back as zeroes (write-zeroes with
	// REQ_NOUNMAP; fallocate ZERO_RANGE).
	WriteZeroes(ctx context.Context, off, length int64) error
}

// Options configure Attach.
type Options struct {
	// StateDir holds one directory per device: <StateDir>/<Name>/fuse is the
	// FUSE mount point and <StateDir>/<Name>/fuse/disk the file the loop
	// device is bound to.
	StateDir string
	// Name identifies the device (one path element, e.g. a volume id).
	Name string
	// RequestTimeout bounds one Backend call. When a call runs longer the
	// watchdog aborts the FUSE connection (all I/O on the device then fails
	// with EIO) and the device fails with ErrRequestTimeout. 0 means
	// DefaultRequestTimeout; a negative value disables the watchdog.
	RequestTimeout time.Duration
	// ReadOnly exposes a read-only loop device; writes and fallocate are refused.
	ReadOnly bool
	// Buffers, if set, bounds the request buffers node-wide (shared by
	// every device of the process); nil: each device up to maxReaders.
	Buffers *RequestBuffers

	// oneReader serves as before the reader pool: one reader starting a
	// goroutine per request (benchmarks measure the two in one run).
	oneReader bool
}

// DefaultRequestTimeout is the watchdog timeout when Options.RequestTimeout is 0.
// It is below the kernel's default hung-task warning (120 s).
const DefaultRequestTimeout = 90 * time.Second

// How long Abort (and a Close whose context expired) waits for the serving
// goroutines after the connection was aborted.
const serverStopGrace = 5 * time.Second

var (
	// ErrRequestTimeout: a Backend call exceeded Options.RequestTimeout; the
	// FUSE connection was aborted.
	ErrRequestTimeout = errors.New("fuseloop: backend request timed out")
	// ErrServerStopped: the FUSE server stopped without Close (the mount was
	// unmounted or aborted from outside).
	ErrServerStopped = errors.New("fuseloop: FUSE server stopped unexpectedly")
	// ErrAborted: Abort was called.
	ErrAborted = errors.New("fuseloop: device aborted")
	// ErrClosed: Close completed.
	ErrClosed = errors.New("fuseloop: device closed")
	// ErrBusy: the loop device is in use (e.g. a filesystem is mounted on it).
	ErrBusy = errors.New("fuseloop: device busy")
	// ErrExists: something is already mounted at the device's FUSE mount point
	// (left by a dead process: call Cleanup first).
	ErrExists = errors.New("fuseloop: FUSE mount point already in use")
)

const diskFileName = "disk"

// Device is an attached loop device served by this process.
type Device struct {
	b        Backend
	name     string
	mnt      string // FUSE mount point
	file     string // mnt/disk
	loopIdx  int
	loopPath string
	readOnly bool
	timeout  time.Duration

	conn  uint64 // FUSE connection id (/sys/fs/fuse/connections/<conn>)
	size  atomic.Int64
	bctx  context.Context // given to Backend calls
	log   klog.Logger     // the attaching (or adopting) request's logger
	bstop context.CancelFunc

	tr tracker

	// The connection: our descriptor of /dev/fuse (from mount or
	// adoption), the reader's wake-up eventfd, what INIT negotiated.
	fd     int // /dev/fuse, valid while hasFD
	wakeFD int // eventfd that stops the reader
	hasFD  bool
	// pollFile is a duplicate of fd in the Go runtime's poller, which
	// readers wait on for requests (nil: they poll(2) fd and wakeFD).
	pollFile atomic.Pointer[os.File]
	init     InitParams
	bufs     sync.Pool // request buffers (readBufSize)
	// smallBufs: buffers (smallBufSize) small requests move to (shrink).
	smallBufs sync.Pool
	// nodeBufs bounds the request buffers node-wide (nil: no bound);
	// stopCh is closed by stopReading (readers waiting for a buffer).
	nodeBufs *RequestBuffers
	devBufs  chan struct{} // this device's share of nodeBufs (maxDeviceBuffers)
	stopCh   chan struct{}
	stopOnce sync.Once
	reqs     sync.WaitGroup // requests being answered
	// The readers (serve): how many run, how many wait for a request,
	// the first error that stopped one, and the flag that stops them.
	readers     sync.WaitGroup
	nreaders    atomic.Int32
	waiting     atomic.Int32
	readErrOnce sync.Once
	readErr     error
	stopRead    atomic.Bool
	oneReader   bool // Options.oneReader

	counts     [opcMax + 1]atomic.Uint64 // requests read, by opcode (opcMax: others)
	handingOff atomic.Bool               // Handoff stopped the reads on purpose
	resent     atomic.Uint64             // requests served that carried uniqueResend

	served   chan struct{} // closed when serve returned
	stopWD   chan struct{} // closed to stop the watchdog
	wg       sync.WaitGroup
	closing  atomic.Bool // teardown started: a server stop is expected
	failed   atomic.Bool // no more Backend calls
	doneOnce sync.Once
	done     chan struct{}
	errMu    sync.Mutex
	err      error

	// teardown state, under closeMu
	closeMu      sync.Mutex
	loopDetached bool
	unmounted    bool
	finished     bool

	resizeMu sync.Mutex

	errLog rateLog
}

// RequestCounts returns how many FUSE requests of each kind the device has
// served, by opcode name ("READ", "WRITE", "GETATTR", ...; "other" for the
// rest): with the loop device's own counters they give the round trips per
// I/O.
func (d *Device) RequestCounts() map[string]uint64 {
	m := map[string]uint64{}
	for op := range d.counts {
		if n := d.counts[op].Load(); n > 0 {
			m[opcName(uint32(op))] += n
		}
	}
	return m
}

// Path returns the loop device, e.g. /dev/loop3.
func (d *Device) Path() string { return d.loopPath }

// Size returns the current size of the device in bytes.
func (d *Device) Size() int64 { return d.size.Load() }

// Done is closed when the device stops serving: it failed (see Err) or it
// was closed or aborted.
func (d *Device) Done() <-chan struct{} { return d.done }

// Err returns nil while the device serves; afterwards why it stopped:
// ErrRequestTimeout, ErrServerStopped (wrapped with details), ErrAborted or
// ErrClosed.
func (d *Device) Err() error {
	d.errMu.Lock()
	defer d.errMu.Unlock()
	return d.err
}

// Attach exposes b as a loop device. On error everything it set up is undone.
func Attach(ctx context.Context, b Backend, opts Options) (_ *Device, retErr error) {
	if err := validName(opts.Name); err != nil {
		return nil, err
	}
	if opts.StateDir == "" || !filepath.IsAbs(opts.StateDir) {
		return nil, fmt.Errorf("fuseloop: StateDir must be an absolute path, got %q", opts.StateDir)
	}
	size := b.Size()
	if size <= 0 || size%512 != 0 {
		return nil, fmt.Errorf("fuseloop: backend size %d is not a positive multiple of 512", size)
	}
	timeout := opts.RequestTimeout
	if timeout == 0 {
		timeout = DefaultRequestTimeout
	}
	mnt := mountPoint(opts.StateDir, opts.Name)
	d := newDevice(ctx, b, opts.Name, mnt, opts.ReadOnly, timeout, size)
	d.nodeBufs = opts.Buffers
	d.oneReader = opts.oneReader
	logger := klog.FromContext(ctx).WithValues("name", opts.Name)

	defer func() {
		if retErr == nil {
			return
		}
		logger.Error(retErr, "fuseloop: attach failed, undoing")
		if err := d.Abort(); err != nil {
			logger.Error(err, "fuseloop: undo after failed attach")
		}
	}()

	if err := ensureFusectl(); err != nil {
		// Not fatal: aborting falls back to umount -f.
		logger.Info("fuseloop: fusectl not available, connection abort falls back to forced unmount", "err", err)
	}
	if mi, err := findMount(mnt); err != nil {
		return nil, err
	} else if mi != nil {
		d.unmounted, d.loopDetached, d.finished = true, true, true // not ours: leave it alone
		return nil, fmt.Errorf("%w: %s is mounted (%s); call Cleanup", ErrExists, mnt, mi.fsType)
	}
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		d.unmounted, d.loopDetached, d.finished = true, true, true
		return nil, fmt.Errorf("fuseloop: %w", err)
	}

	if err := d.mount(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	f, err := os.OpenFile(d.file, openFlags(d.readOnly)|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("fuseloop: open %s: %w", d.file, err)
	}
	idx, err := loopAttach(f, d.readOnly)
	f.Close() // the loop device holds its own reference
	if err != nil {
		return nil, err
	}
	d.loopIdx = idx
	d.loopPath = loopDevPath(idx)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dio := loopDirectIO(idx)
	if !dio {
		logger.Info("fuseloop: WARNING loop direct I/O is off; the kernel will send one request at a time", "device", d.loopPath)
	}

	if d.timeout > 0 {
		d.wg.Add(1)
		go d.watchdog()
	}
	if kt := kernelRequestTimeout(); kt > 0 {
		// Requests waiting for a successor count against it.
		logger.Info("fuseloop: the kernel aborts FUSE connections whose requests wait longer than this; a handover must fit in it",
			"kernelRequestTimeout", kt)
	}
	logger.Info("fuseloop: attached", "device", d.loopPath, "file", d.file, "size", size,
		"fuseConn", d.conn, "directIO", dio, "readOnly", d.readOnly, "requestTimeout", d.timeout)
	return d, nil
}

func newDevice(ctx context.Context, b Backend, name, mnt string, readOnly bool, timeout time.Duration, size int64) *Device {
	d := &Device{
		log:      klog.FromContext(ctx),
		b:        b,
		name:     name,
		mnt:      mnt,
		file:     filepath.Join(mnt, diskFileName),
		loopIdx:  -1,
		readOnly: readOnly,
		timeout:  timeout,
		served:   make(chan struct{}),
		stopWD:   make(chan struct{}),
		done:     make(chan struct{}),
		stopCh:   make(chan struct{}),
		devBufs:  make(chan struct{}, maxDeviceBuffers),
	}
	d.size.Store(size)
	// Backend calls outlive the request that attached the device but keep
	// its values (the logger with the volume).
	d.bctx, d.bstop = context.WithCancel(context.WithoutCancel(ctx))
	d.tr.init()
	d.initBufPools()
	return d
}

// initBufPools sets up the device's buffer pools: request buffers are made
// with their pages mapped (newRequestBuffer); small ones only receive our
// own copies (shrink), so plain memory does.
func (d *Device) initBufPools() {
	d.bufs.New = func() any { return newRequestBuffer(readBufSize) }
	d.smallBufs.New = func() any { b := make([]byte, smallBufSize); return &b }
}

// watchdog aborts the FUSE connection when a Backend call runs longer than
// the timeout. Stopped by teardown (stopWD).
func (d *Device) watchdog() {
	defer d.wg.Done()
	interval := d.timeout / 4
	interval = max(interval, 10*time.Millisecond)
	interval = min(interval, time.Second)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-d.stopWD:
			return
		case <-d.done:
			return
		case now := <-t.C:
			o, age, inflight := d.tr.oldest(now)
			if o == nil || age <= d.timeout {
				continue
			}
			err := fmt.Errorf("%w: %s off=%d len=%d running for %s (timeout %s, %d in flight); FUSE connection aborted",
				ErrRequestTimeout, o.kind, o.off, o.len, age.Round(time.Millisecond), d.timeout, inflight)
			d.log.Error(err, "fuseloop: backend stuck, aborting the FUSE connection", "name", d.name,
				"device", d.loopPath, "fuseConn", d.conn, "op", o.kind.String(), "off", o.off, "len", o.len,
				"age", age, "inflight", inflight)
			d.fail(err)
			return
		}
	}
}

// fail stops Backend calls, aborts the FUSE connection (every pending and
// future request on the device fails with EIO), records err and closes Done.
func (d *Device) fail(err error) {
	d.failed.Store(true)
	d.setDone(err) // before the abort, so whoever sees the I/O error also sees Err
	d.bstop()
	if d.conn != 0 || d.hasFD {
		_ = abortConn(d.conn, d.mnt)
	}
}

func (d *Device) setDone(err error) {
	d.doneOnce.Do(func() {
		d.errMu.Lock()
		d.err = err
		d.errMu.Unlock()
		close(d.done)
	})
}

// Close detaches cleanly: the loop device (refused with ErrBusy while it is
// open exclusively, e.g. mounted), then the FUSE mount, then waits for the
// server to stop (bounded by ctx; when ctx expires the connection is
// aborted). Idempotent; after an error it can be called again.
func (d *Device) Close(ctx context.Context) error {
	d.closeMu.Lock()
	defer d.closeMu.Unlock()
	if d.finished {
		return nil
	}
	logger := klog.FromContext(ctx).WithValues("name", d.name, "device", d.loopPath)
	if !d.loopDetached {
		// While this runs the watchdog still guards against a stuck backend:
		// detaching waits for in-flight I/O.
		if err := detachWhenReleased(ctx, d.loopIdx, d.file, d.conn); err != nil {
			if errors.Is(err, ErrBusy) {
				return fmt.Errorf("%w: %s is in use (mounted?)", ErrBusy, d.loopPath)
			}
			return err
		}
		d.loopDetached = true
	}
	d.closing.Store(true)
	if !d.unmounted {
		if err := unmountFuse(ctx, d.mnt); err != nil {
			return err
		}
		d.unmounted = true
	}
	select {
	case <-d.served:
	case <-ctx.Done():
		if isClosed(d.served) {
			break
		}
		logger.Info("fuseloop: FUSE server did not stop in time, aborting the connection", "inflight", d.tr.count())
		d.fail(ErrAborted)
		if err := d.waitServed(serverStopGrace); err != nil {
			return err
		}
	}
	d.finish(ErrClosed)
	logger.Info("fuseloop: closed")
	return nil
}

// busyGrace is how long Close keeps retrying a loop device that is open
// exclusively. Right after a filesystem on it is unmounted the device can
// still be held for a moment (udev's probe after the change event, the
// filesystem's deferred release of its block device), and a caller that
// just unmounted means "now": a device still busy after this is really in
// use.
const busyGrace = 2 * time.Second

// detachWhenReleased detaches the loop device exclusively (loopDetach),
// retrying ErrBusy for up to busyGrace (bounded by ctx).
func detachWhenReleased(ctx context.Context, idx int, file string, conn uint64) error {
	deadline := time.Now().Add(busyGrace)
	wait := 10 * time.Millisecond
	for {
		err := loopDetach(idx, file, conn, true)
		if !errors.Is(err, ErrBusy) || time.Now().Add(wait).After(deadline) {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
}

// Abort aborts the FUSE connection (pending and future I/O on the device fail
// with EIO, no task stays blocked on this server), then detaches the loop
// device (deferred by the kernel until its last opener closes it) and
// lazily unmounts the FUSE mount. It waits a bounded time for the serving
// goroutines. For stuck servers and error paths; idempotent.
func (d *Device) Abort() error {
	d.closeMu.Lock()
	defer d.closeMu.Unlock()
	if d.finished {
		return nil
	}
	d.closing.Store(true)
	d.fail(ErrAborted)
	var errs []error
	if !d.loopDetached {
		if d.loopIdx < 0 {
			d.loopDetached = true
		} else if err := loopDetach(d.loopIdx, d.file, d.conn, false); err != nil {
			errs = append(errs, err)
		} else {
			d.loopDetached = true
		}
	}
	if !d.unmounted {
		if err := syscall.Unmount(d.mnt, syscall.MNT_DETACH); err != nil && err != syscall.EINVAL && err != syscall.ENOENT {
			errs = append(errs, fmt.Errorf("fuseloop: lazy unmount %s: %w", d.mnt, err))
		} else {
			d.unmounted = true
		}
	}
	if d.hasFD {
		if err := d.waitServed(serverStopGrace); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		d.log.Error(err, "fuseloop: abort incomplete", "name", d.name, "device", d.loopPath)
		return err
	}
	d.finish(ErrAborted)
	d.log.Info("fuseloop: aborted", "name", d.name, "device", d.loopPath, "err", d.Err())
	return nil
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func (d *Device) waitServed(grace time.Duration) error {
	if !d.hasFD {
		return nil
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-d.served:
		return nil
	case <-t.C:
		return fmt.Errorf("fuseloop: FUSE server of %s did not stop within %s after the connection was aborted: %d backend calls ignore cancellation",
			d.name, grace, d.tr.count())
	}
}

// finish stops the remaining goroutines and marks the device torn down.
func (d *Device) finish(reason error) {
	close(d.stopWD)
	d.wg.Wait()
	d.failed.Store(true)
	d.bstop()
	d.setDone(reason)
	if isClosed(d.served) {
		d.closeFDs() // nothing reads or replies any more
	}
	_ = os.Remove(d.mnt)
	d.finished = true
}

// Resize grows the device to newSize bytes: the backend must already have at
// least that size. The kernel sees the new size when Resize returns.
func (d *Device) Resize(ctx context.Context, newSize int64) error {
	d.resizeMu.Lock()
	defer d.resizeMu.Unlock()
	cur := d.size.Load()
	switch {
	case newSize == cur:
		return nil
	case newSize < cur:
		return fmt.Errorf("fuseloop: shrinking %s from %d to %d is not supported", d.loopPath, cur, newSize)
	case newSize%512 != 0:
		return fmt.Errorf("fuseloop: size %d is not a multiple of 512", newSize)
	case newSize > d.b.Size():
		return fmt.Errorf("fuseloop: backend size %d is smaller than %d", d.b.Size(), newSize)
	}
	if err := d.Err(); err != nil {
		return err
	}
	d.size.Store(newSize)
	if err := d.syncKernelSize(ctx, newSize); err != nil {
		return err
	}
	if err := loopSetCapacity(d.loopIdx); err != nil {
		return err
	}
	got, err := blockDevSize(d.loopPath)
	if err != nil {
		return err
	}
	if got != newSize {
		return fmt.Errorf("fuseloop: %s has size %d after resize to %d", d.loopPath, got, newSize)
	}
	klog.FromContext(ctx).Info("fuseloop: resized", "name", d.name, "device", d.loopPath, "from", cur, "to", newSize)
	return nil
}

// kernelSizeTimeout bounds syncKernelSize.
const kernelSizeTimeout = 10 * time.Second

// syncKernelSize makes the kernel's size of the FUSE file newSize before
// the loop device grows.
//
// Why not just invalidate and stat: the size the loop driver's direct reads
// are bounded by is the FUSE inode's i_size (a read at or past it returns 0
// bytes, which the loop device fails with EIO: xfs_growfs reading the new
// last sector failed so), and the kernel drops a GETATTR answer that a
// direct write completed during (each write bumps the inode's attribute
// version) while stat(2) still reports the answer's size. With a
// filesystem writing on the device, stat could say newSize and i_size stay
// the old size. lseek(SEEK_END) answers with i_size itself (after a GETATTR
// when the attributes are invalid): it is asked again, after another
// invalidation, until it says newSize.
func (d *Device) syncKernelSize(ctx context.Context, newSize int64) error {
	f, err := os.Open(d.file)
	if err != nil {
		return fmt.Errorf("fuseloop: %w", err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(ctx, kernelSizeTimeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		if err := d.invalidateAttr(); err != nil && !errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("fuseloop: invalidate attributes of %s: %w", d.file, err)
		}
		got, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			return fmt.Errorf("fuseloop: size of %s: %w", d.file, err)
		}
		if got == newSize {
			if attempt > 0 {
				klog.FromContext(ctx).V(2).Info("fuseloop: the kernel took the new size after retries", "name", d.name, "size", newSize, "retries", attempt)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("fuseloop: the kernel still sees %d bytes in %s after resizing it to %d (%d attempts): %w", got, d.file, newSize, attempt+1, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

func mountPoint(stateDir, name string) string {
	return filepath.Join(stateDir, name, "fuse")
}

func validName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("fuseloop: invalid device name %q", name)
	}
	return nil
}

func openFlags(readOnly bool) int {
	if readOnly {
		return os.O_RDONLY
	}
	return os.O_RDWR
}

// rateLog logs backend errors at most once per interval per device.
type rateLog struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (r *rateLog) allow() (bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if now.Sub(r.last) < 10*time.Second {
		r.suppressed++
		return false, 0
	}
	n := r.suppressed
	r.last, r.suppressed = now, 0
	return true, n
}
