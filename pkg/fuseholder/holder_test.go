package fuseholder

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func startServer(t *testing.T, timeout ...time.Duration) (*Server, *Client) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "holder.sock")
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Listen(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	if len(timeout) > 0 {
		s.timeout = timeout[0] // before Serve: handlers read it
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ctx) }()
	t.Cleanup(func() { cancel(); s.Close(); <-done })
	return s, &Client{Path: sock, Timeout: 2 * time.Second}
}

func openFuse(t *testing.T) *os.File {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for /dev/fuse")
	}
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no /dev/fuse: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func sameFile(t *testing.T, a, b *os.File) bool {
	t.Helper()
	// Same open file description: a flag set through one shows through the other.
	fa, _ := unix.FcntlInt(a.Fd(), unix.F_GETFL, 0)
	if _, err := unix.FcntlInt(a.Fd(), unix.F_SETFL, fa^unix.O_APPEND); err != nil {
		t.Fatal(err)
	}
	fb, _ := unix.FcntlInt(b.Fd(), unix.F_GETFL, 0)
	_, _ = unix.FcntlInt(a.Fd(), unix.F_SETFL, fa)
	return fb&unix.O_APPEND != fa&unix.O_APPEND
}

func TestPutGetListDrop(t *testing.T) {
	ctx := context.Background()
	s, c := startServer(t)
	f := openFuse(t)
	meta := []byte(`{"name":"vol-1","loopIndex":3}`)
	if err := c.Put(ctx, "vol-1", f, meta); err != nil {
		t.Fatal(err)
	}
	if s.Len() != 1 {
		t.Fatalf("held %d", s.Len())
	}
	g, m, alive, err := c.Get(ctx, "vol-1")
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if string(m) != string(meta) {
		t.Errorf("meta %s, want %s", m, meta)
	}
	if alive {
		t.Errorf("an unmounted /dev/fuse reported alive")
	}
	if !sameFile(t, f, g) {
		t.Errorf("Get returned another open file, not the one put")
	}
	// Put again replaces (same key, a new file).
	f2 := openFuse(t)
	if err := c.Put(ctx, "vol-1", f2, []byte(`{"v":2}`)); err != nil {
		t.Fatal(err)
	}
	l, err := c.List(ctx)
	if err != nil || len(l) != 1 || l[0].Key != "vol-1" || string(l[0].Meta) != `{"v":2}` {
		t.Fatalf("List: %+v %v", l, err)
	}
	if err := c.Drop(ctx, "vol-1"); err != nil {
		t.Fatal(err)
	}
	if err := c.Drop(ctx, "vol-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Drop: %v, want ErrNotFound", err)
	}
	if _, _, _, err := c.Get(ctx, "vol-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Drop: %v, want ErrNotFound", err)
	}
}

func TestRejects(t *testing.T) {
	ctx := context.Background()
	s, c := startServer(t)
	f := openFuse(t)
	pr, pw, _ := os.Pipe()
	defer pr.Close()
	defer pw.Close()
	ro, err := os.Open("/dev/fuse")
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	for _, tc := range []struct {
		name string
		key  string
		f    *os.File
		meta []byte
		want error
	}{
		{"pipe", "k", pr, []byte(`{}`), ErrRejected},
		{"regular file", "k", ro, []byte(`{}`), ErrRejected},
		{"bad key", "../x", f, []byte(`{}`), ErrRejected},
		{"empty key", "", f, []byte(`{}`), ErrRejected},
		{"meta not JSON", "k", f, []byte(`{nope`), ErrRejected},
		{"meta too big", "k", f, []byte(`"` + strings.Repeat("a", MaxMetaSize) + `"`), ErrRejected},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "regular file" {
				tc.f, _ = os.Open("/etc/hostname")
				defer tc.f.Close()
			}
			err := c.Put(ctx, tc.key, tc.f, tc.meta)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Put: %v, want %v", err, tc.want)
			}
			t.Logf("%v", err)
		})
	}
	if s.Len() != 0 {
		t.Errorf("holder kept %d files from rejected puts", s.Len())
	}
}

// Raw protocol abuse: garbage, a file with a get, a client that sends
// nothing. The holder answers or hangs up within its timeout, closes
// every file it was sent, and keeps serving.
func TestBadMessages(t *testing.T) {
	ctx := context.Background()
	s, c := startServer(t, 300*time.Millisecond)
	f := openFuse(t)
	send := func(msg []byte, fd int) (response, error) {
		conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: c.Path, Net: "unixpacket"})
		if err != nil {
			return response{}, err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
		var oob []byte
		if fd >= 0 {
			oob = unix.UnixRights(fd)
		}
		if msg != nil {
			if _, _, err := conn.WriteMsgUnix(msg, oob, nil); err != nil {
				return response{}, err
			}
		}
		r, fds, err := readMsg[response](conn)
		closeFDs(fds)
		return r, err
	}
	r, err := send([]byte("garbage"), -1)
	if err != nil || r.Code != codeProtocol {
		t.Errorf("garbage: %+v %v", r, err)
	}
	b, _ := json.Marshal(request{Op: opGet, Key: "k"})
	r, err = send(b, int(f.Fd()))
	if err != nil || r.Code != codeRejected {
		t.Errorf("get with a file: %+v %v", r, err)
	}
	b, _ = json.Marshal(request{Op: "explode", Key: "k"})
	r, err = send(b, -1)
	if err != nil || r.Code != codeRejected {
		t.Errorf("unknown op: %+v %v", r, err)
	}
	start := time.Now()
	_, err = send(nil, -1) // says nothing: the holder hangs up after its timeout
	if err == nil || time.Since(start) > 1500*time.Millisecond {
		t.Errorf("silent client: %v after %s", err, time.Since(start))
	}
	if s.Len() != 0 {
		t.Errorf("holder kept %d files", s.Len())
	}
	if _, err := c.List(ctx); err != nil {
		t.Errorf("holder stopped serving: %v", err)
	}
}

