// Package exclusivelock is librbd's managed exclusive lock on an image
// header: the cls lock "rbd_lock" (exclusive, tag "internal", cookie
// "auto <watch handle>") held together with a watch on rbd_header.<id>, so
// that librbd, rbd-mirror and other csi-rbdj nodes see a live owner, and the
// owner's side of librbd's watch-notify protocol on that header
// (pkg/rbdnotify).
//
// # Who owns the image
//
// A holder is alive while it watches the header with the handle its cookie
// names (librbd's test). Acquire breaks a lock only after fencing its
// holder (blocklisting its address: its later operations fail with
// ESHUTDOWN, so it cannot write after the new owner took over), and only if
// the holder
//   - no longer watches the header (it died, or its watch timed out), or
//   - is one of Options.Dead (this node plugin's previous incarnation), or
//   - still watches but does not answer a RequestLock notification within
//     Options.OwnerTimeout: it is frozen (SIGSTOP, a hung node, a
//     partition). librbd would instead wait for the holder's watch to time
//     out (osd_client_watch_timeout, 30 s) before breaking the lock; csi-rbdj
//     does not wait that long because fencing makes the break safe whether
//     the holder is dead or only frozen. A negative OwnerTimeout restores
//     librbd's behaviour.
//
// A holder that answers is alive: if it refuses (a csi-rbdj node, an
// exclusive rbd-nbd or krbd mapping: -EROFS) Acquire fails with ErrLocked
// naming it; if it agrees (a librbd client with the automatic policy, e.g.
// `rbd bench`), Acquire waits up to 30 s for it to release (woken by its
// ReleasedLock notification, since such a client asks for the lock back as
// soon as it has I/O) and takes the lock, fencing nobody.
//
// # The owner's answers (like `rbd-nbd --exclusive` and krbd's "exclusive")
//
//   - RequestLock (a librbd client that wants to write, e.g. `rbd bench`):
//     ResponseMessage(-EROFS), librbd's StandardPolicy: the requester's I/O
//     fails at once with EROFS instead of waiting, and the lock is never
//     silently handed over (a journaled volume has one writer). A forced
//     request (forced mirror promotion) is refused too, as StandardPolicy
//     refuses it: demote or unstage the volume first.
//   - Resize (librbd's `rbd resize` proxies it to the owner): handled as
//     owner through Options.Resize (the device grows; shrinking is refused),
//     answered with ResponseMessage(0) and then an AsyncComplete
//     notification carrying the result, as librbd's owner does.
//   - every other maintenance op (snapshots, flatten, rename, features,
//     ...) and unknown ops: ResponseMessage(-EOPNOTSUPP), as krbd answers:
//     the requester then asks for the lock, which is refused with EROFS, so
//     the operation fails with EROFS while the volume is served.
//   - HeaderUpdate: ResponseMessage(0) after recording that the header must
//     be re-read (UpdateSeq, Options.OnHeaderUpdate).
//   - everything else is acknowledged with an empty reply (librbd's
//     non-owner answer).
//
// The owner announces AcquiredLock after acquiring and ReleasedLock after
// releasing, so that librbd clients waiting for the lock learn about it.
//
// # Lost watches (seeds/004)
//
// When the header watch is lost, the lock re-registers it (a new handle),
// moves the lock's cookie to the new handle with lock.set_cookie (librbd's
// ManagedLock reacquire) and counts the gap as a missed header update: the
// device re-reads the header before its next I/O. If the lock was broken
// meanwhile (another node fenced this one and took over) or this client is
// blocklisted, the lock is lost for good (Err).
package exclusivelock

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clslock "github.com/csi-rbdj/csi-rbdj/pkg/cls/lock"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
	"k8s.io/klog/v2"
)

// Names librbd uses.
const (
	LockName     = "rbd_lock"
	LockTag      = "internal"
	CookiePrefix = "auto "
)

