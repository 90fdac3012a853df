//go:build linux

package fuseloop

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/fuseholder"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Handing a device over to another process.
//
// The kernel aborts a FUSE connection when the last open file of /dev/fuse
// for it is closed. If another process (the holder, pkg/fuseholder) keeps a
// dup of the file, the connection, the loop device on it and the filesystem
// mounted on that survive the death of the serving process; requests it had
// read but not answered stay on the connection's processing list. A
// successor gets a dup of the file back, calls Adopt: Adopt writes
// FUSE_NOTIFY_RESEND, the kernel puts those requests back at the head of
// the pending queue (their unique now carries FUSE_UNIQUE_RESEND), and the
// successor serves on. Userspace sees a pause, no error.
//
// Why a resent request is safe. The successor opens the backend before it
// adopts: for the journaled device (pkg/blockdev) that fences the dead
// incarnation (lock takeover) and replays its journal, so every write it
// acknowledged, and possibly some it journaled but never acknowledged, are
// in the image. Then:
//   - a resent WRITE (or discard, write-zeroes) is applied again: it
//     carries an absolute offset and its data, so applying it after the
//     replay leaves the same bytes. It cannot undo a later write: a write
//     is only resent when it was never acknowledged, and the block layer
//     gives no order between writes in flight together; a write issued
//     after this one was acknowledged would have had to wait for it;
//   - a resent FSYNC asks that writes completed before it be durable;
//     completed means acknowledged, and the dead incarnation acknowledged a
//     write only once its journal entry was durable (AckApplied and
//     AckJournaled), so they are: the successor's Flush returns once its
//     own earlier writes are durable too;
//   - READ, GETATTR, LOOKUP, OPEN have no effect to repeat.
// An ack policy that acknowledged before the journal entry was durable
// would break the FSYNC argument: such a process must not hand over after a
// crash (Meta.AcksDurable false makes Adopt refuse) — unless what it
// acknowledged survives it and the successor journals it before adopting
// (AckWriteBack with its ring, pkg/blockdev/wbring.go: the metadata then
// says AcksDurable).

// Errors of a handover; on any of them the caller falls back to today's
// path (Cleanup, Attach anew).
var (
	// ErrNotFuseFD: the file given to Adopt is not /dev/fuse.
	ErrNotFuseFD = errors.New("fuseloop: not a /dev/fuse file")
	// ErrConnDead: the kernel reports the connection aborted (or the file
	// was never mounted): nothing to adopt.
	ErrConnDead = errors.New("fuseloop: FUSE connection is dead")
	// ErrNoResend: the kernel cannot resend requests (FUSE_HAS_RESEND,
	// Linux 6.9): a request the dead server read would never complete.
	ErrNoResend = errors.New("fuseloop: kernel cannot resend FUSE requests")
	// ErrStaleMeta: the metadata does not describe what the kernel has
	// (another layout, another mount, another loop device).
	ErrStaleMeta = errors.New("fuseloop: handover metadata does not match the system")
	// ErrHandedOff: Handoff completed; the device is no longer served here.
	ErrHandedOff = errors.New("fuseloop: device handed off")
)

// Meta is what a successor needs to serve a connection it did not set up.
// It holds no data and no credentials; JSON, kept by the holder.
type Meta struct {
	// Layout is the fixed node id / file handle scheme (layoutVersion).
	Layout     int    `json:"layout"`
	RootNodeID uint64 `json:"rootNodeID"`
	DiskNodeID uint64 `json:"diskNodeID"`
	DiskFH     uint64 `json:"diskFH"`

	Name       string `json:"name"`
	MountPoint string `json:"mountPoint"`
	File       string `json:"file"`
	Conn       uint64 `json:"conn"` // FUSE connection id
	LoopIndex  int    `json:"loopIndex"`
	Size       int64  `json:"size"`
	ReadOnly   bool   `json:"readOnly"`

	Init InitParams `json:"init"`

	// AcksDurable is the caller's statement that every write the server
	// acknowledged was durable at that moment (see the package comment
	// on resent requests). Adopt refuses metadata without it.
	AcksDurable bool `json:"acksDurable"`
}

// Marshal encodes m for the holder.
func (m Meta) Marshal() ([]byte, error) { return json.Marshal(m) }

// ParseMeta decodes metadata from the holder.
func ParseMeta(b []byte) (Meta, error) {
	var m Meta
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Meta{}, fmt.Errorf("%w: %v", ErrStaleMeta, err)
	}
	return m, nil
}

