package exclusivelock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
	"k8s.io/klog/v2"
)

// The requester's side of librbd's proxied maintenance requests
// (ImageWatcher::notify_async_request): a client that does not own the
// image watches its header, sends the request with an async request id
// naming that watch, and the owner answers ResponseMessage(0) (accepted),
// then announces the result with an AsyncComplete notification for that
// id. A ResponseMessage < 0 is a refusal. No ResponseMessage at all means
// nobody owns the image (librbd then takes the lock and performs the
// operation itself).

// ErrNoOwner: no watcher answered a proxied request as the image's owner
// (no client holds the lock, or its holder is dead or frozen).
var ErrNoOwner = errors.New("no lock owner answered")

// ProxyTimeout bounds the wait for the owner's acknowledgement of a
// proxied request (librbd's notify timeout).
const ProxyTimeout = 5 * time.Second

// ProxyResize asks the owner of the image whose header is headerOID to
// resize it to size (growing only: allow_shrink is false), as librbd's
// `rbd resize` does when another client holds the lock, and waits for the
// result. It returns an error wrapping ErrNoOwner if no owner answered (the
// caller may then resize directly), or the owner's errno (EBUSY: a served
// volume is not shrunk).
func ProxyResize(ctx context.Context, pool objstore.Pool, headerOID string, size uint64) error {
	return proxyAsync(ctx, pool, headerOID, "resize", func(req rbdnotify.AsyncRequestID) rbdnotify.Payload {
		return rbdnotify.Resize{Request: req, Size: size, AllowShrink: false}
	})
}

// proxyAsync sends the request build makes to the owner and waits for its
// AsyncComplete.
func proxyAsync(ctx context.Context, pool objstore.Pool, headerOID, what string, build func(rbdnotify.AsyncRequestID) rbdnotify.Payload) error {
	logger := klog.FromContext(ctx)
	c := &completions{done: map[rbdnotify.AsyncRequestID]int32{}, wake: make(chan struct{}, 1)}
	w, err := pool.Watch(ctx, headerOID, c)
	if errors.Is(err, objstore.ErrNotFound) {
		return fmt.Errorf("%s %s: %w", what, headerOID, err)
	}
	if err != nil {
		return fmt.Errorf("%s %s: watch the header for the owner's answer: %w", what, headerOID, err)
	}
	defer func() {
		if err := w.Close(); err != nil {
			logger.V(2).Info("Closing the requester's header watch", "object", headerOID, "err", err)
		}
	}()
	// The watch is this request's alone, so its handle makes the id unique
	// (librbd numbers the requests of one watch).
	req := rbdnotify.AsyncRequestID{
		Client:    rbdnotify.ClientID{GID: pool.Client().ID, Handle: w.Cookie()},
		RequestID: 1,
	}
	start := time.Now()
	res, err := pool.Notify(ctx, headerOID, rbdnotify.Marshal(build(req)), ProxyTimeout)
	if err != nil && !errors.Is(err, objstore.ErrTimedOut) {
		return fmt.Errorf("%s %s: notify the owner: %w", what, headerOID, err)
	}
	answered, result := false, int32(0)
	for _, a := range res.Acks {
		if a.Watcher.Client.ID == req.Client.GID && a.Watcher.Cookie == req.Client.Handle {
			continue // our own watch
		}
		r, ok, perr := rbdnotify.ParseResponse(a.Reply)
		if perr != nil {
			return fmt.Errorf("%s %s: the owner's answer (%s): %w", what, headerOID, a.Watcher.Client.Name(), perr)
		}
		if ok {
			answered, result = true, r.Result
			logger.V(2).Info("Lock owner answered a proxied request", "object", headerOID, "op", what, "owner", a.Watcher.Client.Name(), "result", r.Result)
			break
		}
	}
	switch {
	case !answered:
		return fmt.Errorf("%s %s: %w (%d watchers acknowledged, %d did not answer in %v)", what, headerOID, ErrNoOwner, len(res.Acks), len(res.TimedOut), ProxyTimeout)
	case result < 0:
		return fmt.Errorf("%s %s: the lock owner refused: %w", what, headerOID, syscall.Errno(-result))
	}
	r, err := c.wait(ctx, req)
	if err != nil {
		return fmt.Errorf("%s %s: waiting for the lock owner to finish (it accepted the request %v ago): %w", what, headerOID, time.Since(start).Round(time.Millisecond), err)
	}
	if r < 0 {
		return fmt.Errorf("%s %s: the lock owner failed: %w", what, headerOID, syscall.Errno(-r))
	}
	logger.V(1).Info("Lock owner performed a proxied request", "object", headerOID, "op", what, "duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// completions is the requester's watch handler: it records the
// AsyncComplete notifications it sees and acknowledges everything empty
// (a non-owner's answer).
type completions struct {
	mu   sync.Mutex
	done map[rbdnotify.AsyncRequestID]int32
	lost error
	wake chan struct{}
}

func (c *completions) HandleNotify(n *objstore.Notification) {
	defer n.Ack(nil)
	m, err := rbdnotify.Parse(n.Payload)
	if err != nil {
		return
	}
	if p, ok := m.Payload.(rbdnotify.AsyncComplete); ok {
		c.mu.Lock()
		c.done[p.Request] = p.Result
		c.mu.Unlock()
		c.signal()
	}
}

func (c *completions) HandleWatchError(err error) {
	c.mu.Lock()
	c.lost = err
	c.mu.Unlock()
	c.signal()
}

func (c *completions) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// wait returns the result of req once its AsyncComplete arrived.
func (c *completions) wait(ctx context.Context, req rbdnotify.AsyncRequestID) (int32, error) {
	for {
		c.mu.Lock()
		r, ok := c.done[req]
		lost := c.lost
		c.mu.Unlock()
		switch {
		case ok:
			return r, nil
		case lost != nil:
			return 0, fmt.Errorf("the header watch was lost: %w", lost)
		}
		select {
		case <-c.wake:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}