// Defaults of Options.
const (
	// DefaultOwnerTimeout is how long a watching holder has to answer a
	// RequestLock (librbd's notify timeout).
	DefaultOwnerTimeout = 5 * time.Second
	// DefaultNotifyTimeout bounds the lock's own notifications
	// (AcquiredLock, ReleasedLock, AsyncComplete, HeaderUpdate).
	DefaultNotifyTimeout = 5 * time.Second
	// DefaultFenceExpire is how long a fenced address stays blocklisted.
	DefaultFenceExpire = time.Hour
)

// Errors callers branch on.
var (
	// ErrLocked means another live client owns the lock.
	ErrLocked = errors.New("image is locked by another client")
	// ErrLost means the lock is no longer held: it was broken by another
	// client (after fencing this one), or this client was fenced.
	ErrLost = errors.New("exclusive lock lost")
)

// Fencer blocklists a client address so that none of its operations land
// any more (Ceph: OSD blocklist; local: the backend's blocklist).
type Fencer interface {
	Blocklist(ctx context.Context, addr string, expire time.Duration) error
}

// Options for Acquire.
type Options struct {
	// Fencer fences dead holders before their lock is broken. Without one, a
	// dead holder's lock is never broken.
	Fencer Fencer
	// FenceExpire is how long a fenced address stays blocklisted
	// (DefaultFenceExpire if zero).
	FenceExpire time.Duration
	// Description is recorded with the lock (e.g. the node's name) and
	// shown to whoever finds it held.
	Description string
	// Dead lists addresses known to be dead clients (a restarted node
	// plugin's previous incarnation): their locks are fenced and broken
	// without asking them.
	Dead []string
	// OwnerTimeout is how long a holder that still watches the header has
	// to answer a RequestLock before it counts as dead (frozen) and is
	// fenced. Zero: DefaultOwnerTimeout. Negative: a watching holder is
	// never fenced; Acquire fails with ErrLocked until its watch expires.
	OwnerTimeout time.Duration
	// NotifyTimeout bounds the notifications the lock sends
	// (DefaultNotifyTimeout if zero).
	NotifyTimeout time.Duration
	// OnHeaderUpdate is called when the header may have changed: a header
	// update notification arrived, or the watch was lost (notifications may
	// have been missed) or re-registered. It must not block. UpdateSeq
	// counts the same events, for callers that check before each I/O.
	OnHeaderUpdate func()
	// Resize performs a resize request that a librbd client proxied to
	// this owner (`rbd resize`). It runs on its own goroutine with a
	// bounded context. Nil: resize requests are answered with -EOPNOTSUPP.
	Resize func(ctx context.Context, size uint64, allowShrink bool) error
}

func (o Options) withDefaults() Options {
	if o.FenceExpire <= 0 {
		o.FenceExpire = DefaultFenceExpire
	}
	if o.OwnerTimeout == 0 {
		o.OwnerTimeout = DefaultOwnerTimeout
	}
	if o.NotifyTimeout <= 0 {
		o.NotifyTimeout = DefaultNotifyTimeout
	}
	return o
}

// Holder describes a lock holder.
type Holder struct {
	Client      string // "client.4123"
	Addr        string // what a blocklist entry names
	Cookie      string
	Description string
}

func (h Holder) String() string {
	s := fmt.Sprintf("%s at %s", h.Client, h.Addr)
	if h.Description != "" {
		s += " (" + h.Description + ")"
	}
	return s
}

// releaseTimeout is how long a holder that agreed to release the lock (a
// librbd client with the automatic policy) has to do it: librbd flushes
// its I/O and closes its journal first, which may wait for its commit age
// (rbd_journal_commit_age, 5 s).
const releaseTimeout = 30 * time.Second

// resizeTimeout bounds one proxied resize (librbd's requester gives up
// after rbd_request_timed_out_seconds, 30 s, without progress).
const resizeTimeout = 25 * time.Second