// A missing holder, a dead one (socket left behind), a stuck one: the
// client fails with ErrUnavailable within its timeout.
func TestUnavailable(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c := &Client{Path: filepath.Join(dir, "missing.sock"), Timeout: 500 * time.Millisecond}
	if _, err := c.List(ctx); !errors.Is(err, ErrUnavailable) {
		t.Errorf("missing: %v", err)
	}
	// A stuck holder: accepts and never answers.
	stuck := filepath.Join(dir, "stuck.sock")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: stuck, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	c = &Client{Path: stuck, Timeout: 500 * time.Millisecond}
	start := time.Now()
	if _, _, _, err := c.Get(ctx, "k"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("stuck: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("stuck holder held the client %s", d)
	}
	// A dead holder: the socket file stays, nobody listens.
	ln.Close()
	for _, c := range held {
		c.Close()
	}
	if _, err := os.Stat(stuck); err != nil {
		// ListenUnix unlinks on close; recreate a stale socket file.
		ln2, _ := net.ListenUnix("unixpacket", &net.UnixAddr{Name: stuck, Net: "unixpacket"})
		ln2.SetUnlinkOnClose(false)
		ln2.Close()
	}
	if _, err := c.List(ctx); !errors.Is(err, ErrUnavailable) {
		t.Errorf("dead: %v", err)
	}
	// A new holder replaces the stale socket.
	s, err := Listen(ctx, stuck)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	s.Close()
	// A context already cancelled.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.List(cctx); !errors.Is(err, ErrUnavailable) {
		t.Errorf("cancelled: %v", err)
	}
}

// The holder dies: the file it held goes with it (the kernel would abort
// the connection if no one else held it); the client sees ErrUnavailable.
func TestHolderDies(t *testing.T) {
	ctx := context.Background()
	s, c := startServer(t)
	f := openFuse(t)
	if err := c.Put(ctx, "k", f, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, _, _, err := c.Get(ctx, "k"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Get from a closed holder: %v", err)
	}
}

// memfd returns a memfd of 4 KiB, its size sealed when sealed.
func memfd(t *testing.T, sealed bool) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate("ring-test", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Skipf("memfd_create: %v", err)
	}
	f := os.NewFile(uintptr(fd), "memfd")
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(4096); err != nil {
		t.Fatal(err)
	}
	if sealed {
		if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// TestPutGetRing: a connection put with a write-back ring comes back with
// it (the same memfd); a client that expects one file refuses the entry;
// a ring whose size is not sealed, or a second file that is no memfd, is
// refused; a put with one file (the format before rings) replaces it.
func TestPutGetRing(t *testing.T) {
	ctx := context.Background()
	s, c := startServer(t)
	f := openFuse(t)
	ring := memfd(t, true)
	if _, err := ring.WriteAt([]byte("acked"), 100); err != nil {
		t.Fatal(err)
	}
	meta := []byte(`{"name":"vol-1"}`)
	if err := c.PutRing(ctx, "vol-1", f, ring, meta); err != nil {
		t.Fatal(err)
	}
	if l, err := c.List(ctx); err != nil || len(l) != 1 || !l[0].Ring {
		t.Fatalf("List: %+v %v, want one entry with a ring", l, err)
	}
	if _, _, _, err := c.Get(ctx, "vol-1"); !errors.Is(err, ErrProtocol) {
		t.Fatalf("Get of an entry with a ring: %v, want ErrProtocol", err)
	}
	g, m, _, r, err := c.GetRing(ctx, "vol-1")
	if err != nil || r == nil {
		t.Fatalf("GetRing: ring %v, %v", r, err)
	}
	defer g.Close()
	defer r.Close()
	if string(m) != string(meta) || !sameFile(t, f, g) {
		t.Fatalf("GetRing: meta %s, same file %v", m, sameFile(t, f, g))
	}
	b := make([]byte, 5)
	if _, err := r.ReadAt(b, 100); err != nil || string(b) != "acked" {
		t.Fatalf("the ring returned is not the one put: %q %v", b, err)
	}
	pr, pw, _ := os.Pipe()
	defer pr.Close()
	defer pw.Close()
	for name, bad := range map[string]*os.File{"unsealed memfd": memfd(t, false), "pipe": pr} {
		if err := c.PutRing(ctx, "vol-2", f, bad, meta); !errors.Is(err, ErrRejected) {
			t.Errorf("%s as a ring: %v, want ErrRejected", name, err)
		}
	}
	if err := c.Put(ctx, "vol-1", f, meta); err != nil {
		t.Fatal(err)
	}
	g2, _, _, r2, err := c.GetRing(ctx, "vol-1")
	if err != nil || r2 != nil {
		t.Fatalf("after a put without a ring: ring %v, %v", r2, err)
	}
	g2.Close()
	if s.Len() != 1 {
		t.Errorf("held %d entries, want 1", s.Len())
	}
}
