//go:build linux

package fuseloop

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

var (
	errShortInit         = errors.New("short INIT request")
	errUnsupportedKernel = fmt.Errorf("FUSE protocol older than 7.%d", minKernMinor)
)

// initTimeout bounds the wait for the kernel's INIT after mount(2) (it is
// queued by the mount itself, so it is there at once).
const initTimeout = 10 * time.Second

// openFuseDev opens /dev/fuse non-blocking. The reader waits with poll(2)
// on it and on a wake-up eventfd, so a planned handover can stop the reads
// without aborting the connection; a read then never blocks. O_NONBLOCK
// lives on the open file description, which the holder and every successor
// share: all of them see it non-blocking, which is what they want too.
//
// The descriptor is deliberately not given to the Go runtime poller
// (os.NewFile would register it with epoll): before mount(2) the kernel
// answers POLLERR without registering the waiter, and the epoll item then
// never wakes up. The readers wait in the poller on a duplicate made once
// the connection is mounted (openPoller).
func openFuseDev() (int, error) {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1, fmt.Errorf("fuseloop: open /dev/fuse: %w", err)
	}
	return fd, nil
}

// mount mounts the FUSE filesystem on a new connection, answers INIT and
// starts serving.
func (d *Device) mount() error {
	fd, err := openFuseDev()
	if err != nil {
		d.unmounted, d.loopDetached, d.finished = true, true, true
		return err
	}
	opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=%d,group_id=%d,default_permissions,max_read=%d",
		fd, os.Geteuid(), os.Getegid(), maxWrite)
	if err := unix.Mount("fuseloop:"+d.name, d.mnt, "fuse.fuseloop", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, opts); err != nil {
		unix.Close(fd)
		d.unmounted, d.loopDetached, d.finished = true, true, true
		_ = os.Remove(d.mnt)
		return fmt.Errorf("fuseloop: mount %s: %w", d.mnt, err)
	}
	if err := d.setFD(fd); err != nil {
		unix.Close(fd)
		return err
	}
	mi, err := findMount(d.mnt)
	if err != nil {
		return err
	}
	if mi == nil {
		return fmt.Errorf("fuseloop: %s not in mountinfo after mount", d.mnt)
	}
	d.conn = mi.connID()
	if err := d.answerInit(); err != nil {
		d.startServing() // so the undo (Abort) sees the reader stop
		return fmt.Errorf("fuseloop: INIT of %s: %w", d.mnt, err)
	}
	d.startServing()
	if err := d.disablePoll(); err != nil {
		return err
	}
	return nil
}

// disablePoll makes the kernel learn, before any Go code opens the disk
// file, that this server does not implement FUSE_POLL. The Go runtime
// registers every file it opens with epoll, from a thread that keeps its
// scheduler slot; on a FUSE file that sends FUSE_POLL to the server. When
// the server is this very process, a garbage collection waiting for that
// thread stops the goroutines that would answer: the process freezes.
// One epoll_ctl made here as an ordinary system call gets ENOSYS, after
// which the kernel never sends FUSE_POLL on this connection (fc->no_poll;
// it lasts as long as the connection, across handovers).
func (d *Device) disablePoll() error {
	fd, err := unix.Open(d.file, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("fuseloop: open %s: %w", d.file, err)
	}
	defer unix.Close(fd)
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("fuseloop: epoll_create1: %w", err)
	}
	defer unix.Close(ep)
	// The outcome does not matter (regular files may be refused with
	// EPERM); what matters is that the kernel asked once.
	// unix.EpollCtl is a raw system call (it keeps the scheduler slot): it
	// would freeze the process just like the runtime's own registration.
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
	_, _, _ = unix.Syscall6(unix.SYS_EPOLL_CTL, uintptr(ep), unix.EPOLL_CTL_ADD, uintptr(fd), uintptr(unsafe.Pointer(&ev)), 0, 0)
	runtime.KeepAlive(&ev)
	return nil
}

// setFD makes fd the device's connection descriptor and creates the
// eventfd that stops the reader.
func (d *Device) setFD(fd int) error {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("fuseloop: eventfd: %w", err)
	}
	d.fd, d.wakeFD = fd, efd
	d.hasFD = true
	return nil
}