// Lock is an acquired exclusive lock. Its methods are safe for concurrent
// use.
type Lock struct {
	pool objstore.Pool
	oid  string
	o    Options

	// ctx ends with Release; it bounds the lock's background work (the
	// re-watch loop, notifications, proxied requests), all owned by wg.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	updates  atomic.Uint64 // UpdateSeq
	counters counters      // Stats

	mu         sync.Mutex
	watch      objstore.Watch
	gen        uint64 // generation of the current watch (handlers of older ones are ignored)
	cookie     string
	held       bool  // the cls lock is ours
	lost       error // why the lock is gone for good
	released   bool
	rewatching bool
	async      map[rbdnotify.AsyncRequestID]bool // proxied requests in progress

	// releasedC wakes an Acquire waiting for a holder to release the lock
	// (a ReleasedLock notification arrived).
	releasedC chan struct{}
}

// Acquire takes the exclusive lock on header object oid. If a live client
// holds it, the error wraps ErrLocked and names the holder.
func Acquire(ctx context.Context, pool objstore.Pool, oid string, o Options) (*Lock, error) {
	o = o.withDefaults()
	l := &Lock{pool: pool, oid: oid, o: o, async: map[rbdnotify.AsyncRequestID]bool{}, releasedC: make(chan struct{}, 1)}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	w, err := pool.Watch(ctx, oid, &handler{l: l, gen: 1})
	if err != nil {
		l.cancel()
		return nil, fmt.Errorf("lock %s: watch: %w", oid, err)
	}
	l.mu.Lock()
	l.watch, l.gen, l.cookie = w, 1, cookieOf(w.Cookie())
	l.mu.Unlock()
	if err := l.acquire(ctx); err != nil {
		l.cancel()
		if cerr := w.Close(); cerr != nil {
			klog.V(2).InfoS("Closing the header watch after a failed lock acquisition", "object", oid, "err", cerr)
		}
		return nil, err
	}
	l.mu.Lock()
	lost := l.lost
	l.held = lost == nil
	l.mu.Unlock()
	if lost != nil {
		// The watch broke while the lock was being taken: give the lock
		// back rather than hold it under a cookie no watch stands for.
		op := &objstore.WriteOp{}
		clslock.Unlock(op, LockName, l.Cookie())
		uerr := l.pool.Operate(ctx, oid, op)
		if errors.Is(uerr, objstore.ErrNotFound) {
			uerr = nil
		}
		return nil, errors.Join(fmt.Errorf("lock %s: the header watch broke while acquiring: %w", oid, lost), uerr, l.Release(ctx))
	}
	klog.V(1).InfoS("Image lock acquired", "object", oid, "cookie", l.Cookie())
	l.notifyAsync(rbdnotify.AcquiredLock{Client: l.ClientID()})
	return l, nil
}

func cookieOf(handle uint64) string { return CookiePrefix + strconv.FormatUint(handle, 10) }

// handleOf parses the watch handle out of a managed lock's cookie.
func handleOf(cookie string) (uint64, bool) {
	s, ok := strings.CutPrefix(cookie, CookiePrefix)
	if !ok {
		return 0, false
	}
	h, err := strconv.ParseUint(s, 10, 64)
	return h, err == nil
}

// maxAcquireAttempts bounds the lock/fence/break (or request/release)
// rounds of one Acquire. A librbd client with the automatic policy that
// releases on request but wants the lock back at once (it has I/O queued)
// may win a few races before this node gets the lock.
const maxAcquireAttempts = 8

