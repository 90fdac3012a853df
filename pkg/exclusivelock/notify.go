package exclusivelock

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
)

// The owner's side of librbd's watch-notify protocol on the image header:
// what each notification is answered with, and the proxied resize.

// resizeTimeout bounds one proxied resize (librbd's requester gives up
// after rbd_request_timed_out_seconds, 30 s, without progress).
const resizeTimeout = 25 * time.Second

// handler receives the events of one watch generation.
type handler struct {
	l   *Lock
	gen uint64
}

func (h *handler) HandleNotify(_ context.Context, n *objstore.Notification) {
	l := h.l
	m, err := rbdnotify.Parse(n.Payload)
	if err != nil {
		l.log.Info("Undecodable notification on the image header acknowledged without an answer", "object", l.oid, "err", err)
		n.Ack(nil)
		return
	}
	self := l.ClientID()
	switch p := m.Payload.(type) {
	case rbdnotify.HeaderUpdate:
		l.headerUpdated()
		n.Ack(rbdnotify.Response(0))
	case rbdnotify.RequestLock:
		if p.Client == self || !l.owner() {
			n.Ack(nil)
			return
		}
		// librbd's StandardPolicy (rbd-nbd --exclusive, krbd's
		// "exclusive"): refuse, so that the requester fails at once.
		l.log.Info("Refusing a request for the image lock: this node serves the volume", "object", l.oid, "requester", p.Client.String(), "force", p.Force)
		n.Ack(rbdnotify.Response(syscall.EROFS))
	case rbdnotify.AcquiredLock:
		if p.Client.IsValid() && p.Client != self && l.owner() {
			l.log.Info("Another client announced that it acquired the lock this node holds; the lock was broken after fencing this node", "object", l.oid, "client", p.Client.String())
		}
		n.Ack(nil)
	case rbdnotify.ReleasedLock:
		select {
		case l.releasedC <- struct{}{}:
		default:
		}
		n.Ack(nil)
	case rbdnotify.AsyncProgress, rbdnotify.AsyncComplete,
		rbdnotify.Quiesce, rbdnotify.Unquiesce:
		// Not ours to answer: librbd's watchers acknowledge these empty
		// (quiesce replies are optional; there is no I/O to quiesce here
		// that the journal does not already order).
		n.Ack(nil)
	case rbdnotify.Resize:
		if !l.owner() {
			n.Ack(nil)
			return
		}
		l.handleResize(n, p)
	case rbdnotify.SnapCreate:
		if !l.owner() {
			n.Ack(nil)
			return
		}
		l.handleSnapCreate(n, p)
	case rbdnotify.SnapRemove:
		if !l.owner() {
			n.Ack(nil)
			return
		}
		l.handleSnapRemove(n, p)
	default:
		// Maintenance ops csi-rbdj does not perform as owner, and unknown
		// ops: -EOPNOTSUPP (krbd's answer; librbd's for unknown ops). The
		// requester then asks for the lock and is refused with EROFS.
		if !l.owner() {
			n.Ack(nil)
			return
		}
		l.log.Info("Refusing a maintenance request while this node serves the volume", "object", l.oid, "op", m.Payload.Op().String())
		n.Ack(rbdnotify.Response(syscall.EOPNOTSUPP))
	}
}

// handleResize runs a proxied resize as librbd's owner does: it accepts the
// request (ResponseMessage(0)), performs it, and reports the result with an
// AsyncComplete notification. A request already in progress is accepted
// again without running twice.
func (l *Lock) handleResize(n *objstore.Notification, p rbdnotify.Resize) {
	if l.o.Resize == nil {
		n.Ack(rbdnotify.Response(syscall.EOPNOTSUPP))
		return
	}
	run := func(ctx context.Context) error { return l.o.Resize(ctx, p.Size, p.AllowShrink) }
	l.handleAsync(n, p.Request, fmt.Sprintf("resize to %d bytes", p.Size), resizeTimeout, run)
}