// closeFDs closes our descriptors once nothing uses them (reader and
// handlers stopped). Closing ours never ends the connection while the
// holder (or the loop device's file, through the mount) keeps it.
func (d *Device) closeFDs() {
	if !d.hasFD {
		return
	}
	d.hasFD = false
	if f := d.pollFile.Swap(nil); f != nil {
		f.Close()
	}
	unix.Close(d.fd)
	unix.Close(d.wakeFD)
}

// stopReading makes the readers return: the flag stops a reader that is
// busy answering from reading more, the eventfd (which stays readable)
// wakes those waiting in poll(2).
func (d *Device) stopReading() {
	d.stopRead.Store(true)
	d.stopOnce.Do(func() { close(d.stopCh) })
	if f := d.pollFile.Load(); f != nil {
		_ = f.SetReadDeadline(time.Unix(1, 0)) // wakes the waiting reader, and stays
	}
	var one [8]byte
	le.PutUint64(one[:], 1)
	_, _ = unix.Write(d.wakeFD, one[:])
}

var errReadStopped = errors.New("reads stopped")

// waitReadable waits until a request can be read (true), the reader was
// told to stop (errReadStopped), the connection is gone (ENODEV), or the
// timeout passed (false, nil); timeout < 0 waits for ever.
func (d *Device) waitReadable(timeout time.Duration) (bool, error) {
	ms := -1
	if timeout >= 0 {
		ms = int(timeout / time.Millisecond)
	}
	fds := []unix.PollFd{{Fd: int32(d.fd), Events: unix.POLLIN}, {Fd: int32(d.wakeFD), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("poll /dev/fuse: %w", err)
		}
		if n == 0 {
			return false, nil
		}
		if fds[1].Revents != 0 {
			return false, errReadStopped
		}
		if fds[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
			// POLLERR: the connection was aborted (or the file never mounted).
			return false, fmt.Errorf("poll /dev/fuse: revents %#x: %w", fds[0].Revents, syscall.ENODEV)
		}
		if fds[0].Revents&unix.POLLIN != 0 {
			return true, nil
		}
	}
}

// readRequest reads one request into bp; 0 with a nil error means nothing
// was there after all (another reader took it, or it was interrupted).
func (d *Device) readRequest(bp *[]byte) (int, error) {
	n, err := unix.Read(d.fd, *bp)
	switch err {
	case nil:
		return n, nil
	case unix.EAGAIN, unix.EINTR, unix.ENOENT:
		return 0, nil
	}
	return 0, fmt.Errorf("read /dev/fuse: %w", err)
}

// answerInit reads the kernel's INIT and replies to it.
func (d *Device) answerInit() error {
	deadline := time.Now().Add(initTimeout)
	// Once: not kept in a pool (with node-wide buffers, a device's pool
	// would keep it until the next collections).
	bp := newRequestBuffer(readBufSize)
	var n int
	for n == 0 {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("no INIT within %s", initTimeout)
		}
		ok, err := d.waitReadable(left)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		if n, err = d.readRequest(bp); err != nil {
			return err
		}
	}
	h, ok := parseInHeader((*bp)[:n])
	if !ok || h.opcode != opcInit {
		return fmt.Errorf("first request is opcode %d (len %d), not INIT", h.opcode, n)
	}
	p, out, err := negotiateInit((*bp)[inHeaderSize:n])
	if err != nil {
		d.reply(h.unique, syscall.EPROTO)
		return fmt.Errorf("kernel offers FUSE %d.%d: %w", p.Major, p.KernelMinor, err)
	}
	d.init = p
	if err := d.reply(h.unique, 0, out); err != nil {
		return fmt.Errorf("reply: %w", err)
	}
	return nil
}

// startServing starts the reader; requests are answered until the
// connection goes away (unmount, abort) or a handover stops the reads.
func (d *Device) startServing() {
	d.openPoller()
	d.wg.Add(1)
	go d.serve()
}