// Meta describes the device for a successor. acksDurable: see Meta.
func (d *Device) Meta(acksDurable bool) Meta {
	return Meta{
		Layout: layoutVersion, RootNodeID: rootNodeID, DiskNodeID: diskNodeID, DiskFH: diskFH,
		Name: d.name, MountPoint: d.mnt, File: d.file, Conn: d.conn, LoopIndex: d.loopIdx,
		Size: d.size.Load(), ReadOnly: d.readOnly, Init: d.init, AcksDurable: acksDurable,
	}
}

// DupFile returns a new open file of the device's connection (the same open
// file description), for the holder. The caller closes it.
func (d *Device) DupFile() (*os.File, error) {
	d.closeMu.Lock()
	defer d.closeMu.Unlock()
	if !d.hasFD || d.finished {
		return nil, fmt.Errorf("fuseloop: %s: no connection to hand out", d.name)
	}
	fd, err := unix.FcntlInt(uintptr(d.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("fuseloop: dup /dev/fuse: %w", err)
	}
	return os.NewFile(uintptr(fd), "/dev/fuse"), nil
}

// Resent is how many requests this device answered that the kernel had
// resent (FUSE_UNIQUE_RESEND).
func (d *Device) Resent() uint64 { return d.resent.Load() }

// Handoff is the planned stop: it stops reading new requests, waits until
// every request already read is answered (bounded by ctx), and releases the
// connection without unmounting or detaching anything. Requests the kernel
// queues meanwhile wait for the successor. Whoever else holds the
// connection's file (the holder) keeps it alive; if no one does, the
// connection is aborted when this process's file closes, as at a crash.
//
// On success Done is closed and Err is ErrHandedOff; the caller then closes
// the backend (for the journaled device: drain, commit, release the lock)
// and exits. When ctx expires first the reader stays stopped and ctx's
// error is returned: the caller exits anyway (the requests still in flight
// are resent to the successor) or calls Abort.
func (d *Device) Handoff(ctx context.Context) error {
	d.closeMu.Lock()
	defer d.closeMu.Unlock()
	if d.finished {
		return fmt.Errorf("fuseloop: %s already stopped: %w", d.name, d.Err())
	}
	if err := d.Err(); err != nil {
		return err
	}
	logger := klog.FromContext(ctx).WithValues("name", d.name, "device", d.loopPath)
	start := time.Now()
	d.handingOff.Store(true)
	d.stopReading()
	select {
	case <-d.served:
	case <-ctx.Done():
		// The reader has stopped; the requests in flight did not finish in
		// time. Nothing is lost either way: the holder keeps the
		// connection and a successor gets the unanswered requests resent.
		logger.Info("fuseloop: handoff: requests still in flight when the context expired", "inflight", d.tr.count())
		return fmt.Errorf("fuseloop: handoff of %s: %w", d.name, ctx.Err())
	}
	close(d.stopWD)
	d.wg.Wait()
	d.failed.Store(true)
	d.setDone(ErrHandedOff)
	d.closeFDs()
	d.finished = true
	logger.Info("fuseloop: handed off", "took", time.Since(start), "fuseConn", d.conn)
	return nil
}

// AdoptOptions configure Adopt.
type AdoptOptions struct {
	// RequestTimeout: as Options.RequestTimeout.
	RequestTimeout time.Duration
	// Buffers: as Options.Buffers.
	Buffers *RequestBuffers
}

// Adopt serves a live connection another process set up: f is an open
// file of it (from the holder; Adopt takes it over, also on error), meta
// what that process recorded, b the backend, already opened (for the
// journaled device: lock taken over and journal replayed). Adopt checks
// that f and meta match what the kernel has, writes FUSE_NOTIFY_RESEND,
// then serves. The loop device, its path and everything mounted on it are
// unchanged.
//
// Errors wrap ErrNotFuseFD, ErrConnDead, ErrNoResend or ErrStaleMeta; then
// nothing was changed (f is closed) and the caller falls back to Cleanup
// and Attach.
func Adopt(ctx context.Context, f *os.File, meta Meta, b Backend, opts AdoptOptions) (_ *Device, retErr error) {
	logger := klog.FromContext(ctx).WithValues("name", meta.Name)
	if f == nil {
		return nil, fmt.Errorf("%w: no file", ErrNotFuseFD)
	}
	// Take our own descriptor, outside the Go runtime poller, and close f.
	fd, err := DupFD(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			unix.Close(fd)
		}
	}()
	if err := checkFuseFD(fd); err != nil {
		return nil, err
	}
	if err := checkMeta(meta, b); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("fuseloop: %w", err)
	}
	timeout := opts.RequestTimeout
	if timeout == 0 {
		timeout = DefaultRequestTimeout
	}
	d := newDevice(ctx, b, meta.Name, meta.MountPoint, meta.ReadOnly, timeout, meta.Size)
	d.nodeBufs = opts.Buffers
	d.loopIdx, d.loopPath, d.conn, d.init = meta.LoopIndex, loopDevPath(meta.LoopIndex), meta.Conn, meta.Init
	if err := d.setFD(fd); err != nil {
		return nil, err
	}
	// Resend before the first read: requests the dead server had read come
	// back at the head of the queue (had we read first, our own reads
	// would be "in flight" and come back too).
	if err := d.notify(notifyResend, nil); err != nil {
		unix.Close(d.wakeFD)
		if errors.Is(err, unix.ENODEV) {
			return nil, fmt.Errorf("%w: NOTIFY_RESEND: %v", ErrConnDead, err)
		}
		return nil, fmt.Errorf("fuseloop: NOTIFY_RESEND on %s: %w", meta.MountPoint, err)
	}
	d.startServing()
	if d.timeout > 0 {
		d.wg.Add(1)
		go d.watchdog()
	}
	logger.Info("fuseloop: adopted", "device", d.loopPath, "fuseConn", d.conn, "size", d.size.Load(), "readOnly", d.readOnly,
		"kernelRequestTimeout", kernelRequestTimeout())
	return d, nil
}

