package fuseholder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Server is the holder. Its zero value is not usable: call Listen.
type Server struct {
	path    string
	ln      *net.UnixListener
	timeout time.Duration

	mu      sync.Mutex
	entries map[string]*held
	closed  bool

	wg sync.WaitGroup // connection handlers
}

type held struct {
	fd     int // our descriptor (raw: never handed to the runtime poller)
	ringFD int // the write-back ring's memfd, or -1
	meta   json.RawMessage
	since  time.Time
}

func (e *held) close() {
	unix.Close(e.fd)
	if e.ringFD >= 0 {
		unix.Close(e.ringFD)
	}
}

// Listen creates the holder's socket at path (mode 0600; a stale socket
// nobody answers on is replaced). The directory must exist.
func Listen(ctx context.Context, path string) (*Server, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("fuseholder: socket path %q is not absolute", path)
	}
	if _, err := os.Lstat(path); err == nil {
		c, err := net.DialTimeout("unixpacket", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("fuseholder: a holder already answers at %s", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("fuseholder: remove stale socket: %w", err)
		}
		klog.FromContext(ctx).Info("fuseholder: replaced a stale socket", "socket", path)
	}
	old := unix.Umask(0o077)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("fuseholder: listen: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	return &Server{path: path, ln: ln, timeout: DefaultTimeout, entries: map[string]*held{}}, nil
}

// Serve answers requests until ctx is done or Close is called. It returns
// nil then.
func (s *Server) Serve(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	stop := context.AfterFunc(ctx, func() { s.ln.Close() })
	defer stop()
	logger.Info("fuseholder: serving", "socket", s.path)
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				s.wg.Wait()
				return nil
			}
			logger.Error(err, "fuseholder: accept")
			time.Sleep(10 * time.Millisecond)
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handleConn(klog.NewContext(ctx, logger), c)
		}()
	}
}

// Close stops serving and closes every held file: connections no other
// process holds are then aborted by the kernel. For tests and shutdown.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	for k, e := range s.entries {
		e.close()
		delete(s.entries, k)
	}
	s.mu.Unlock()
	s.ln.Close()
	s.wg.Wait()
}

// Len is the number of connections held.
func (s *Server) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries)
}

// handleConn answers one request; the whole exchange is bounded by the
// server's timeout, so a client that sends nothing cannot hold it.
func (s *Server) handleConn(ctx context.Context, c *net.UnixConn) {
	defer c.Close()
	logger := klog.FromContext(ctx)
	_ = c.SetDeadline(time.Now().Add(s.timeout))
	if err := checkPeer(c); err != nil {
		logger.Info("fuseholder: refused a client", "err", err)
		_ = writeMsg(c, response{Code: codeRejected, Error: err.Error()})
		return
	}
	req, fds, err := readMsg[request](c)
	if err != nil {
		logger.Info("fuseholder: bad request", "err", err)
		closeFDs(fds)
		_ = writeMsg(c, response{Code: codeProtocol, Error: err.Error()})
		return
	}
	resp, sendFDs := s.do(ctx, req, fds)
	if err := writeMsg(c, resp, sendFDs...); err != nil {
		logger.Info("fuseholder: reply failed", "op", req.Op, "key", req.Key, "err", err)
	}
	closeFDs(sendFDs)
}