// openPoller gives the readers a duplicate of the connection's descriptor
// registered with the Go runtime's poller, to wait for requests on.
//
// Why: a reader waiting in poll(2) holds a thread in a system call. Its
// scheduler slot (P) then has to be taken back by the runtime's monitor
// thread, which wakes every 20 µs while that keeps happening, and the
// reader's thread, woken by the next request, has to get a P back before
// it can answer. In a 4K random-read profile on Ceph those wake-ups were a
// third of this process's CPU (the monitor's sleeps alone a tenth). In the
// poller, waiting readers are parked goroutines: an idle thread sleeps in
// epoll for every descriptor at once (requests, the completions of the
// object store, ...) and runs the reader the request wakes itself.
//
// The descriptor is duplicated here, after mount(2) and INIT: registered
// before mount, epoll would never wake (see openFuseDev). Without the
// poller (registration refused) the readers poll(2) as before.
func (d *Device) openPoller() {
	dup, err := unix.FcntlInt(uintptr(d.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		d.log.V(2).Info("fuseloop: no duplicate descriptor for the poller; readers poll(2)", "name", d.name, "err", err)
		return
	}
	f := os.NewFile(uintptr(dup), "fuse:"+d.name) // non-blocking: registered with the poller
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		d.log.V(2).Info("fuseloop: descriptor not in the poller; readers poll(2)", "name", d.name, "err", err)
		f.Close()
		return
	}
	d.pollFile.Store(f)
}

// waitRequest waits until a request may be there to read (nil), the
// readers were told to stop (errReadStopped) or the connection is gone.
func (d *Device) waitRequest() error {
	f := d.pollFile.Load()
	if f == nil {
		_, err := d.waitReadable(-1)
		return err
	}
	rc, err := f.SyscallConn()
	if err == nil {
		// The check runs after the poller was armed for this wait, so a
		// request queued after the caller's read found none wakes it.
		err = rc.Read(func(fd uintptr) bool {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, perr := unix.Poll(pfd, 0)
			return perr != nil || n > 0 // readable, or an error a read reports
		})
	}
	if d.stopRead.Load() || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, os.ErrClosed) {
		return errReadStopped
	}
	if err != nil {
		// The poller reports an aborted connection (EPOLLERR) as "not
		// pollable": poll(2) names it (ENODEV), as without the poller.
		_, err = d.waitReadable(-1)
		return err
	}
	return nil
}

func (d *Device) getBuf() *[]byte { return d.bufs.Get().(*[]byte) }

// takeBuf takes a request buffer within the node-wide bound (nil once the
// readers are told to stop); giveBuf gives it, or a small one, back.
func (d *Device) takeBuf() *[]byte {
	if d.nodeBufs == nil {
		return d.getBuf()
	}
	select {
	case d.devBufs <- struct{}{}:
	case <-d.stopCh:
		return nil
	}
	b := d.nodeBufs.get(d.stopCh)
	if b == nil {
		<-d.devBufs
	}
	return b
}

func (d *Device) giveBuf(b *[]byte) {
	switch {
	case cap(*b) < readBufSize:
		d.smallBufs.Put(b)
	case d.nodeBufs != nil:
		d.nodeBufs.put(b)
		<-d.devBufs
	default:
		d.bufs.Put(b)
	}
}

// smallBufSize is the size of the buffers small requests move to.
const smallBufSize = payloadOff + 128<<10

// shrink moves a small request out of its max_write-sized buffer into a
// small one, so that a request held while it is answered (a write waiting
// at the node's memory bounds, a read waiting for the image) holds what it
// needs: 1 MiB writes that are not page-aligned reach us as two requests,
// the second a few KiB, and with 50 devices such buffers were a third of
// the heap. A READ replies in its request buffer (read): it moves only if
// its reply fits.
func (d *Device) shrink(bp *[]byte, n int) *[]byte {
	if n > smallBufSize {
		return bp
	}
	buf := *bp
	h, ok := parseInHeader(buf[:n])
	if !ok {
		return bp
	}
	if h.opcode == opcRead {
		body := buf[inHeaderSize:n]
		if len(body) < readInSize || payloadOff+int(le.Uint32(body[16:])) > smallBufSize {
			return bp
		}
	}
	sp := d.smallBufs.Get().(*[]byte)
	copy(*sp, buf[:n])
	d.giveBuf(bp)
	return sp
}

