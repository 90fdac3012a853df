package fuseholder

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Client talks to a holder. Every call dials, sends one request, reads one
// response and hangs up, all bounded by the context and the client's
// timeout: a missing, dead or stuck holder is an ErrUnavailable error,
// never a hang.
type Client struct {
	Path    string
	Timeout time.Duration // per call; 0: DefaultTimeout
}

// NewClient returns a client of the holder at socket path.
func NewClient(path string) *Client { return &Client{Path: path} }

// Put hands the holder a dup of f (an open /dev/fuse file) under key with
// meta (JSON), replacing what it held under key. f stays the caller's.
func (c *Client) Put(ctx context.Context, key string, f *os.File, meta []byte) error {
	return c.PutRing(ctx, key, f, nil, meta)
}

// PutRing is Put with a write-back ring (a sealed memfd) kept with the
// connection (nil: none). Both files stay the caller's. A holder from
// before rings refuses it (ErrRejected).
func (c *Client) PutRing(ctx context.Context, key string, f, ring *os.File, meta []byte) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	if len(meta) == 0 || len(meta) > MaxMetaSize || !json.Valid(meta) {
		return fmt.Errorf("%w: metadata must be JSON of 1..%d bytes (got %d)", ErrRejected, MaxMetaSize, len(meta))
	}
	// The descriptors through RawConn.Control: f.Fd() would switch the
	// shared file description to blocking mode under a server reading it.
	files := []*os.File{f}
	if ring != nil {
		files = append(files, ring)
	}
	var resp response
	var callErr error
	err := withFDs(files, func(fds []int) {
		resp, _, callErr = c.call(ctx, request{Op: opPut, Key: key, Meta: meta}, fds...)
	})
	if err != nil {
		return fmt.Errorf("fuseholder: %w", err)
	}
	if callErr != nil {
		return callErr
	}
	return respErr(resp)
}

// withFDs calls fn with the raw descriptors of files, each valid during
// the call (RawConn.Control, nested).
func withFDs(files []*os.File, fn func([]int)) error {
	var rec func(i int, fds []int) error
	rec = func(i int, fds []int) error {
		if i == len(files) {
			fn(fds)
			return nil
		}
		rc, err := files[i].SyscallConn()
		if err != nil {
			return err
		}
		var inner error
		if err := rc.Control(func(fd uintptr) { inner = rec(i+1, append(fds, int(fd))) }); err != nil {
			return err
		}
		return inner
	}
	return rec(0, nil)
}

// Get returns a dup of the file held under key (the holder keeps its own),
// its metadata and whether the kernel still reports the connection alive.
// An entry that carries a write-back ring is refused (ErrProtocol): its
// acknowledged writes would be left behind; use GetRing.
func (c *Client) Get(ctx context.Context, key string) (*os.File, []byte, bool, error) {
	f, meta, alive, ring, err := c.GetRing(ctx, key)
	if err != nil {
		return nil, nil, false, err
	}
	if ring != nil {
		f.Close()
		ring.Close()
		return nil, nil, false, fmt.Errorf("%w: the connection held under %q carries a write-back ring", ErrProtocol, key)
	}
	return f, meta, alive, nil
}

// GetRing is Get that also returns the write-back ring held with the
// connection (nil if none).
func (c *Client) GetRing(ctx context.Context, key string) (*os.File, []byte, bool, *os.File, error) {
	if err := ValidKey(key); err != nil {
		return nil, nil, false, nil, err
	}
	resp, fds, err := c.call(ctx, request{Op: opGet, Key: key})
	if err != nil {
		closeFDs(fds)
		return nil, nil, false, nil, err
	}
	if err := respErr(resp); err != nil {
		closeFDs(fds)
		return nil, nil, false, nil, err
	}
	want := 1
	if resp.Ring {
		want = 2
	}
	if len(fds) != want {
		closeFDs(fds)
		return nil, nil, false, nil, fmt.Errorf("%w: get returned %d files, want %d", ErrProtocol, len(fds), want)
	}
	// os.NewFile registers a non-blocking descriptor with the runtime
	// poller; for /dev/fuse that sends nothing to the server. Callers must
	// not call Fd() on it while a server reads the connection (it would
	// make the shared description blocking): fuseloop.Adopt duplicates it
	// through RawConn.
	var ring *os.File
	if resp.Ring {
		ring = os.NewFile(uintptr(fds[1]), "memfd:write-back-ring")
	}
	return os.NewFile(uintptr(fds[0]), "/dev/fuse"), resp.Meta, resp.Alive, ring, nil
}

// Drop makes the holder close the file held under key (the volume is
// unstaged). ErrNotFound when it held none.
func (c *Client) Drop(ctx context.Context, key string) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	resp, fds, err := c.call(ctx, request{Op: opDrop, Key: key})
	closeFDs(fds)
	if err != nil {
		return err
	}
	return respErr(resp)
}

// List returns what the holder holds.
func (c *Client) List(ctx context.Context) ([]Entry, error) {
	resp, fds, err := c.call(ctx, request{Op: opList})
	closeFDs(fds)
	if err != nil {
		return nil, err
	}
	if err := respErr(resp); err != nil {
		return nil, err
	}
	return resp.Entries, nil
}

func respErr(r response) error {
	if r.Code == "" {
		return nil
	}
	return codeErr(r.Code, r.Error)
}

func (c *Client) call(ctx context.Context, req request, fds ...int) (response, []int, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unixpacket", c.Path)
	if err != nil {
		return response{}, nil, fmt.Errorf("%w: %s: %v", ErrUnavailable, c.Path, err)
	}
	conn := nc.(*net.UnixConn)
	defer conn.Close()
	dl, _ := ctx.Deadline()
	_ = conn.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	b, err := json.Marshal(req)
	if err != nil {
		return response{}, nil, err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := conn.WriteMsgUnix(b, oob, nil); err != nil {
		return response{}, nil, fmt.Errorf("%w: send %s: %v", ErrUnavailable, req.Op, err)
	}
	resp, got, err := readMsg[response](conn)
	if err != nil {
		return response{}, got, fmt.Errorf("%s %q: %w", req.Op, req.Key, err)
	}
	return resp, got, nil
}