// do performs a request. fds are the descriptors that came with it (do
// owns them). It returns the response and the descriptors to send, which
// the caller closes.
func (s *Server) do(ctx context.Context, req request, fds []int) (response, []int) {
	logger := klog.FromContext(ctx).WithValues("op", req.Op, "key", req.Key)
	reject := func(format string, args ...any) (response, []int) {
		closeFDs(fds)
		msg := fmt.Sprintf(format, args...)
		logger.Info("fuseholder: rejected", "reason", msg)
		return response{Code: codeRejected, Error: msg}, nil
	}
	if req.Op != opList {
		if err := ValidKey(req.Key); err != nil {
			return reject("%v", err)
		}
	}
	if req.Op != opPut && len(fds) > 0 {
		return reject("op %q takes no file", req.Op)
	}
	switch req.Op {
	case opPut:
		if len(fds) != 1 && len(fds) != 2 {
			return reject("put needs one file (and optionally a write-back ring), got %d", len(fds))
		}
		if len(req.Meta) == 0 || len(req.Meta) > MaxMetaSize || !json.Valid(req.Meta) {
			return reject("metadata must be JSON of 1..%d bytes", MaxMetaSize)
		}
		if err := checkFuseFD(fds[0]); err != nil {
			return reject("%v", err)
		}
		ringFD := -1
		if len(fds) == 2 {
			if err := checkRingFD(fds[1]); err != nil {
				return reject("%v", err)
			}
			ringFD = fds[1]
		}
		s.mu.Lock()
		old := s.entries[req.Key]
		s.entries[req.Key] = &held{fd: fds[0], ringFD: ringFD, meta: req.Meta, since: time.Now()}
		s.mu.Unlock()
		// The new file is held before the old one closes: when both are the
		// same connection (a successor putting it again) it never drops.
		if old != nil {
			old.close()
		}
		logger.Info("fuseholder: holding", "replaced", old != nil, "alive", alive(fds[0]), "ring", ringFD >= 0)
		return response{}, nil
	case opGet:
		s.mu.Lock()
		defer s.mu.Unlock()
		e := s.entries[req.Key]
		if e == nil {
			return response{Code: codeNotFound, Error: fmt.Sprintf("no connection held for %q", req.Key)}, nil
		}
		nfd, err := unix.FcntlInt(uintptr(e.fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return response{Code: codeProtocol, Error: fmt.Sprintf("dup: %v", err)}, nil
		}
		if e.ringFD < 0 {
			return response{Meta: e.meta, Alive: alive(e.fd)}, []int{nfd}
		}
		rfd, err := unix.FcntlInt(uintptr(e.ringFD), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			unix.Close(nfd)
			return response{Code: codeProtocol, Error: fmt.Sprintf("dup: %v", err)}, nil
		}
		return response{Meta: e.meta, Alive: alive(e.fd), Ring: true}, []int{nfd, rfd}
	case opDrop:
		s.mu.Lock()
		e := s.entries[req.Key]
		delete(s.entries, req.Key)
		s.mu.Unlock()
		if e == nil {
			return response{Code: codeNotFound, Error: fmt.Sprintf("no connection held for %q", req.Key)}, nil
		}
		e.close()
		logger.Info("fuseholder: dropped")
		return response{}, nil
	case opList:
		s.mu.Lock()
		defer s.mu.Unlock()
		out := make([]Entry, 0, len(s.entries))
		for k, e := range s.entries {
			out = append(out, Entry{Key: k, Meta: e.meta, Alive: alive(e.fd), Since: e.since, Ring: e.ringFD >= 0})
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
		return response{Entries: out}, nil
	}
	return reject("unknown op %q", req.Op)
}

// checkPeer accepts only clients of the holder's own user.
func checkPeer(c *net.UnixConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	if int(cred.Uid) != os.Geteuid() {
		return fmt.Errorf("peer uid %d is not %d", cred.Uid, os.Geteuid())
	}
	return nil
}

// checkFuseFD: the holder keeps only /dev/fuse files (misc 10:229) open
// read-write; anything else is refused.
func checkFuseFD(fd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("fstat: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 10 || unix.Minor(st.Rdev) != 229 {
		return fmt.Errorf("the file is not /dev/fuse (mode %#o, rdev %d:%d)", st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return fmt.Errorf("F_GETFL: %w", err)
	}
	if fl&unix.O_ACCMODE != unix.O_RDWR {
		return errors.New("the /dev/fuse file is not open read-write")
	}
	return nil
}

// checkRingFD: a write-back ring is a memfd whose size is sealed; the
// holder only keeps it (it never maps it).
func checkRingFD(fd int) error {
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return fmt.Errorf("the second file is not a memfd (a write-back ring): F_GET_SEALS: %w", err)
	}
	if seals&(unix.F_SEAL_SHRINK|unix.F_SEAL_GROW) != unix.F_SEAL_SHRINK|unix.F_SEAL_GROW {
		return fmt.Errorf("the write-back ring's size is not sealed (seals %#x)", seals)
	}
	return nil
}

// alive: the kernel reports POLLERR for an aborted (or never mounted)
// connection.
func alive(fd int) bool {
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if _, err := unix.Poll(p, 0); err != nil {
		return false
	}
	return p[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) == 0
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// readMsg reads one message with its descriptors (at most 4 accepted; any
// beyond, or a truncated message, is an error and all are closed).
func readMsg[T any](c *net.UnixConn) (T, []int, error) {
	var v T
	buf := make([]byte, maxMsgSize)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return v, nil, fmt.Errorf("%w: read: %v", ErrUnavailable, err)
	}
	var fds []int
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return v, nil, fmt.Errorf("%w: control message: %v", ErrProtocol, err)
		}
		for _, m := range msgs {
			got, err := unix.ParseUnixRights(&m)
			if err == nil {
				fds = append(fds, got...)
			}
		}
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		return v, fds, fmt.Errorf("%w: message or its files truncated (flags %#x)", ErrProtocol, flags)
	}
	if n == 0 {
		return v, fds, fmt.Errorf("%w: empty message", ErrProtocol)
	}
	if err := json.Unmarshal(buf[:n], &v); err != nil {
		return v, fds, fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	return v, fds, nil
}

// writeMsg writes one message, with fds attached.
func writeMsg(c *net.UnixConn, v any, fds ...int) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) > maxMsgSize {
		return fmt.Errorf("%w: message of %d bytes", ErrProtocol, len(b))
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err = c.WriteMsgUnix(b, oob, nil)
	if err != nil && errors.Is(err, syscall.EPIPE) {
		return fmt.Errorf("%w: peer went away", ErrUnavailable)
	}
	return err
}