// serve runs the readers. It returns once reading stopped and every request
// read was answered.
//
// Readers answer the request they read themselves, and a reader about to
// answer starts another one if no other is waiting for requests: with the
// loop driver keeping many requests in flight there are as many readers as
// requests being answered plus one or two waiting, up to maxReaders. A
// reader exits after answering when enough others wait. Compared with one
// reader starting a goroutine per request, this saves the goroutine (and
// its stack growing again on every request: runtime.copystack was 4 % of a
// 4K random-read profile) and, while requests keep coming, the wait before
// each read: a reader waits (waitRequest) only when a read finds the queue
// empty.
// Requests are read from the one /dev/fuse descriptor (no
// FUSE_DEV_IOC_CLONE): a cloned descriptor ends the requests read through
// it when it is closed, and the holder could not keep them for a successor.
func (d *Device) serve() {
	defer d.wg.Done()
	defer close(d.served)
	if d.oneReader {
		d.readErr = d.readLoop()
	} else {
		d.nreaders.Store(1)
		d.waiting.Store(1)
		d.readers.Add(1)
		go d.reader()
		d.readers.Wait()
	}
	d.reqs.Wait()
	if d.handingOff.Load() {
		return
	}
	// After a teardown or a failure (the watchdog aborted the connection)
	// the reads are expected to stop.
	if !d.closing.Load() && !d.failed.Load() {
		err := fmt.Errorf("%w: %s: %v", ErrServerStopped, d.mnt, d.readErr)
		d.log.Error(err, "fuseloop: FUSE server stopped while the device was in use", "name", d.name, "device", d.loopPath)
		d.fail(err)
	}
}

// maxReaders bounds the readers of one device: the kernel keeps at most
// maxBackground asynchronous requests in flight, plus a few synchronous ones.
const maxReaders = maxBackground + 4

// reader reads requests and answers them until reading stops. It is
// counted in d.waiting when it starts.
func (d *Device) reader() {
	defer d.readers.Done()
	for {
		bp, n, err := d.nextRequest()
		if err != nil {
			d.readErrOnce.Do(func() { d.readErr = err })
			return
		}
		bp = d.shrink(bp, n)
		if d.waiting.Add(-1) == 0 {
			d.spawnReader()
		}
		d.reqs.Add(1)
		d.handle(bp, n)
		if d.waiting.Load() >= 2 {
			d.nreaders.Add(-1)
			return // enough others wait for requests
		}
		d.waiting.Add(1)
	}
}

// spawnReader starts another reader unless there are maxReaders.
func (d *Device) spawnReader() {
	for {
		n := d.nreaders.Load()
		if n >= maxReaders {
			return
		}
		if d.nreaders.CompareAndSwap(n, n+1) {
			break
		}
	}
	d.waiting.Add(1)
	d.readers.Add(1)
	go d.reader()
}

// nextRequest reads the next request into a buffer of the pool, waiting
// for one when the queue is empty. It fails with errReadStopped once
// stopReading was called and with the connection's error when it is gone.
// A reader waits without a buffer: it takes one to read and gives it back
// when the queue was empty, so idle readers hold no max_write-sized buffer
// (with 50 devices, buffers held by readers waiting for requests that were
// not coming were 450 MiB of the heap).
func (d *Device) nextRequest() (*[]byte, int, error) {
	for {
		if d.stopRead.Load() {
			return nil, 0, errReadStopped
		}
		bp := d.takeBuf()
		if bp == nil {
			return nil, 0, errReadStopped
		}
		n, err := d.readRequest(bp)
		if err == nil && n > 0 {
			return bp, n, nil
		}
		d.giveBuf(bp)
		if err != nil {
			return nil, 0, err
		}
		if err := d.waitRequest(); err != nil {
			return nil, 0, err
		}
	}
}

// readLoop is the single reader of Options.oneReader: it polls, reads,
// and answers each request in a goroutine of its own.
func (d *Device) readLoop() error {
	for {
		ok, err := d.waitReadable(-1)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		bp := d.takeBuf()
		if bp == nil {
			return errReadStopped
		}
		n, err := d.readRequest(bp)
		if err != nil || n == 0 {
			d.giveBuf(bp)
			if err != nil {
				return err
			}
			continue
		}
		d.reqs.Add(1)
		go d.handle(d.shrink(bp, n), n)
	}
}

// reply answers request unique. Errors mean the connection is gone or the
// request was interrupted; the caller has nothing to do about either.
func (d *Device) reply(unique uint64, errno syscall.Errno, body ...[]byte) error {
	var hdr [outHeaderSize]byte
	l := 0
	for _, b := range body {
		l += len(b)
	}
	outHeader(hdr[:], unique, errno, l)
	iov := make([][]byte, 0, 1+len(body))
	iov = append(iov, hdr[:])
	iov = append(iov, body...)
	return d.writeMsg(iov)
}

