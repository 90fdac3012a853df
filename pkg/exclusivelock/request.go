package exclusivelock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
)

// ErrNoOwner means no client answered a request as the lock owner: the
// image is not served (perform the operation directly), or its owner is
// dead or frozen (fence it first, as NodeStage does).
var ErrNoOwner = errors.New("no lock owner answered")

// DefaultRequestTimeout is how long a Requester waits for the completion
// of an accepted request before it sends it again (librbd's
// rbd_request_timed_out_seconds).
const DefaultRequestTimeout = 30 * time.Second

// Requester sends maintenance requests to an image's lock owner the way
// librbd's ImageWatcher does (notify_lock_owner, notify_async_request): a
// request with an async request id is notified on the header; the owner
// answers it with ResponseMessage (0: accepted, else the error) and later
// announces the result with AsyncComplete, which the Requester receives
// through its own header watch. A request without completion within
// RequestTimeout is sent again (the owner runs it once). For a controller
// that snapshots a served volume on a backend without librbd.
type Requester struct {
	pool objstore.Pool
	oid  string
	// RequestTimeout overrides DefaultRequestTimeout.
	RequestTimeout time.Duration
	// NotifyTimeout bounds each notification (DefaultNotifyTimeout if zero).
	NotifyTimeout time.Duration

	w      objstore.Watch
	nextID atomic.Uint64

	mu      sync.Mutex
	waiting map[rbdnotify.AsyncRequestID]chan int32
}

// NewRequester watches the image header headerOID (AsyncComplete
// notifications come that way). Close it when done.
func NewRequester(ctx context.Context, pool objstore.Pool, headerOID string) (*Requester, error) {
	r := &Requester{pool: pool, oid: headerOID, waiting: map[rbdnotify.AsyncRequestID]chan int32{}}
	w, err := pool.Watch(ctx, headerOID, requesterHandler{r})
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", headerOID, err)
	}
	r.w = w
	return r, nil
}

// Close unregisters the header watch.
func (r *Requester) Close(ctx context.Context) error { return r.w.Close(ctx) }

type requesterHandler struct{ r *Requester }

func (h requesterHandler) HandleNotify(_ context.Context, n *objstore.Notification) {
	// Not the owner: acknowledge everything empty, as librbd's
	// non-owners do (its own requests included).
	defer n.Ack(nil)
	m, err := rbdnotify.Parse(n.Payload)
	if err != nil {
		return
	}
	if c, ok := m.Payload.(rbdnotify.AsyncComplete); ok {
		h.r.mu.Lock()
		ch := h.r.waiting[c.Request]
		h.r.mu.Unlock()
		if ch != nil {
			select {
			case ch <- c.Result:
			default:
			}
		}
	}
}

// HandleWatchError: a lost watch may lose a completion; the request is
// then sent again after RequestTimeout, and the owner answers it again.
func (h requesterHandler) HandleWatchError(context.Context, error) {}

// SnapCreate asks the owner to create snapshot ns/name and waits for the
// result (an error carrying the owner's errno, ErrNoOwner, or ctx's).
func (r *Requester) SnapCreate(ctx context.Context, ns rbdnotify.SnapshotNamespace, name string) error {
	return r.do(ctx, func(req rbdnotify.AsyncRequestID) rbdnotify.Payload {
		return rbdnotify.SnapCreate{Request: req, Namespace: ns, Name: name}
	})
}

// SnapRemove asks the owner to remove snapshot ns/name and waits for the
// result.
func (r *Requester) SnapRemove(ctx context.Context, ns rbdnotify.SnapshotNamespace, name string) error {
	return r.do(ctx, func(req rbdnotify.AsyncRequestID) rbdnotify.Payload {
		return rbdnotify.SnapRemove{Request: req, Namespace: ns, Name: name}
	})
}

func (r *Requester) do(ctx context.Context, build func(rbdnotify.AsyncRequestID) rbdnotify.Payload) error {
	req := rbdnotify.AsyncRequestID{
		Client:    rbdnotify.ClientID{GID: r.pool.Client().ID, Handle: r.w.Cookie()},
		RequestID: r.nextID.Add(1),
	}
	p := build(req)
	ch := make(chan int32, 1)
	r.mu.Lock()
	r.waiting[req] = ch
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.waiting, req)
		r.mu.Unlock()
	}()
	timeout := r.RequestTimeout
	if timeout <= 0 {
		timeout = DefaultRequestTimeout
	}
	for {
		if err := r.send(ctx, p); err != nil {
			return err
		}
		t := time.NewTimer(timeout)
		select {
		case res := <-ch:
			t.Stop()
			if res < 0 {
				return fmt.Errorf("%v %s: lock owner: %w", p.Op(), r.oid, syscall.Errno(-res))
			}
			return nil
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%v %s: %w", p.Op(), r.oid, ctx.Err())
		case <-t.C:
			// No completion: send again (librbd's request timeout); the
			// owner runs a request it already runs only once.
		}
	}
}

// send notifies p and returns the owner's refusal, or nil if it accepted.
func (r *Requester) send(ctx context.Context, p rbdnotify.Payload) error {
	nt := r.NotifyTimeout
	if nt <= 0 {
		nt = DefaultNotifyTimeout
	}
	res, err := r.pool.Notify(ctx, r.oid, rbdnotify.Marshal(p), nt)
	if err != nil && !errors.Is(err, objstore.ErrTimedOut) {
		return fmt.Errorf("%v %s: %w", p.Op(), r.oid, err)
	}
	for _, a := range res.Acks {
		m, ok, perr := rbdnotify.ParseResponse(a.Reply)
		if perr != nil || !ok {
			continue
		}
		if err := m.Err(); err != nil {
			return fmt.Errorf("%v %s: lock owner %s refused: %w", p.Op(), r.oid, a.Watcher.Client.Name(), err)
		}
		return nil
	}
	return fmt.Errorf("%v %s: %w", p.Op(), r.oid, ErrNoOwner)
}

// Resize asks the owner to resize the image to size, growing only
// (allow_shrink false: the owner refuses to shrink a served volume with
// EBUSY), and waits for the result.
func (r *Requester) Resize(ctx context.Context, size uint64) error {
	return r.do(ctx, func(req rbdnotify.AsyncRequestID) rbdnotify.Payload {
		return rbdnotify.Resize{Request: req, Size: size, AllowShrink: false}
	})
}

// ProxyResize asks the owner of the image whose header is headerOID to
// grow it to size, as librbd's `rbd resize` does when another client holds
// the lock. It returns an error wrapping ErrNoOwner if no owner answered
// (the caller may then resize directly), or the owner's errno.
func ProxyResize(ctx context.Context, pool objstore.Pool, headerOID string, size uint64) error {
	r, err := NewRequester(ctx, pool, headerOID)
	if err != nil {
		return fmt.Errorf("resize: %w", err)
	}
	defer func() { _ = r.Close(context.WithoutCancel(ctx)) }()
	return r.Resize(ctx, size)
}
