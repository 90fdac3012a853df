package local

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Watches are registered in the directory, one empty file per watch:
// pools/<id>/watch/<escaped oid>/<client id>.<nonce>.<cookie>. A notifier
// reads the object's registrations and delivers to each watcher: directly if
// the watcher is a client of its own process, else over the watcher's unix
// socket (clients/<nonce>.sock). A watcher whose client no longer holds its
// liveness flock (clients/<nonce>.lock) is dead: it counts as timed out and
// its registration is removed.

type watchReg struct {
	clientID uint64
	nonce    uint32
	cookie   uint64
}

func (r watchReg) fileName() string {
	return fmt.Sprintf("%d.%d.%d", r.clientID, r.nonce, r.cookie)
}

func parseWatchReg(name string) (watchReg, bool) {
	f := strings.Split(name, ".")
	if len(f) != 3 {
		return watchReg{}, false
	}
	id, err1 := strconv.ParseUint(f[0], 10, 64)
	n, err2 := strconv.ParseUint(f[1], 10, 32)
	ck, err3 := strconv.ParseUint(f[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return watchReg{}, false
	}
	return watchReg{clientID: id, nonce: uint32(n), cookie: ck}, true
}

func (r watchReg) info() objstore.WatcherInfo {
	return objstore.WatcherInfo{Client: objstore.ClientInfo{ID: r.clientID, Addr: addrOf(r.nonce)}, Cookie: r.cookie}
}

func (p *pool) watchDir(oid string) string {
	esc, _ := escapeName(oid)
	return filepath.Join(p.dir, "watch", esc)
}

func (p *pool) readWatchRegs(oid string) ([]watchReg, error) {
	ents, err := os.ReadDir(p.watchDir(oid))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var regs []watchReg
	for _, e := range ents {
		if r, ok := parseWatchReg(e.Name()); ok {
			regs = append(regs, r)
		}
	}
	return regs, nil
}

// walkWatchRegs calls fn for every watch registration of every pool.
func (c *Cluster) walkWatchRegs(fn func(path string, reg watchReg)) {
	pools, _ := os.ReadDir(filepath.Join(c.dir, "pools"))
	for _, pd := range pools {
		wd := filepath.Join(c.dir, "pools", pd.Name(), "watch")
		objs, _ := os.ReadDir(wd)
		for _, od := range objs {
			regs, _ := os.ReadDir(filepath.Join(wd, od.Name()))
			for _, e := range regs {
				if r, ok := parseWatchReg(e.Name()); ok {
					fn(filepath.Join(wd, od.Name(), e.Name()), r)
				}
			}
		}
	}
}

func (p *pool) objectExists(oid string) (bool, error) {
	_, err := os.Stat(p.paths(oid).data)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// checkWatched fails op on oid if this client is blocklisted or oid does
// not exist (ENOENT): what watch, list-watchers and notify check first.
func (p *pool) checkWatched(op, oid string) error {
	if p.c.blocklisted() {
		return blocklistedErr(op, oid)
	}
	ok, err := p.objectExists(oid)
	if err == nil && !ok {
		err = syscall.ENOENT
	}
	return stepErr(op, oid, err)
}

// watch is one registered watch of this client.
type watch struct {
	c       *Cluster
	oid     string
	cookie  uint64
	regPath string

	// disp calls the handler, one event at a time, and keeps the state:
	// lost (reported once), closed.
	disp *objstore.Dispatcher
}

// Watch registers h for notifications sent to oid (ENOENT if oid does not exist).
func (p *pool) Watch(ctx context.Context, oid string, h objstore.WatchHandler) (objstore.Watch, error) {
	c := p.c
	if err := c.enter(); err != nil {
		return nil, &objstore.OpError{Op: "watch", OID: oid, Err: err}
	}
	defer c.exit()
	if oid == "" || h == nil {
		return nil, &objstore.OpError{Op: "watch", OID: oid, Err: syscall.EINVAL}
	}
	if err := ctx.Err(); err != nil {
		return nil, &objstore.OpError{Op: "watch", OID: oid, Err: err}
	}
	if err := p.checkWatched("watch", oid); err != nil {
		return nil, err
	}
	w := &watch{c: c, oid: oid, cookie: c.nextCookie.Add(1)}
	reg := watchReg{clientID: c.client.ID, nonce: c.nonce, cookie: w.cookie}
	dir := p.watchDir(oid)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, stepErr("watch", oid, err)
	}
	w.regPath = filepath.Join(dir, reg.fileName())
	f, err := os.OpenFile(w.regPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, stepErr("watch", oid, err)
	}
	f.Close()
	c.wg.Add(1)
	w.disp = objstore.NewDispatcher(ctx, h, c.wg.Done)
	c.watchMu.Lock()
	c.watches[w.cookie] = w
	c.watchMu.Unlock()
	return w, nil
}

func (w *watch) Cookie() uint64 { return w.cookie }

// Check returns nil while the watch is established.
func (w *watch) Check() error {
	closed, lost := w.disp.State()
	if closed {
		return &objstore.OpError{Op: "watch-check", OID: w.oid, Err: syscall.ENOTCONN}
	}
	if lost != nil {
		return &objstore.OpError{Op: "watch-check", OID: w.oid, Err: lost}
	}
	return nil
}

// Close unregisters the watch and waits for a running handler call (unless
// ctx is that call's: Close from the watch's own handler).
func (w *watch) Close(ctx context.Context) error {
	if !w.disp.Stop() {
		return nil
	}
	os.Remove(w.regPath)
	os.Remove(filepath.Dir(w.regPath)) // only if empty
	w.c.watchMu.Lock()
	delete(w.c.watches, w.cookie)
	w.c.watchMu.Unlock()
	w.disp.Wait(ctx)
	return nil
}

// lose marks the watch lost and reports err to the handler once.
func (w *watch) lose(err error) {
	if w.disp.Lost(err) {
		os.Remove(w.regPath)
	}
}

// deliver queues a notification; false if the watch is not established.
func (w *watch) deliver(n *objstore.Notification) bool {
	return w.disp.Notify(n)
}

// watchList returns this client's registered watches, to act on without
// holding watchMu (closing or losing one takes it again).
func (c *Cluster) watchList() []*watch {
	c.watchMu.Lock()
	defer c.watchMu.Unlock()
	return slices.Collect(maps.Values(c.watches))
}

// deliverLocal hands a notification to this client's watch cookie.
func (c *Cluster) deliverLocal(cookie uint64, n *objstore.Notification) bool {
	c.watchMu.Lock()
	w := c.watches[cookie]
	c.watchMu.Unlock()
	return w != nil && w.deliver(n)
}

// maintain reports this client's watches lost when it is blocklisted or
// when their registration disappeared.
func (c *Cluster) maintain() {
	defer c.wg.Done()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for i := 1; ; i++ {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		bl := c.blocklisted()
		if !bl && i%20 != 0 {
			continue
		}
		ws := c.watchList()
		for _, w := range ws {
			if bl {
				w.lose(objstore.ErrBlocklisted)
			} else if _, err := os.Stat(w.regPath); errors.Is(err, fs.ErrNotExist) && w.Check() == nil {
				w.lose(syscall.ENOTCONN)
			}
		}
	}
}

// ListWatchers returns the live watches registered on oid.
func (p *pool) ListWatchers(ctx context.Context, oid string) ([]objstore.WatcherInfo, error) {
	c := p.c
	if err := c.enter(); err != nil {
		return nil, &objstore.OpError{Op: "list-watchers", OID: oid, Err: err}
	}
	defer c.exit()
	if err := p.checkWatched("list-watchers", oid); err != nil {
		return nil, err
	}
	regs, err := p.readWatchRegs(oid)
	if err != nil {
		return nil, stepErr("list-watchers", oid, err)
	}
	out := []objstore.WatcherInfo{}
	alive := map[uint32]bool{}
	for _, r := range regs {
		a, ok := alive[r.nonce]
		if !ok {
			a = c.clientAlive(r.nonce)
			alive[r.nonce] = a
		}
		if !a {
			os.Remove(filepath.Join(p.watchDir(oid), r.fileName()))
			continue
		}
		out = append(out, r.info())
	}
	return out, nil
}

type notifyReply struct {
	reg   watchReg
	reply []byte
	gone  bool // the watch no longer exists: neither acked nor timed out
}

// Notify sends payload to every watcher of oid and waits up to timeout for
// their acks. As librados does, it fails with ETIMEDOUT (and still returns
// the result) if some watcher did not ack in time.
func (p *pool) Notify(ctx context.Context, oid string, payload []byte, timeout time.Duration) (objstore.NotifyResult, error) {
	c := p.c
	var res objstore.NotifyResult
	if err := c.enter(); err != nil {
		return res, &objstore.OpError{Op: "notify", OID: oid, Err: err}
	}
	defer c.exit()
	if err := p.checkWatched("notify", oid); err != nil {
		return res, err
	}
	if timeout <= 0 {
		timeout = c.opts.DefaultNotifyTimeout
	}
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	regs, err := p.readWatchRegs(oid)
	if err != nil {
		return res, stepErr("notify", oid, err)
	}
	notifyID := uint64(c.nonce)<<32 | c.nextNotify.Add(1)&0xffffffff
	replies := make(chan notifyReply, len(regs))
	byClient := map[uint32][]watchReg{}
	for _, r := range regs {
		byClient[r.nonce] = append(byClient[r.nonce], r)
	}
	answered := map[watchReg]bool{}
	var timedOut []watchReg
	var remote sync.WaitGroup
	var conns []net.Conn
	for nonce, group := range byClient {
		if tc := c.liveClient(nonce); tc != nil {
			for _, r := range group {
				n := objstore.NewNotification(notifyID, r.cookie, c.client.ID, payload, func(reply []byte) {
					replies <- notifyReply{reg: r, reply: reply}
				})
				if !tc.deliverLocal(r.cookie, n) {
					replies <- notifyReply{reg: r, gone: true}
				}
			}
			continue
		}
		if !c.clientAlive(nonce) {
			for _, r := range group {
				os.Remove(filepath.Join(p.watchDir(oid), r.fileName()))
				timedOut = append(timedOut, r)
				answered[r] = true
			}
			continue
		}
		conn, err := c.dialClient(ctx, nonce)
		if err != nil {
			continue // alive but unreachable: it times out
		}
		conns = append(conns, conn)
		var buf []byte
		for _, r := range group {
			buf = appendFrame(buf, frameNotify, notifyID, r.cookie, c.client.ID, payload)
		}
		conn.SetWriteDeadline(time.Now().Add(timeout))
		if _, err := conn.Write(buf); err != nil {
			continue
		}
		remote.Add(1)
		go func(conn net.Conn, group []watchReg) {
			defer remote.Done()
			readReplies(conn, notifyID, group, replies)
		}(conn, group)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var ctxErr error
wait:
	for len(answered) < len(regs) {
		select {
		case r := <-replies:
			if answered[r.reg] {
				continue
			}
			answered[r.reg] = true
			if !r.gone {
				res.Acks = append(res.Acks, objstore.NotifyAck{Watcher: r.reg.info(), Reply: r.reply})
			}
		case <-timer.C:
			break wait
		case <-ctx.Done():
			ctxErr = ctx.Err()
			break wait
		}
	}
	for _, conn := range conns {
		conn.Close()
	}
	remote.Wait()
	if ctxErr != nil {
		return res, &objstore.OpError{Op: "notify", OID: oid, Err: ctxErr}
	}
	for _, r := range regs {
		if !answered[r] {
			timedOut = append(timedOut, r)
		}
	}
	for _, r := range timedOut {
		res.TimedOut = append(res.TimedOut, r.info())
	}
	if len(res.TimedOut) > 0 {
		return res, &objstore.OpError{Op: "notify", OID: oid, Err: objstore.ErrTimedOut}
	}
	return res, nil
}

// --- the socket between clients ---

const (
	frameNotify  = 1 // notifyID, cookie, notifierID, payload
	frameAck     = 2 // notifyID, cookie, 0, reply
	frameNoWatch = 3 // notifyID, cookie
	maxFrame     = 256 << 20
)

func appendFrame(b []byte, typ byte, notifyID, cookie, notifier uint64, payload []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(1+24+len(payload)))
	b = append(b, typ)
	b = binary.LittleEndian.AppendUint64(b, notifyID)
	b = binary.LittleEndian.AppendUint64(b, cookie)
	b = binary.LittleEndian.AppendUint64(b, notifier)
	return append(b, payload...)
}

type frame struct {
	typ                        byte
	notifyID, cookie, notifier uint64
	payload                    []byte
}

func readFrame(r io.Reader) (frame, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return frame{}, err
	}
	n := binary.LittleEndian.Uint32(hdr[:])
	if n < 25 || n > maxFrame {
		return frame{}, fmt.Errorf("bad frame length %d", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return frame{}, err
	}
	return frame{
		typ:      b[0],
		notifyID: binary.LittleEndian.Uint64(b[1:]),
		cookie:   binary.LittleEndian.Uint64(b[9:]),
		notifier: binary.LittleEndian.Uint64(b[17:]),
		payload:  b[25:],
	}, nil
}

func readReplies(conn net.Conn, notifyID uint64, group []watchReg, out chan<- notifyReply) {
	byCookie := map[uint64]watchReg{}
	for _, r := range group {
		byCookie[r.cookie] = r
	}
	br := bufio.NewReader(conn)
	for len(byCookie) > 0 {
		f, err := readFrame(br)
		if err != nil {
			return
		}
		r, ok := byCookie[f.cookie]
		if !ok || f.notifyID != notifyID {
			continue
		}
		delete(byCookie, f.cookie)
		switch f.typ {
		case frameAck:
			out <- notifyReply{reg: r, reply: f.payload}
		case frameNoWatch:
			out <- notifyReply{reg: r, gone: true}
		}
	}
}

// sockAddr is the unix socket of client nonce: a file in the directory, or
// an abstract socket when that path is too long for sun_path.
func (c *Cluster) sockAddr(nonce uint32) string {
	p := c.clientFile(nonce, ".sock")
	if len(p) < 100 {
		return p
	}
	sum := sha256.Sum256([]byte(c.dir))
	return "@csi-rbdj-local-" + hex.EncodeToString(sum[:8]) + "-" + strconv.FormatUint(uint64(nonce), 10)
}

func (c *Cluster) dialClient(ctx context.Context, nonce uint32) (net.Conn, error) {
	var d net.Dialer
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return d.DialContext(ctx, "unix", c.sockAddr(nonce))
}

// server accepts notifications for this client's watches.
type server struct {
	c     *Cluster
	ln    *net.UnixListener
	path  string // socket file to remove on close ("" for abstract)
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	done  bool
}

func (c *Cluster) listen() (*server, error) {
	addr := c.sockAddr(c.nonce)
	os.Remove(addr)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: addr, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	ln.SetUnlinkOnClose(false)
	s := &server{c: c, ln: ln, conns: map[net.Conn]struct{}{}}
	if !strings.HasPrefix(addr, "@") {
		s.path = addr
	}
	c.wg.Add(1)
	go s.accept()
	return s, nil
}

func (s *server) accept() {
	defer s.c.wg.Done()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.done {
			s.mu.Unlock()
			conn.Close()
			return
		}
		s.conns[conn] = struct{}{}
		s.mu.Unlock()
		s.c.wg.Add(1)
		go s.serve(conn)
	}
}

func (s *server) serve(conn net.Conn) {
	defer s.c.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
		conn.Close()
	}()
	var wmu sync.Mutex
	send := func(b []byte) {
		wmu.Lock()
		defer wmu.Unlock()
		conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		conn.Write(b)
	}
	br := bufio.NewReader(conn)
	for {
		f, err := readFrame(br)
		if err != nil {
			return
		}
		if f.typ != frameNotify {
			continue
		}
		n := objstore.NewNotification(f.notifyID, f.cookie, f.notifier, f.payload, func(reply []byte) {
			send(appendFrame(nil, frameAck, f.notifyID, f.cookie, 0, reply))
		})
		if !s.c.deliverLocal(f.cookie, n) {
			send(appendFrame(nil, frameNoWatch, f.notifyID, f.cookie, 0, nil))
		}
	}
}

func (s *server) close() {
	s.mu.Lock()
	s.done = true
	for conn := range s.conns {
		conn.Close()
	}
	s.mu.Unlock()
	s.ln.Close()
}