func (l *Lock) acquire(ctx context.Context) error {
	cookie := l.Cookie()
	for attempt := 1; ; attempt++ {
		op := &objstore.WriteOp{}
		clslock.Lock(op, LockName, clslock.LockExclusive, cookie, LockTag, l.o.Description, 0, 0)
		err := l.pool.Operate(ctx, l.oid, op)
		if err == nil {
			return nil
		}
		if !errors.Is(err, objstore.ErrBusy) && !errors.Is(err, objstore.ErrExists) || attempt >= maxAcquireAttempts {
			return fmt.Errorf("lock %s: %w", l.oid, err)
		}
		holder, id, err := l.holder(ctx)
		if err != nil {
			return err
		}
		if holder == nil {
			continue // released meanwhile
		}
		why, err := l.deadHolder(ctx, *holder, id)
		if err != nil {
			return err
		}
		if why == "" {
			l.counters.takeovers.Add(1)
			continue // the holder released the lock on request
		}
		if l.o.Fencer == nil {
			return fmt.Errorf("lock %s: %w: held by %s, which %s, but no fencer is configured to break it safely", l.oid, ErrLocked, holder, why)
		}
		start := time.Now()
		klog.InfoS("Fencing the holder of an image lock before breaking it", "object", l.oid, "holder", holder.String(), "reason", why)
		if err := l.o.Fencer.Blocklist(ctx, holder.Addr, l.o.FenceExpire); err != nil {
			return fmt.Errorf("lock %s: fence %s: %w", l.oid, holder, err)
		}
		op = &objstore.WriteOp{}
		clslock.BreakLock(op, LockName, id.Cookie, id.Locker)
		if err := l.pool.Operate(ctx, l.oid, op); err != nil && !errors.Is(err, objstore.ErrNotFound) {
			return fmt.Errorf("lock %s: break lock of %s: %w", l.oid, holder, err)
		}
		l.counters.fencings.Add(1)
		l.counters.takeovers.Add(1)
		klog.InfoS("Fenced the holder of an image lock and broke its lock", "object", l.oid, "holder", holder.String(), "duration", time.Since(start).Round(time.Millisecond))
	}
}

// deadHolder decides whether the holder is dead: it returns why it counts
// as dead, "" if it released the lock on request, or an error wrapping
// ErrLocked if it is alive.
func (l *Lock) deadHolder(ctx context.Context, holder Holder, id clslock.LockerID) (string, error) {
	if l.knownDead(holder.Addr) {
		return "is this node's previous incarnation", nil
	}
	alive, err := l.watching(ctx, id)
	if err != nil {
		return "", err
	}
	if !alive {
		return "no longer watches the image header", nil
	}
	if l.o.OwnerTimeout < 0 {
		return "", fmt.Errorf("lock %s: %w: held by %s, which still watches the image header", l.oid, ErrLocked, holder)
	}
	handle, _ := handleOf(id.Cookie)
	res, err := l.requestLock(ctx, uint64(id.Locker.Num), handle)
	if err != nil {
		return "", err
	}
	switch {
	case res.gone:
		return "stopped watching the image header", nil
	case res.timedOut:
		return fmt.Sprintf("did not answer a lock request within %v (frozen or partitioned)", l.o.OwnerTimeout), nil
	case !res.answered:
		return "", fmt.Errorf("lock %s: %w: held by %s, which is alive (it acknowledged a lock request without answering as the owner)", l.oid, ErrLocked, holder)
	case res.result < 0:
		return "", fmt.Errorf("lock %s: %w: held by %s, which refused to release it (%v)", l.oid, ErrLocked, holder, syscall.Errno(-res.result))
	}
	// The owner agreed to release the lock (a librbd client with the
	// automatic policy): wait for it to do so.
	if err := l.waitReleased(ctx, id); err != nil {
		return "", fmt.Errorf("lock %s: %w: held by %s, which agreed to release it but did not within %v", l.oid, ErrLocked, holder, releaseTimeout)
	}
	return "", nil
}

type requestResult struct {
	timedOut bool  // the holder's watch did not acknowledge in time
	gone     bool  // the holder's watch was gone when the notification went out
	answered bool  // it replied with a ResponseMessage
	result   int32 // that message's result
}

