package exclusivelock

import (
	"context"
	"errors"
	"syscall"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
)

// snapTimeout bounds one proxied snapshot operation (librbd's requester
// gives up after rbd_request_timed_out_seconds, 30 s, without progress).
const snapTimeout = 25 * time.Second

// handleSnapCreate runs a proxied snapshot creation as librbd's
// ImageWatcher does (handle_payload(SnapCreatePayload)): a request with an
// async request id (Pacific's) is accepted with ResponseMessage(0) and its
// result announced with AsyncComplete; an older one (no id) is answered
// with the result once the snapshot is made.
func (l *Lock) handleSnapCreate(n *objstore.Notification, p rbdnotify.SnapCreate) {
	if l.o.SnapCreate == nil {
		n.Ack(rbdnotify.Response(syscall.EOPNOTSUPP))
		return
	}
	run := func(ctx context.Context) error { return l.o.SnapCreate(ctx, p.Namespace, p.Name, p.Flags) }
	what := "snapshot create " + p.Namespace.String() + "@" + p.Name
	if p.Request.IsValid() {
		l.handleAsync(n, p.Request, what, snapTimeout, run)
		return
	}
	l.handleDelayedAck(n, what, run)
}

// handleSnapRemove runs a proxied snapshot removal like a creation: Ceph
// 16.2.15's librbd sends an async request id and waits for AsyncComplete;
// without one (earlier clients) the owner answers once done.
func (l *Lock) handleSnapRemove(n *objstore.Notification, p rbdnotify.SnapRemove) {
	if l.o.SnapRemove == nil {
		n.Ack(rbdnotify.Response(syscall.EOPNOTSUPP))
		return
	}
	run := func(ctx context.Context) error { return l.o.SnapRemove(ctx, p.Namespace, p.Name) }
	what := "snapshot remove " + p.Namespace.String() + "@" + p.Name
	if p.Request.IsValid() {
		l.handleAsync(n, p.Request, what, snapTimeout, run)
		return
	}
	l.handleDelayedAck(n, what, run)
}

// handleDelayedAck runs op on its own goroutine (a watch handler must not
// block) and acknowledges n with its result.
func (l *Lock) handleDelayedAck(n *objstore.Notification, what string, op func(ctx context.Context) error) {
	l.mu.Lock()
	l.wg.Add(1)
	l.mu.Unlock()
	go func() {
		defer l.wg.Done()
		ctx, cancel := context.WithTimeout(l.ctx, snapTimeout)
		defer cancel()
		start := time.Now()
		err := op(ctx)
		l.logResult(what, nil, err, start)
		n.Ack(rbdnotify.Response(syscall.Errno(-objstore.Result(err))))
	}()
}

// handleAsync accepts a proxied request (ResponseMessage(0)), runs it once
// even if the requester repeats it, and announces its result with an
// AsyncComplete notification, as librbd's owner does.
func (l *Lock) handleAsync(n *objstore.Notification, req rbdnotify.AsyncRequestID, what string, timeout time.Duration, op func(ctx context.Context) error) {
	l.mu.Lock()
	if req.Client == l.clientIDLocked() {
		l.mu.Unlock()
		n.Ack(rbdnotify.Response(syscall.ERESTART))
		return
	}
	if l.async[req] {
		l.mu.Unlock()
		n.Ack(rbdnotify.Response(0))
		return
	}
	l.async[req] = true
	l.wg.Add(1)
	l.mu.Unlock()
	n.Ack(rbdnotify.Response(0))
	go func() {
		defer l.wg.Done()
		defer func() {
			l.mu.Lock()
			delete(l.async, req)
			l.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(l.ctx, timeout)
		defer cancel()
		start := time.Now()
		err := op(ctx)
		l.logResult(what, &req, err, start)
		// librbd retries the completion while its requester may not have
		// heard it (ETIMEDOUT).
		for attempt := 0; attempt < 3 && l.ctx.Err() == nil; attempt++ {
			nctx, ncancel := context.WithTimeout(l.ctx, l.o.NotifyTimeout)
			_, nerr := l.pool.Notify(nctx, l.oid, rbdnotify.Marshal(rbdnotify.AsyncComplete{Request: req, Result: objstore.Result(err)}), l.o.NotifyTimeout)
			ncancel()
			if !errors.Is(nerr, objstore.ErrTimedOut) {
				break
			}
		}
	}()
}

func (l *Lock) logResult(what string, req *rbdnotify.AsyncRequestID, err error, start time.Time) {
	kv := []any{"object", l.oid, "op", what, "duration", time.Since(start).Round(time.Millisecond)}
	if req != nil {
		kv = append(kv, "request", req.String())
	}
	if err != nil {
		l.log.Error(err, "Proxied maintenance operation failed", kv...)
		return
	}
	l.log.Info("Proxied maintenance operation done by the lock owner", kv...)
}