// kernelRequestTimeout is the FUSE request timeout the kernel enforces on
// new connections (the sysctls fs.fuse.default_request_timeout and
// max_request_timeout, Linux 6.14+; 0: none). A connection whose request
// waits longer is aborted, so a handover (the successor's start, lock
// takeover and replay) must fit in it.
func kernelRequestTimeout() time.Duration {
	var t time.Duration
	for _, name := range []string{"default_request_timeout", "max_request_timeout"} {
		b, err := os.ReadFile("/proc/sys/fs/fuse/" + name)
		if err != nil {
			continue
		}
		var s int64
		if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &s); err == nil && s > 0 {
			v := time.Duration(s) * time.Second
			if t == 0 || v < t {
				t = v
			}
		}
	}
	return t
}

// fuseMinor is the minor number of /dev/fuse (misc device 10:229).
const fuseMajor, fuseMinor = 10, 229

// checkFuseFD: fd must be /dev/fuse on a live, mounted connection.
func checkFuseFD(fd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("%w: fstat: %v", ErrNotFuseFD, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != fuseMajor || unix.Minor(st.Rdev) != fuseMinor {
		return fmt.Errorf("%w: mode %#o rdev %d:%d", ErrNotFuseFD, st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return fmt.Errorf("%w: F_GETFL: %v", ErrNotFuseFD, err)
	}
	if fl&unix.O_ACCMODE != unix.O_RDWR {
		return fmt.Errorf("%w: not open read-write", ErrNotFuseFD)
	}
	// The kernel answers POLLERR for a connection it aborted and for a file
	// that was never mounted.
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(p, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("fuseloop: poll: %w", err)
		}
		break
	}
	if p[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
		return fmt.Errorf("%w: poll revents %#x", ErrConnDead, p[0].Revents)
	}
	return nil
}

// checkMeta: meta must describe this layout, a kernel that resends, the
// mount and loop device the system has, and a backend at least that large.
func checkMeta(m Meta, b Backend) error {
	if m.Layout != layoutVersion || m.RootNodeID != rootNodeID || m.DiskNodeID != diskNodeID || m.DiskFH != diskFH {
		return fmt.Errorf("%w: layout %d ids %d/%d fh %d, this server serves layout %d ids %d/%d fh %d",
			ErrStaleMeta, m.Layout, m.RootNodeID, m.DiskNodeID, m.DiskFH, layoutVersion, rootNodeID, diskNodeID, diskFH)
	}
	if err := validName(m.Name); err != nil {
		return fmt.Errorf("%w: %v", ErrStaleMeta, err)
	}
	if !m.Init.HasResend() {
		return fmt.Errorf("%w (kernel FUSE 7.%d, flags %#x)", ErrNoResend, m.Init.KernelMinor, m.Init.KernelFlags)
	}
	if !m.AcksDurable {
		return fmt.Errorf("%w: the previous server acknowledged writes before they were durable", ErrStaleMeta)
	}
	if m.Init.Major != protoMajor || m.Init.Minor < minKernMinor || m.Init.MaxWrite == 0 || m.Init.MaxWrite > maxWrite {
		return fmt.Errorf("%w: INIT %d.%d max_write %d not servable here", ErrStaleMeta, m.Init.Major, m.Init.Minor, m.Init.MaxWrite)
	}
	if !filepath.IsAbs(m.MountPoint) || m.File != filepath.Join(m.MountPoint, diskFileName) || filepath.Base(filepath.Dir(m.MountPoint)) != m.Name {
		return fmt.Errorf("%w: mount point %q file %q name %q", ErrStaleMeta, m.MountPoint, m.File, m.Name)
	}
	mi, err := findMount(m.MountPoint)
	if err != nil {
		return err
	}
	if mi == nil || mi.fsType != "fuse.fuseloop" || mi.connID() != m.Conn {
		return fmt.Errorf("%w: %s is not FUSE connection %d (mount %+v)", ErrStaleMeta, m.MountPoint, m.Conn, mi)
	}
	if m.LoopIndex < 0 || !loopIsOurs(m.LoopIndex, m.File, m.Conn) {
		return fmt.Errorf("%w: %s is not bound to %s", ErrStaleMeta, loopDevPath(m.LoopIndex), m.File)
	}
	if m.Size <= 0 || m.Size%512 != 0 || b.Size() < m.Size {
		return fmt.Errorf("%w: size %d, backend size %d", ErrStaleMeta, m.Size, b.Size())
	}
	return nil
}

// DupFD duplicates f's descriptor (close-on-exec) without f.Fd(), which
// would switch the shared open file description to blocking mode under a
// server that is reading it.
func DupFD(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("fuseloop: %w", err)
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, fmt.Errorf("fuseloop: %w", err)
	}
	if derr != nil {
		return -1, fmt.Errorf("fuseloop: dup: %w", derr)
	}
	return nfd, nil
}