// requestLock asks the holder (watch handle of client gid) to release the
// lock, as librbd's NotifyLockOwner does, and reports its answer.
func (l *Lock) requestLock(ctx context.Context, gid, handle uint64) (requestResult, error) {
	start := time.Now()
	payload := rbdnotify.Marshal(rbdnotify.RequestLock{Client: l.ClientID()})
	res, err := l.pool.Notify(ctx, l.oid, payload, l.o.OwnerTimeout)
	if err != nil && !errors.Is(err, objstore.ErrTimedOut) {
		return requestResult{}, fmt.Errorf("lock %s: request lock from its holder: %w", l.oid, err)
	}
	holds := func(w objstore.WatcherInfo) bool { return w.Client.ID == gid && w.Cookie == handle }
	var out requestResult
	for _, a := range res.Acks {
		if !holds(a.Watcher) {
			continue
		}
		r, ok, perr := rbdnotify.ParseResponse(a.Reply)
		if perr != nil {
			return requestResult{}, fmt.Errorf("lock %s: the holder's answer to a lock request: %w", l.oid, perr)
		}
		out = requestResult{answered: ok, result: r.Result}
		klog.V(1).InfoS("Lock holder answered a lock request", "object", l.oid, "answered", ok, "result", r.Result, "duration", time.Since(start).Round(time.Millisecond))
		return out, nil
	}
	for _, w := range res.TimedOut {
		if holds(w) {
			klog.InfoS("Lock holder did not answer a lock request", "object", l.oid, "holder", fmt.Sprintf("client.%d", gid), "timeout", l.o.OwnerTimeout)
			return requestResult{timedOut: true}, nil
		}
	}
	// Its watch went away meanwhile: it died.
	return requestResult{gone: true}, nil
}

// waitReleased waits until the lock of id is gone, for at most
// releaseTimeout: it returns as soon as a ReleasedLock notification arrives
// (the holder may want the lock back at once: the caller must try to take
// it without delay), and polls in case the notification is lost.
func (l *Lock) waitReleased(ctx context.Context, id clslock.LockerID) error {
	ctx, cancel := context.WithTimeout(ctx, releaseTimeout)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-l.releasedC:
			return nil
		default:
		}
		h, hid, err := l.holder(ctx)
		if err == nil && (h == nil || hid != id) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-l.releasedC:
			return nil
		case <-t.C:
		}
	}
}

// holder returns the current holder, or nil if the lock is free.
func (l *Lock) holder(ctx context.Context) (*Holder, clslock.LockerID, error) {
	info, err := clslock.GetLockInfo(ctx, l.pool, l.oid, LockName)
	if errors.Is(err, objstore.ErrNotFound) {
		return nil, clslock.LockerID{}, nil
	}
	if err != nil {
		return nil, clslock.LockerID{}, fmt.Errorf("lock %s: get lock info: %w", l.oid, err)
	}
	for id, li := range info.Lockers {
		if _, ok := handleOf(id.Cookie); info.Tag != LockTag || !ok {
			return nil, id, fmt.Errorf("lock %s: held by %s with tag %q cookie %q: not a managed lock; remove it by hand", l.oid, id.Locker, info.Tag, id.Cookie)
		}
		return &Holder{Client: id.Locker.String(), Addr: li.Addr.ClientAddr(), Cookie: id.Cookie, Description: li.Description}, id, nil
	}
	return nil, clslock.LockerID{}, nil
}

// watching reports whether the holder still watches the header with the
// handle its cookie names (librbd's test for a live lock owner).
func (l *Lock) watching(ctx context.Context, id clslock.LockerID) (bool, error) {
	ws, err := l.pool.ListWatchers(ctx, l.oid)
	if err != nil {
		return false, fmt.Errorf("lock %s: list watchers: %w", l.oid, err)
	}
	handle, _ := handleOf(id.Cookie)
	for _, w := range ws {
		if int64(w.Client.ID) == id.Locker.Num && w.Cookie == handle {
			return true, nil
		}
	}
	return false, nil
}

func (l *Lock) knownDead(addr string) bool {
	for _, a := range l.o.Dead {
		if a != "" && a == addr {
			return true
		}
	}
	return false
}

