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
	if err := ValidKey(key); err != nil {
		return err
	}
	if len(meta) == 0 || len(meta) > MaxMetaSize || !json.Valid(meta) {
		return fmt.Errorf("%w: metadata must be JSON of 1..%d bytes (got %d)", ErrRejected, MaxMetaSize, len(meta))
	}
	// The descriptor through RawConn.Control: f.Fd() would switch the shared
	// file description to blocking mode under a server reading it.
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("fuseholder: %w", err)
	}
	var resp response
	var callErr error
	if err := rc.Control(func(fd uintptr) {
		resp, _, callErr = c.call(ctx, request{Op: opPut, Key: key, Meta: meta}, int(fd))
	}); err != nil {
		return fmt.Errorf("fuseholder: %w", err)
	}
	if callErr != nil {
		return callErr
	}
	return respErr(resp)
}

// Get returns a dup of the file held under key (the holder keeps its own),
// its metadata and whether the kernel still reports the connection alive.
func (c *Client) Get(ctx context.Context, key string) (*os.File, []byte, bool, error) {
	if err := ValidKey(key); err != nil {
		return nil, nil, false, err
	}
	resp, fds, err := c.call(ctx, request{Op: opGet, Key: key}, -1)
	if err != nil {
		closeFDs(fds)
		return nil, nil, false, err
	}
	if err := respErr(resp); err != nil {
		closeFDs(fds)
		return nil, nil, false, err
	}
	if len(fds) != 1 {
		closeFDs(fds)
		return nil, nil, false, fmt.Errorf("%w: get returned %d files", ErrProtocol, len(fds))
	}
	// os.NewFile registers a non-blocking descriptor with the runtime
	// poller; for /dev/fuse that sends nothing to the server. Callers must
	// not call Fd() on it while a server reads the connection (it would
	// make the shared description blocking): fuseloop.Adopt duplicates it
	// through RawConn.
	return os.NewFile(uintptr(fds[0]), "/dev/fuse"), resp.Meta, resp.Alive, nil
}

// Drop makes the holder close the file held under key (the volume is
// unstaged). ErrNotFound when it held none.
func (c *Client) Drop(ctx context.Context, key string) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	resp, fds, err := c.call(ctx, request{Op: opDrop, Key: key}, -1)
	closeFDs(fds)
	if err != nil {
		return err
	}
	return respErr(resp)
}

// List returns what the holder holds.
func (c *Client) List(ctx context.Context) ([]Entry, error) {
	resp, fds, err := c.call(ctx, request{Op: opList}, -1)
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

func (c *Client) call(ctx context.Context, req request, fd int) (response, []int, error) {
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
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	if _, _, err := conn.WriteMsgUnix(b, oob, nil); err != nil {
		return response{}, nil, fmt.Errorf("%w: send %s: %v", ErrUnavailable, req.Op, err)
	}
	resp, fds, err := readMsg[response](conn)
	if err != nil {
		return response{}, fds, fmt.Errorf("%s %q: %w", req.Op, req.Key, err)
	}
	return resp, fds, nil
}