// writeMsg writes one message (a reply or a notification) in one writev.
// Replies are written concurrently; the kernel takes each whole.
func (d *Device) writeMsg(iov [][]byte) error {
	for {
		_, err := unix.Writev(d.fd, iov)
		if err != unix.EINTR {
			return err
		}
	}
}

// notify writes a notification.
func (d *Device) notify(code int32, body []byte) error {
	var hdr [outHeaderSize]byte
	notifyHeader(hdr[:], code, len(body))
	if len(body) == 0 {
		return d.writeMsg([][]byte{hdr[:]})
	}
	return d.writeMsg([][]byte{hdr[:], body})
}

// handle answers one request.
func (d *Device) handle(bp *[]byte, n int) {
	defer d.reqs.Done()
	defer d.giveBuf(bp)
	buf := *bp
	h, ok := parseInHeader(buf[:n])
	if !ok {
		d.log.Error(nil, "fuseloop: malformed request", "name", d.name, "len", n, "hdrLen", h.len, "opcode", h.opcode)
		if n >= inHeaderSize {
			_ = d.reply(h.unique, syscall.EIO)
		}
		return
	}
	if h.unique&uniqueResend != 0 {
		d.resent.Add(1)
	}
	d.counts[min(h.opcode, opcMax)].Add(1)
	body := buf[inHeaderSize:n]
	var err error
	switch h.opcode {
	case opcForget, opcBatchForget, opcInterrupt:
		// No reply. Node ids are fixed, so lookups need no counting;
		// interrupts come from no one (the loop driver sends no signals).
		return
	case opcInit:
		// INIT comes once per connection, before anything else.
		err = d.reply(h.unique, syscall.EPROTO)
	case opcDestroy, opcFlush, opcRelease, opcReleasedir:
		// FLUSH is close(2) of the file: durability is FSYNC's job.
		err = d.reply(h.unique, 0)
	case opcLookup:
		err = d.lookup(h, body)
	case opcGetattr:
		err = d.getattr(h, body)
	case opcSetattr:
		err = d.setattr(h, body)
	case opcOpen:
		err = d.open(h, body)
	case opcOpendir:
		// With NO_OPENDIR_SUPPORT the kernel takes ENOSYS as success.
		err = d.reply(h.unique, syscall.ENOSYS)
	case opcRead:
		err = d.read(h, body, buf)
	case opcWrite:
		err = d.write(h, body)
	case opcFsync:
		err = d.fsync(h, body)
	case opcFallocate:
		err = d.fallocate(h, body)
	case opcStatfs:
		err = d.statfs(h)
	default:
		// Directory changes, xattrs, locks...: not part of this
		// filesystem. ENOSYS lets the kernel stop asking where it can.
		err = d.reply(h.unique, syscall.ENOSYS)
	}
	if err != nil && !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ENODEV) {
		d.log.Error(err, "fuseloop: reply failed", "name", d.name, "opcode", h.opcode, "unique", h.unique)
	}
}

func (d *Device) diskMode() uint32 {
	if d.readOnly {
		return syscall.S_IFREG | 0o400
	}
	return syscall.S_IFREG | 0o600
}

func (d *Device) attrOf(b []byte, node uint64) bool {
	switch node {
	case rootNodeID:
		putAttr(b, rootNodeID, syscall.S_IFDIR|0o700, 0)
		le.PutUint32(b[64:], 2)
	case diskNodeID:
		putAttr(b, diskNodeID, d.diskMode(), d.size.Load())
	default:
		return false
	}
	return true
}

