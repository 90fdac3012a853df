//go:build ceph && pacific

package ceph

/*
#include "radosops.h"
*/
import "C"

import (
	"bytes"
	"context"
	"encoding/binary"
	"math"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/ceph/go-ceph/rados"
	"k8s.io/klog/v2"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// watch is a librados watch (go-ceph's Watcher) with the contract's
// semantics: handler calls are serialised by a dispatcher goroutine fed
// from an unbounded queue (librados' callback thread never waits for a
// handler), a lost watch is reported once, and Close waits for a running
// handler call. The watch owns two goroutines, pump and dispatch; close
// ends both.
type watch struct {
	c   *Cluster
	p   *Pool
	oid string
	rw  *rados.Watcher
	h   objstore.WatchHandler

	mu     sync.Mutex
	lost   error
	closed bool
	queue  []func()

	kick     chan struct{}
	stop     chan struct{}
	pumpDone chan struct{}
	dispDone chan struct{}
	gid      uint64 // the dispatcher goroutine
}

// Watch registers h for the notifications sent to oid (ENOENT if oid does
// not exist).
func (p *Pool) Watch(ctx context.Context, oid string, h objstore.WatchHandler) (objstore.Watch, error) {
	if oid == "" || h == nil {
		return nil, opErr("watch", oid, syscall.EINVAL)
	}
	var (
		mu       sync.Mutex
		gaveUp   bool
		finished bool
		rw       *rados.Watcher
		err      error
	)
	_, cerr := p.c.run(ctx, func() {
		w, e := p.ioctx.WatchWithTimeout(oid, 0)
		mu.Lock()
		defer mu.Unlock()
		if gaveUp {
			if e == nil {
				if derr := w.Delete(); derr != nil {
					klog.V(2).InfoS("Unwatching an abandoned watch failed", "oid", oid, "err", derr)
				}
			}
			return
		}
		rw, err, finished = w, e, true
	})
	if cerr != nil {
		mu.Lock()
		gaveUp = !finished
		mu.Unlock()
		if !finished {
			return nil, opErr("watch", oid, cerr)
		}
		// registered after all: keep it
	}
	if err != nil {
		return nil, opErr("watch", oid, errnoErr(err))
	}
	w := &watch{
		c: p.c, p: p, oid: oid, rw: rw, h: h,
		kick: make(chan struct{}, 1), stop: make(chan struct{}),
		pumpDone: make(chan struct{}), dispDone: make(chan struct{}),
	}
	p.c.watchMu.Lock()
	p.c.watches[w] = struct{}{}
	p.c.watchMu.Unlock()
	started := make(chan struct{})
	go w.pump()
	go w.dispatch(started)
	<-started
	return w, nil
}

// Cookie is the watch handle librados assigned.
func (w *watch) Cookie() uint64 { return uint64(w.rw.ID()) }

// Check returns nil while the watch is established.
func (w *watch) Check() error {
	w.mu.Lock()
	closed, lost := w.closed, w.lost
	w.mu.Unlock()
	switch {
	case closed:
		return opErr("watch-check", w.oid, syscall.ENOTCONN)
	case lost != nil:
		return lost
	}
	if _, err := w.rw.Check(); err != nil {
		return opErr("watch-check", w.oid, errnoErr(err))
	}
	return nil
}

// Close unregisters the watch and waits for a running handler call (unless
// called from the watch's own handler).
func (w *watch) Close() error {
	err := w.close()
	w.c.watchMu.Lock()
	delete(w.c.watches, w)
	w.c.watchMu.Unlock()
	return err
}

func (w *watch) close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	w.queue = nil
	w.mu.Unlock()
	// Delete unwatches (blocking, bounded by the op timeout) and closes the
	// event channels, which ends pump.
	err := w.rw.Delete()
	close(w.stop)
	<-w.pumpDone
	if goroutineID() != w.gid {
		<-w.dispDone
	}
	if err != nil {
		err = errnoErr(err)
		if err == syscall.ENOTCONN || err == syscall.ESHUTDOWN || err == syscall.ENOENT {
			return nil // the watch was gone already (lost, blocklisted, object removed)
		}
		return opErr("unwatch", w.oid, err)
	}
	return nil
}

// pump moves librados' events into the queue.
func (w *watch) pump() {
	defer close(w.pumpDone)
	events, errs := w.rw.Events(), w.rw.Errors()
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return
			}
			w.deliver(ev)
		case err, ok := <-errs:
			if !ok {
				return
			}
			w.lose(opErr("watch", w.oid, errnoErr(err)))
		}
	}
}

func (w *watch) deliver(ev rados.NotifyEvent) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.lost != nil {
		return
	}
	n := objstore.NewNotification(uint64(ev.ID), uint64(ev.WatcherID), uint64(ev.NotifierID), ev.Data,
		func(reply []byte) {
			if err := ev.Ack(reply); err != nil {
				klog.V(2).InfoS("Acknowledging a notification failed", "oid", w.oid, "notify", ev.ID, "err", err)
			}
		})
	w.enqueueLocked(func() { w.h.HandleNotify(n) })
}

// lose marks the watch lost and reports err to the handler once.
func (w *watch) lose(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.lost != nil {
		return
	}
	w.lost = err
	w.enqueueLocked(func() { w.h.HandleWatchError(err) })
}

func (w *watch) enqueueLocked(f func()) {
	w.queue = append(w.queue, f)
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// dispatch calls the handler for queued events, one at a time.
func (w *watch) dispatch(started chan<- struct{}) {
	defer close(w.dispDone)
	w.gid = goroutineID()
	close(started)
	for {
		select {
		case <-w.stop:
			return
		case <-w.kick:
		}
		for {
			w.mu.Lock()
			if len(w.queue) == 0 || w.closed {
				w.mu.Unlock()
				break
			}
			f := w.queue[0]
			w.queue = w.queue[1:]
			w.mu.Unlock()
			f()
		}
	}
}

// goroutineID returns the current goroutine's id (used only so that Close
// called from a handler does not wait for itself).
func goroutineID() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); i > 0 {
		id, _ := strconv.ParseUint(string(b[:i]), 10, 64)
		return id
	}
	return 0
}

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
		klog.V(2).InfoS("Listing watchers for a notify result failed", "oid", oid, "err", err)
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
	d := decoder{b: b}
	n := d.u32()
	for i := uint32(0); i < n && d.err == nil; i++ {
		id, cookie := d.u64(), d.u64()
		reply := d.bytes()
		res.Acks = append(res.Acks, objstore.NotifyAck{
			Watcher: objstore.WatcherInfo{Client: objstore.ClientInfo{ID: id}, Cookie: cookie},
			Reply:   reply,
		})
	}
	n = d.u32()
	for i := uint32(0); i < n && d.err == nil; i++ {
		id, cookie := d.u64(), d.u64()
		res.TimedOut = append(res.TimedOut, objstore.WatcherInfo{Client: objstore.ClientInfo{ID: id}, Cookie: cookie})
	}
	return res, d.err
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) take(n uint64) []byte {
	if d.err != nil || uint64(len(d.b)) < n {
		d.err = errShortResult
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u32() uint32 {
	if b := d.take(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if b := d.take(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

func (d *decoder) bytes() []byte { return bytes.Clone(d.take(uint64(d.u32()))) }
