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
//   - SnapCreate and SnapRemove (`rbd snap create/rm`, rbd-mirror's sync
//     points): handled as owner through Options.SnapCreate/SnapRemove, as
//     librbd's owner answers them (snapshots.go).
//   - every other maintenance op (flatten, rename, features, snapshot
//     rename/protect, ...) and unknown ops: ResponseMessage(-EOPNOTSUPP), as krbd answers:
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
	"sync"
	"sync/atomic"
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
	// RefusedWait is how long a librbd holder (its lock has no
	// description) that refuses to release the lock (-EROFS) is asked
	// again before Acquire fails with ErrLocked. rbd-mirror replaying
	// into an image holds its lock and refuses every request until it
	// notices that the image was promoted and stops (Ceph's
	// MirrorExclusiveLockPolicy): right after a failover, the promoted
	// image is held for a while by the daemon that replayed into it. A
	// holder with a description (another csi-rbdj node) is not waited
	// for: it refuses for as long as it serves the volume. Zero: fail on
	// the first refusal.
	RefusedWait time.Duration
	// ReleaseTimeout is how long a holder that agreed to release the lock
	// (a librbd client with the automatic policy) has to do it, from its
	// first agreement: librbd flushes its I/O and closes its journal
	// first, which may wait for its commit age (rbd_journal_commit_age,
	// 5 s). Zero: DefaultReleaseTimeout.
	ReleaseTimeout time.Duration
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
	// SnapCreate and SnapRemove perform the snapshot requests librbd
	// clients proxy to the owner (`rbd snap create/rm`, rbd-mirror's sync
	// points); see snapshots.go. Nil: answered with -EOPNOTSUPP.
	SnapCreate func(ctx context.Context, ns rbdnotify.SnapshotNamespace, name string, flags uint64) error
	SnapRemove func(ctx context.Context, ns rbdnotify.SnapshotNamespace, name string) error
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
	if o.ReleaseTimeout <= 0 {
		o.ReleaseTimeout = DefaultReleaseTimeout
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

// DefaultReleaseTimeout is Options.ReleaseTimeout's default.
const DefaultReleaseTimeout = 30 * time.Second

// Lock is an acquired exclusive lock. Its methods are safe for concurrent
// use.
type Lock struct {
	pool objstore.Pool
	oid  string
	o    Options
	// log is the logger of Acquire's context (it carries the request's
	// values, e.g. the volume id).
	log klog.Logger

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
	l := &Lock{pool: pool, oid: oid, o: o, log: klog.FromContext(ctx), async: map[rbdnotify.AsyncRequestID]bool{}, releasedC: make(chan struct{}, 1)}
	// Background work outlives Acquire's context but keeps its values.
	l.ctx, l.cancel = context.WithCancel(context.WithoutCancel(ctx))
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
		if cerr := w.Close(ctx); cerr != nil {
			l.log.V(2).Info("Closing the header watch after a failed lock acquisition", "object", oid, "err", cerr)
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
	l.log.V(1).Info("Image lock acquired", "object", oid, "cookie", l.Cookie())
	l.notifyAsync(rbdnotify.AcquiredLock{Client: l.ClientID()})
	return l, nil
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
		werr = w.Close(ctx)
	}
	if err != nil {
		return fmt.Errorf("unlock %s: %w", l.oid, err)
	}
	if werr != nil {
		return fmt.Errorf("unlock %s: close watch: %w", l.oid, werr)
	}
	l.log.V(1).Info("Image lock released", "object", l.oid)
	return nil
}

// notify sends a lock notification and waits (bounded) for the watchers.
func (l *Lock) notify(ctx context.Context, p rbdnotify.Payload) {
	ctx, cancel := context.WithTimeout(ctx, l.o.NotifyTimeout)
	defer cancel()
	if _, err := l.pool.Notify(ctx, l.oid, rbdnotify.Marshal(p), l.o.NotifyTimeout); err != nil {
		l.log.V(2).Info("Lock notification not acknowledged by every watcher", "object", l.oid, "op", p.Op(), "err", err)
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
	l.log.Error(err, "Image lock lost: the device stops taking writes", "object", l.oid)
	l.headerUpdated()
}