// Owner returns this lock's holder identity.
func (l *Lock) Owner() Holder {
	c := l.pool.Client()
	return Holder{Client: c.Name(), Addr: c.Addr, Cookie: l.Cookie(), Description: l.o.Description}
}

// Cookie returns the lock's current cookie ("auto <watch handle>").
func (l *Lock) Cookie() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cookie
}

// ClientID is this owner's identity in librbd's messages: the client's
// global id and the current watch handle.
func (l *Lock) ClientID() rbdnotify.ClientID {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.clientIDLocked()
}

func (l *Lock) clientIDLocked() rbdnotify.ClientID {
	id := rbdnotify.ClientID{GID: l.pool.Client().ID}
	if l.watch != nil {
		id.Handle = l.watch.Cookie()
	}
	return id
}

// Err returns why the lock was lost, or nil while it is held. While the
// watch is being re-registered the lock is still held (a client that takes
// it over must fence this one first) and Err is nil.
func (l *Lock) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lost
}

// UpdateSeq counts the events after which the header must be re-read
// before the next I/O (header updates, watch losses and re-registrations):
// a caller that remembers the value it last refreshed at knows when to
// refresh again (librbd's refresh_seq).
func (l *Lock) UpdateSeq() uint64 { return l.updates.Load() }

// Guard adds to op an assertion that this lock is still held with its
// current cookie: the rest of op applies only while it is.
func (l *Lock) Guard(op *objstore.WriteOp) {
	clslock.AssertLocked(op, LockName, clslock.LockExclusive, l.Cookie(), LockTag)
}

// NotifyHeaderUpdate tells the header's watchers that the header changed
// (librbd's HeaderUpdate), so that they refresh.
func (l *Lock) NotifyHeaderUpdate(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, l.o.NotifyTimeout)
	defer cancel()
	_, err := l.pool.Notify(ctx, l.oid, rbdnotify.Marshal(rbdnotify.HeaderUpdate{}), l.o.NotifyTimeout)
	if err != nil && !errors.Is(err, objstore.ErrTimedOut) {
		return fmt.Errorf("lock %s: notify header update: %w", l.oid, err)
	}
	return nil
}

// Release unlocks, announces the release and stops watching the header.
// It waits for the lock's background work, which it cancels.
func (l *Lock) Release(ctx context.Context) error {
	l.mu.Lock()
	if l.released {
		l.mu.Unlock()
		return nil
	}
	l.released = true
	l.mu.Unlock()
	l.cancel()
	l.wg.Wait()

	l.mu.Lock()
	w, cookie, held, client := l.watch, l.cookie, l.held && l.lost == nil, l.clientIDLocked()
	l.held = false
	l.mu.Unlock()
	var err error
	if held {
		op := &objstore.WriteOp{}
		clslock.Unlock(op, LockName, cookie)
		err = l.pool.Operate(ctx, l.oid, op)
		if errors.Is(err, objstore.ErrNotFound) {
			err = nil // already broken
		} else if err == nil {
			l.notify(ctx, rbdnotify.ReleasedLock{Client: client})
		}
	}
	var werr error
	if w != nil {
		werr = w.Close()
	}
	if err != nil {
		return fmt.Errorf("unlock %s: %w", l.oid, err)
	}
	if werr != nil {
		return fmt.Errorf("unlock %s: close watch: %w", l.oid, werr)
	}
	klog.V(1).InfoS("Image lock released", "object", l.oid)
	return nil
}

// notify sends a lock notification and waits (bounded) for the watchers.
func (l *Lock) notify(ctx context.Context, p rbdnotify.Payload) {
	ctx, cancel := context.WithTimeout(ctx, l.o.NotifyTimeout)
	defer cancel()
	if _, err := l.pool.Notify(ctx, l.oid, rbdnotify.Marshal(p), l.o.NotifyTimeout); err != nil {
		klog.V(2).InfoS("Lock notification not acknowledged by every watcher", "object", l.oid, "op", p.Op(), "err", err)
	}
}