func (d *Device) lookup(h inHeader, body []byte) error {
	name := body
	if i := indexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	if h.nodeid != rootNodeID || string(name) != diskFileName {
		return d.reply(h.unique, syscall.ENOENT)
	}
	o := make([]byte, entryOutSize)
	le.PutUint64(o[0:], diskNodeID)
	putValid(o[16:], 32) // entry_valid, entry_valid_nsec
	putValid(o[24:], 36) // attr_valid, attr_valid_nsec
	d.attrOf(o[40:], diskNodeID)
	return d.reply(h.unique, 0, o)
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

func (d *Device) getattr(h inHeader, body []byte) error {
	o := make([]byte, attrOutSize)
	putValid(o[0:], 8)
	if !d.attrOf(o[16:], h.nodeid) {
		return d.reply(h.unique, syscall.ESTALE)
	}
	return d.reply(h.unique, 0, o)
}

func (d *Device) setattr(h inHeader, body []byte) error {
	if len(body) < setattrInSize {
		return d.reply(h.unique, syscall.EINVAL)
	}
	if h.nodeid == diskNodeID && le.Uint32(body[0:])&fattrSize != 0 && int64(le.Uint64(body[16:])) != d.size.Load() {
		return d.reply(h.unique, syscall.EPERM) // the size follows the backend (Resize), never truncate
	}
	return d.getattr(h, nil)
}

func (d *Device) open(h inHeader, body []byte) error {
	if len(body) < openInSize {
		return d.reply(h.unique, syscall.EINVAL)
	}
	switch h.nodeid {
	case diskNodeID:
	case rootNodeID:
		return d.reply(h.unique, syscall.EISDIR)
	default:
		return d.reply(h.unique, syscall.ESTALE)
	}
	if d.readOnly && le.Uint32(body[0:])&syscall.O_ACCMODE != syscall.O_RDONLY {
		return d.reply(h.unique, syscall.EROFS)
	}
	o := make([]byte, openOutSize)
	le.PutUint64(o[0:], diskFH)
	le.PutUint32(o[8:], fopenDirectIO|fopenParallelDirectWrites)
	return d.reply(h.unique, 0, o)
}

// checkFH: a request on the disk must carry the fixed handle; anything else
// would be a handle from a server with another layout.
func checkFH(h inHeader, fh uint64) syscall.Errno {
	if h.nodeid != diskNodeID {
		return syscall.ESTALE
	}
	if fh != diskFH {
		return syscall.EBADF
	}
	return 0
}

// checkDiskIn checks the input of a request on the disk file: it holds the
// request's fixed part (size bytes, the file handle first) and names the
// disk with its fixed handle.
func checkDiskIn(h inHeader, body []byte, size int) syscall.Errno {
	if len(body) < size {
		return syscall.EINVAL
	}
	return checkFH(h, le.Uint64(body[0:]))
}

// call runs a Backend call of kind over [off, off+length) under the
// watchdog and returns the errno to answer with: 0, or EIO when the device
// has failed or the call fails (logged by ioError).
func (d *Device) call(kind opKind, off, length int64, fn func() error) syscall.Errno {
	o := d.begin(kind, off, length)
	if o == nil {
		return syscall.EIO
	}
	err := fn()
	d.end(o)
	if err != nil {
		return d.ioError(kind, off, length, err)
	}
	return 0
}

func (d *Device) read(h inHeader, body, buf []byte) error {
	if e := checkDiskIn(h, body, readInSize); e != 0 {
		return d.reply(h.unique, e)
	}
	off := int64(le.Uint64(body[8:]))
	n := int64(le.Uint32(body[16:]))
	size := d.size.Load()
	if off < 0 || off > size {
		return d.reply(h.unique, syscall.EINVAL)
	}
	n = min(n, size-off) // a short read at the end, for tools reading the file
	if n == 0 {
		return d.reply(h.unique, 0)
	}
	var dest []byte
	if int64(len(buf)) >= payloadOff+n {
		dest = buf[payloadOff : payloadOff+n] // the request is done with: reuse its buffer
	} else {
		dest = make([]byte, n)
	}
	e := d.call(opRead, off, n, func() error {
		nr, err := d.b.ReadAt(d.bctx, dest, off)
		if err == io.EOF && nr == len(dest) {
			err = nil
		}
		if err == nil && nr != len(dest) {
			err = io.ErrUnexpectedEOF
		}
		return err
	})
	if e != 0 {
		return d.reply(h.unique, e)
	}
	return d.reply(h.unique, 0, dest)
}

func (d *Device) write(h inHeader, body []byte) error {
	if e := checkDiskIn(h, body, writeInSize); e != 0 {
		return d.reply(h.unique, e)
	}
	if d.readOnly {
		return d.reply(h.unique, syscall.EROFS)
	}
	off := int64(le.Uint64(body[8:]))
	n := int64(le.Uint32(body[16:]))
	data := body[writeInSize:]
	if int64(len(data)) != n || !d.inRange(off, n) {
		return d.reply(h.unique, syscall.EINVAL)
	}
	// A resent WRITE (unique has uniqueResend) is applied like any other:
	// it carries absolute offset and data, so applying it again after the
	// previous incarnation applied (or journaled) it leaves the same bytes.
	e := d.call(opWrite, off, n, func() error {
		nw, err := d.b.WriteAt(d.bctx, data, off)
		if err == nil && nw != len(data) {
			err = io.ErrShortWrite
		}
		return err
	})
	if e != 0 {
		return d.reply(h.unique, e)
	}
	out := make([]byte, writeOutSize)
	le.PutUint32(out[0:], uint32(len(data)))
	return d.reply(h.unique, 0, out)
}

// fsync is how the loop driver forwards REQ_OP_FLUSH (vfs_fsync on the file).
// It must never answer ENOSYS: the kernel would stop sending it, silently.
func (d *Device) fsync(h inHeader, body []byte) error {
	if e := checkDiskIn(h, body, fsyncInSize); e != 0 {
		return d.reply(h.unique, e)
	}
	if d.readOnly {
		return d.reply(h.unique, 0)
	}
	// A resent FSYNC only needs what the kernel had seen completed before
	// it to be durable: those writes were acknowledged, hence durable in
	// the journal of whichever incarnation acknowledged them.
	return d.reply(h.unique, d.call(opFlush, 0, 0, func() error { return d.b.Flush(d.bctx) }))
}

// fallocate serves the loop driver's discard (PUNCH_HOLE|KEEP_SIZE) and
// write-zeroes (ZERO_RANGE|KEEP_SIZE with REQ_NOUNMAP, else PUNCH_HOLE|KEEP_SIZE).
func (d *Device) fallocate(h inHeader, body []byte) error {
	if e := checkDiskIn(h, body, fallocInSize); e != 0 {
		return d.reply(h.unique, e)
	}
	if d.readOnly {
		return d.reply(h.unique, syscall.EROFS)
	}
	off, length, mode := le.Uint64(body[8:]), le.Uint64(body[16:]), le.Uint32(body[24:])
	var kind opKind
	switch mode &^ unix.FALLOC_FL_KEEP_SIZE {
	case unix.FALLOC_FL_PUNCH_HOLE:
		kind = opDiscard
	case unix.FALLOC_FL_ZERO_RANGE:
		kind = opWriteZeroes
	default:
		return d.reply(h.unique, syscall.EOPNOTSUPP)
	}
	if mode&unix.FALLOC_FL_PUNCH_HOLE != 0 && mode&unix.FALLOC_FL_KEEP_SIZE == 0 {
		return d.reply(h.unique, syscall.EOPNOTSUPP) // fallocate(2) requires KEEP_SIZE with PUNCH_HOLE
	}
	if off > 1<<62 || length > 1<<62 || !d.inRange(int64(off), int64(length)) {
		return d.reply(h.unique, syscall.EINVAL)
	}
	if length == 0 {
		return d.reply(h.unique, 0)
	}
	return d.reply(h.unique, d.call(kind, int64(off), int64(length), func() error {
		if kind == opDiscard {
			return d.b.Discard(d.bctx, int64(off), int64(length))
		}
		return d.b.WriteZeroes(d.bctx, int64(off), int64(length))
	}))
}

func (d *Device) statfs(h inHeader) error {
	o := make([]byte, statfsOutSize)
	blocks := uint64(d.size.Load()) / 4096
	le.PutUint64(o[0:], blocks)
	le.PutUint64(o[24:], 2) // files
	le.PutUint32(o[40:], 4096)
	le.PutUint32(o[44:], 255)
	le.PutUint32(o[48:], 4096)
	return d.reply(h.unique, 0, o)
}

// invalidateAttr tells the kernel to drop the disk's cached attributes
// (FUSE_NOTIFY_INVAL_INODE with off -1: attributes only).
func (d *Device) invalidateAttr() error {
	b := make([]byte, 24)
	le.PutUint64(b[0:], diskNodeID)
	le.PutUint64(b[8:], uint64(^uint64(0))) // off = -1
	return d.notify(notifyInvalInode, b)
}
