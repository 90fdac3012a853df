//go:build ceph && pacific

package ceph

/*
#include "radosops.h"
*/
import "C"

import (
	"bytes"
	"context"
	"math"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"k8s.io/klog/v2"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// watch is a librados watch (the C++ API's watch3 with a WatchCtx2 whose
// callbacks land in csiWatchNotify and csiWatchError) with the contract's
// semantics: librados' callback thread only queues events (it never waits
// for a handler), a dispatcher goroutine owned by the watch calls the
// handler one event at a time, a lost watch is reported once, and Close
// waits for a running handler call.
type watch struct {
	c     *Cluster
	p     *Pool
	oid   string
	token uint64
	cw    *C.csi_watch
	// cookie is librados' watch handle (valid once registered).
	cookie uint64

	// disp calls the handler, one event at a time, and keeps the state:
	// lost (reported once), closed.
	disp *objstore.Dispatcher
}

// watches maps the token handed to the C++ watch context to its watch.
var (
	watches   sync.Map // uint64 → *watch
	nextToken atomic.Uint64
)

//export csiWatchNotify
func csiWatchNotify(token, notifyID, cookie, notifierID C.uint64_t, data *C.char, n C.size_t) {
	v, ok := watches.Load(uint64(token))
	if !ok {
		return
	}
	var payload []byte
	if n > 0 {
		payload = C.GoBytes(unsafe.Pointer(data), C.int(n))
	}
	v.(*watch).deliver(uint64(notifyID), uint64(cookie), uint64(notifierID), payload)
}

//export csiWatchError
func csiWatchError(token, cookie C.uint64_t, errno C.int) {
	v, ok := watches.Load(uint64(token))
	if !ok {
		return
	}
	w := v.(*watch)
	w.lose(opErr("watch", w.oid, errnoOf(errno)))
}

// Watch registers h for the notifications sent to oid (ENOENT if oid does
// not exist).
func (p *Pool) Watch(ctx context.Context, oid string, h objstore.WatchHandler) (objstore.Watch, error) {
	if oid == "" || h == nil {
		return nil, opErr("watch", oid, syscall.EINVAL)
	}
	w := &watch{c: p.c, p: p, oid: oid, token: nextToken.Add(1)}
	// The dispatcher exists before librados can deliver; a failed
	// registration stops it (what was delivered meanwhile is dropped).
	w.disp = objstore.NewDispatcher(ctx, h, nil)
	watches.Store(w.token, w)
	var (
		mu       sync.Mutex
		gaveUp   bool
		finished bool
		ret      C.int
	)
	_, cerr := p.c.run(ctx, func() {
		var cw *C.csi_watch
		r := C.csi_watch_new(p.io, cstr(oid), C.size_t(len(oid)), C.uint64_t(w.token), 0, &cw)
		mu.Lock()
		defer mu.Unlock()
		if gaveUp {
			if r >= 0 {
				C.csi_unwatch(p.io, cw)
				p.c.flushWatchCallbacks()
				C.csi_watch_free(cw)
			}
			watches.Delete(w.token)
			return
		}
		ret, finished, w.cw = r, true, cw
	})
	if cerr != nil {
		mu.Lock()
		gaveUp = !finished
		mu.Unlock()
		if !finished {
			w.disp.Stop()
			return nil, opErr("watch", oid, cerr)
		}
		// registered after all: keep it
	}
	if ret < 0 {
		watches.Delete(w.token)
		w.disp.Stop()
		return nil, opErr("watch", oid, errnoOf(ret))
	}
	w.cookie = uint64(C.csi_watch_handle(w.cw))
	p.c.watchMu.Lock()
	p.c.watches[w] = struct{}{}
	p.c.watchMu.Unlock()
	return w, nil
}

// flushWatchCallbacks waits until librados has run every queued watch
// callback (ours never block).
func (c *Cluster) flushWatchCallbacks() {
	if err := c.conn.WatcherFlush(); err != nil {
		c.log.V(2).Info("Flushing watch callbacks failed", "err", err)
	}
}

// Cookie is the watch handle librados assigned.
func (w *watch) Cookie() uint64 { return w.cookie }

// Check returns nil while the watch is established.
func (w *watch) Check() error {
	closed, lost := w.disp.State()
	switch {
	case closed:
		return opErr("watch-check", w.oid, syscall.ENOTCONN)
	case lost != nil:
		return lost
	}
	if r := C.csi_watch_check(w.p.io, w.cw); r < 0 {
		return opErr("watch-check", w.oid, errnoOf(r))
	}
	return nil
}

// Close unregisters the watch and waits for a running handler call (unless
// ctx is that call's: Close from the watch's own handler).
func (w *watch) Close(ctx context.Context) error {
	err := w.close(ctx)
	w.c.watchMu.Lock()
	delete(w.c.watches, w)
	w.c.watchMu.Unlock()
	return err
}

func (w *watch) close(ctx context.Context) error {
	if !w.disp.Stop() {
		return nil
	}
	_, lost := w.disp.State() // final: a stopped dispatcher records no loss
	// Blocking, bounded by the op timeout.
	err := errnoOf(C.csi_unwatch(w.p.io, w.cw))
	w.c.flushWatchCallbacks()
	watches.Delete(w.token)
	C.csi_watch_free(w.cw)
	w.disp.Wait(ctx)
	if err != nil && lost == nil && err != syscall.ENOTCONN && err != syscall.ENOENT {
		return opErr("unwatch", w.oid, err)
	}
	return nil
}

func (w *watch) deliver(notifyID, cookie, notifierID uint64, payload []byte) {
	w.disp.Notify(objstore.NewNotification(notifyID, cookie, notifierID, payload, func(reply []byte) { w.ack(notifyID, cookie, reply) }))
}

// ack acknowledges a notification (librados queues the message: it does
// not block).
func (w *watch) ack(notifyID, cookie uint64, reply []byte) {
	if err := w.c.enter(); err != nil {
		return // closed: the notifier times out on this watcher
	}
	defer w.c.exit()
	if r := C.csi_notify_ack(w.p.io, cstr(w.oid), C.size_t(len(w.oid)), C.uint64_t(notifyID), C.uint64_t(cookie),
		cbuf(reply), C.size_t(len(reply))); r < 0 {
		w.c.log.V(2).Info("Acknowledging a notification failed", "oid", w.oid, "notify", notifyID, "err", errnoOf(r))
	}
}

// lose marks the watch lost and reports err to the handler once.
func (w *watch) lose(err error) { w.disp.Lost(err) }

// defaultNotifyTimeout is used when Notify is given timeout 0 (librados'
// client_notify_timeout default).
const defaultNotifyTimeout = 10 * time.Second

// Notify sends payload to the watchers of oid and waits up to timeout for
// their acks (rounded up to whole seconds: the OSD counts in seconds). It fails with ETIMEDOUT (and still returns the result) if a
// watcher did not answer in time.
func (p *Pool) Notify(ctx context.Context, oid string, payload []byte, timeout time.Duration) (objstore.NotifyResult, error) {
	if timeout <= 0 {
		timeout = defaultNotifyTimeout
	}
	// The OSD takes whole seconds and reads 0 as its default (30 s): round up.
	timeout = time.Duration(math.Ceil(timeout.Seconds())) * time.Second
	payload = bytes.Clone(payload) // librados may read it after a cancelled call returned
	var (
		reply []byte
		ret   C.int
	)
	cerr := p.c.call(ctx, func() {
		var out *C.char
		var n C.size_t
		ret = C.csi_notify(p.io, cstr(oid), C.size_t(len(oid)), cbuf(payload), C.size_t(len(payload)),
			C.uint64_t(timeout.Milliseconds()), &out, &n)
		if out != nil {
			reply = C.GoBytes(unsafe.Pointer(out), C.int(n))
			C.csi_free(unsafe.Pointer(out))
		}
	})
	if cerr != nil {
		return objstore.NotifyResult{}, opErr("notify", oid, cerr)
	}
	res, derr := decodeNotifyReply(reply)
	if derr != nil && ret >= 0 {
		return res, opErr("notify", oid, derr)
	}
	if len(res.Acks)+len(res.TimedOut) > 0 {
		p.fillAddrs(ctx, oid, &res)
	}
	return res, opErr("notify", oid, errnoOf(ret))
}

// fillAddrs adds the watchers' addresses, which librados' notify reply
// lacks, from a watcher listing (best effort: a watcher gone meanwhile
// keeps an empty address).
func (p *Pool) fillAddrs(ctx context.Context, oid string, res *objstore.NotifyResult) {
	ws, err := p.ListWatchers(ctx, oid)
	if err != nil {
		klog.FromContext(ctx).V(2).Info("Listing watchers for a notify result failed", "oid", oid, "err", err)
		return
	}
	type key struct{ id, cookie uint64 }
	addrs := make(map[key]string, len(ws))
	for _, w := range ws {
		addrs[key{w.Client.ID, w.Cookie}] = w.Client.Addr
	}
	for i := range res.Acks {
		w := &res.Acks[i].Watcher
		w.Client.Addr = addrs[key{w.Client.ID, w.Cookie}]
	}
	for i := range res.TimedOut {
		w := &res.TimedOut[i]
		w.Client.Addr = addrs[key{w.Client.ID, w.Cookie}]
	}
}

// decodeNotifyReply decodes librados' notify reply (see csi_notify).
func decodeNotifyReply(b []byte) (objstore.NotifyResult, error) {
	var res objstore.NotifyResult
	if len(b) == 0 {
		return res, nil
	}
	d := cephenc.NewDecoder(b)
	n := d.U32()
	for i := uint32(0); i < n && d.Err() == nil; i++ {
		id, cookie := d.U64(), d.U64()
		reply := bytes.Clone(d.Bytes())
		res.Acks = append(res.Acks, objstore.NotifyAck{
			Watcher: objstore.WatcherInfo{Client: objstore.ClientInfo{ID: id}, Cookie: cookie},
			Reply:   reply,
		})
	}
	n = d.U32()
	for i := uint32(0); i < n && d.Err() == nil; i++ {
		id, cookie := d.U64(), d.U64()
		res.TimedOut = append(res.TimedOut, objstore.WatcherInfo{Client: objstore.ClientInfo{ID: id}, Cookie: cookie})
	}
	return res, shortResult(d)
}