// notifyAsync sends a notification from a goroutine owned by the lock.
func (l *Lock) notifyAsync(p rbdnotify.Payload) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		l.notify(l.ctx, p)
	}()
}

// headerUpdated records that the header must be re-read.
func (l *Lock) headerUpdated() {
	l.updates.Add(1)
	if f := l.o.OnHeaderUpdate; f != nil {
		f()
	}
}

// owner reports whether the lock is held and not lost or being released.
func (l *Lock) owner() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held && l.lost == nil && !l.released
}

func (l *Lock) markLost(err error) {
	l.mu.Lock()
	if l.lost == nil {
		l.lost = err
	}
	l.rewatching = false
	l.mu.Unlock()
	klog.ErrorS(err, "Image lock lost: the device stops taking writes", "object", l.oid)
	l.headerUpdated()
}

// handler receives the events of one watch generation.
type handler struct {
	l   *Lock
	gen uint64
}

func (h *handler) HandleNotify(n *objstore.Notification) {
	l := h.l
	m, err := rbdnotify.Parse(n.Payload)
	if err != nil {
		klog.InfoS("Undecodable notification on the image header acknowledged without an answer", "object", l.oid, "err", err)
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
		klog.InfoS("Refusing a request for the image lock: this node serves the volume", "object", l.oid, "requester", p.Client.String(), "force", p.Force)
		n.Ack(rbdnotify.Response(syscall.EROFS))
	case rbdnotify.AcquiredLock:
		if p.Client.IsValid() && p.Client != self && l.owner() {
			klog.InfoS("Another client announced that it acquired the lock this node holds; the lock was broken after fencing this node", "object", l.oid, "client", p.Client.String())
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
	default:
		// Maintenance ops csi-rbdj does not perform as owner, and unknown
		// ops: -EOPNOTSUPP (krbd's answer; librbd's for unknown ops). The
		// requester then asks for the lock and is refused with EROFS.
		if !l.owner() {
			n.Ack(nil)
			return
		}
		klog.InfoS("Refusing a maintenance request while this node serves the volume", "object", l.oid, "op", m.Payload.Op().String())
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
	l.mu.Lock()
	if p.Request.Client == l.clientIDLocked() {
		l.mu.Unlock()
		n.Ack(rbdnotify.Response(syscall.ERESTART))
		return
	}
	if l.async[p.Request] {
		l.mu.Unlock()
		n.Ack(rbdnotify.Response(0))
		return
	}
	l.async[p.Request] = true
	l.wg.Add(1)
	l.mu.Unlock()
	n.Ack(rbdnotify.Response(0))
	go func() {
		defer l.wg.Done()
		defer func() {
			l.mu.Lock()
			delete(l.async, p.Request)
			l.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(l.ctx, resizeTimeout)
		defer cancel()
		start := time.Now()
		err := l.o.Resize(ctx, p.Size, p.AllowShrink)
		result := int32(0)
		if err != nil {
			en := objstore.Errno(err)
			if en == 0 {
				en = syscall.EIO
			}
			result = -int32(en)
			klog.ErrorS(err, "Proxied resize failed", "object", l.oid, "request", p.Request.String(), "size", p.Size)
		} else {
			klog.InfoS("Proxied resize done by the lock owner", "object", l.oid, "request", p.Request.String(), "size", p.Size, "duration", time.Since(start).Round(time.Millisecond))
		}
		// librbd retries the completion while its requester may not have
		// heard it (ETIMEDOUT).
		for attempt := 0; attempt < 3 && l.ctx.Err() == nil; attempt++ {
			nctx, ncancel := context.WithTimeout(l.ctx, l.o.NotifyTimeout)
			_, nerr := l.pool.Notify(nctx, l.oid, rbdnotify.Marshal(rbdnotify.AsyncComplete{Request: p.Request, Result: result}), l.o.NotifyTimeout)
			ncancel()
			if !errors.Is(nerr, objstore.ErrTimedOut) {
				break
			}
		}
	}()
}

func (h *handler) HandleWatchError(err error) {
	l := h.l
	l.mu.Lock()
	if h.gen != l.gen || l.released || l.lost != nil {
		l.mu.Unlock()
		return
	}
	held := l.held
	if !held {
		// Acquire is still running: it gives up (see Acquire).
		l.lost = fmt.Errorf("%w: %w", ErrLost, err)
		l.mu.Unlock()
		return
	}
	if errors.Is(err, objstore.ErrBlocklisted) {
		l.mu.Unlock()
		l.markLost(fmt.Errorf("lock %s: %w: this client was fenced (blocklisted): %w", l.oid, ErrLost, err))
		return
	}
	start := !l.rewatching
	l.rewatching = true
	if start {
		l.wg.Add(1)
	}
	l.mu.Unlock()
	// Notifications sent while the watch is down are lost: count the gap
	// as a header update.
	klog.InfoS("Image header watch lost; re-registering it", "object", l.oid, "err", err)
	l.headerUpdated()
	if start {
		go l.rewatch()
	}
}

// rewatch re-registers the header watch until it succeeds, the lock is
// released, or the lock turns out to be lost; then it moves the lock's
// cookie to the new watch handle. Owned by l.wg.
func (l *Lock) rewatch() {
	defer l.wg.Done()
	backoff := 50 * time.Millisecond
	for l.ctx.Err() == nil {
		err := l.rewatchOnce()
		if err == nil {
			return
		}
		if errors.Is(err, ErrLost) {
			l.markLost(err)
			return
		}
		klog.InfoS("Re-registering the image header watch failed; retrying", "object", l.oid, "err", err, "backoff", backoff)
		select {
		case <-l.ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (l *Lock) rewatchOnce() error {
	ctx, cancel := context.WithTimeout(l.ctx, 30*time.Second)
	defer cancel()
	l.mu.Lock()
	old, gen, held := l.watch, l.gen+1, l.held
	l.mu.Unlock()
	if err := old.Close(); err != nil {
		klog.V(2).InfoS("Closing the lost header watch", "object", l.oid, "err", err)
	}
	w, err := l.pool.Watch(ctx, l.oid, &handler{l: l, gen: gen})
	if errors.Is(err, objstore.ErrBlocklisted) {
		return fmt.Errorf("lock %s: %w: this client was fenced (blocklisted): %w", l.oid, ErrLost, err)
	}
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	l.mu.Lock()
	oldCookie := l.cookie
	l.mu.Unlock()
	newCookie := cookieOf(w.Cookie())
	if held {
		op := &objstore.WriteOp{}
		clslock.SetCookie(op, LockName, clslock.LockExclusive, oldCookie, LockTag, newCookie)
		err = l.pool.Operate(ctx, l.oid, op)
		if err != nil {
			if cerr := w.Close(); cerr != nil {
				klog.V(2).InfoS("Closing a new header watch", "object", l.oid, "err", cerr)
			}
			if errors.Is(err, objstore.ErrBusy) || errors.Is(err, objstore.ErrNotFound) || errors.Is(err, objstore.ErrBlocklisted) {
				return fmt.Errorf("lock %s: %w: it was broken while the header watch was down: %w", l.oid, ErrLost, err)
			}
			// Transient: the old watch is closed; retry with a new one.
			l.mu.Lock()
			l.watch = w
			l.mu.Unlock()
			return fmt.Errorf("move the lock cookie to the new watch: %w", err)
		}
	}
	l.mu.Lock()
	l.watch, l.gen, l.cookie, l.rewatching = w, gen, newCookie, false
	released := l.released
	l.mu.Unlock()
	klog.InfoS("Image header watch re-registered; the lock cookie follows the new watch", "object", l.oid, "cookie", newCookie)
	// Whatever changed while the watch was down must be re-read.
	l.headerUpdated()
	if held && !released {
		// Announce the owner's new identity (its handle changed).
		l.notify(l.ctx, rbdnotify.AcquiredLock{Client: l.ClientID()})
	}
	return nil
}