// Holder is what AdoptOrAttach needs of a connection holder
// (pkg/fuseholder.Client implements it).
type Holder interface {
	Get(ctx context.Context, key string) (*os.File, []byte, bool, error)
	Put(ctx context.Context, key string, f *os.File, meta []byte) error
	Drop(ctx context.Context, key string) error
}

// AdoptOrAttach is the start of a serving process for one device: adopt the
// connection h holds under opts.Name if it can, else fall back to today's
// path (Cleanup of what a dead predecessor left, Attach anew), and give the
// new connection to h. acksDurable: see Meta.AcksDurable. h may be nil (no
// holder configured).
//
// It returns the device and whether it was adopted. Errors are those of
// the fallback (Cleanup, Attach): in particular ErrBusy when a filesystem
// is still mounted on the old, aborted loop device (the caller unmounts
// and re-serves, as before handovers existed). A holder that is missing,
// slow, or holds a dead or foreign connection only costs the adoption: it
// is logged and the fallback runs. A failed Put is logged; the device then
// serves without protection against a crash.
func AdoptOrAttach(ctx context.Context, h Holder, b Backend, opts Options, acksDurable bool) (*Device, bool, error) {
	logger := klog.FromContext(ctx).WithValues("name", opts.Name)
	if h != nil {
		f, mb, alive, err := h.Get(ctx, opts.Name)
		switch {
		case err == nil:
			m, err := ParseMeta(mb)
			if err == nil {
				var d *Device
				d, err = Adopt(ctx, f, m, b, AdoptOptions{RequestTimeout: opts.RequestTimeout, Buffers: opts.Buffers})
				if err == nil {
					return d, true, nil
				}
			} else {
				f.Close()
			}
			logger.Error(err, "fuseloop: cannot adopt the held FUSE connection; falling back to a new one", "alive", alive)
			if derr := h.Drop(ctx, opts.Name); derr != nil {
				logger.Error(derr, "fuseloop: dropping the unusable connection from the holder")
			}
		case errors.Is(err, fuseholder.ErrNotFound):
			// Nothing held: a first start, or the holder restarted.
		default:
			logger.Error(err, "fuseloop: holder unavailable; serving without adoption")
		}
	}
	d, err := Attach(ctx, b, opts)
	if errors.Is(err, ErrExists) {
		// A dead predecessor's mount whose connection nobody holds (or one
		// we could not adopt): abort and detach it first.
		if cerr := Cleanup(ctx, opts.StateDir, opts.Name); cerr != nil {
			return nil, false, cerr
		}
		d, err = Attach(ctx, b, opts)
	}
	if err != nil {
		return nil, false, err
	}
	if h != nil {
		if err := putDevice(ctx, h, d, acksDurable); err != nil {
			logger.Error(err, "fuseloop: could not give the connection to the holder; a crash of this process will abort it")
		}
	}
	return d, false, nil
}

// PutDevice gives the holder a dup of d's connection with its metadata
// (again after a resize, so the successor knows the size).
func PutDevice(ctx context.Context, h Holder, d *Device, acksDurable bool) error {
	return putDevice(ctx, h, d, acksDurable)
}

func putDevice(ctx context.Context, h Holder, d *Device, acksDurable bool) error {
	f, err := d.DupFile()
	if err != nil {
		return err
	}
	defer f.Close()
	mb, err := d.Meta(acksDurable).Marshal()
	if err != nil {
		return err
	}
	return h.Put(ctx, d.name, f, mb)
}
