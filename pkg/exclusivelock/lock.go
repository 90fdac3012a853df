// Package exclusivelock is librbd's managed exclusive lock on an image
// header: the cls lock "rbd_lock" (exclusive, tag "internal", cookie
// "auto <watch handle>") held together with a watch on rbd_header.<id>, so
// that librbd, rbd-mirror and other csi-rbdj nodes see a live owner.
//
// A lock whose holder no longer watches the header belongs to a dead
// client. It is broken only after the holder is fenced (blocklisted), so a
// holder that was merely frozen cannot write after the new owner took over
// (DESIGN.md "Ownership, epochs and fencing").
package exclusivelock

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	clslock "github.com/csi-rbdj/csi-rbdj/pkg/cls/lock"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"k8s.io/klog/v2"
)

// Names librbd uses.
const (
	LockName     = "rbd_lock"
	LockTag      = "internal"
	CookiePrefix = "auto "
)

// ErrLocked means another live client owns the lock.
var ErrLocked = errors.New("image is locked by another client")

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
	// FenceExpire is how long a fenced address stays blocklisted.
	FenceExpire time.Duration
	// Description is recorded with the lock (e.g. the node's name) and
	// shown to whoever finds it held.
	Description string
	// Dead lists addresses known to be dead clients (a restarted node
	// plugin's previous incarnation): their locks are fenced and broken
	// without waiting for their watches to time out.
	Dead []string
	// OnNotify receives header notifications other than lock traffic (e.g.
	// header updates after a resize). It must not block.
	OnNotify func(payload []byte)
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

// Lock is an acquired exclusive lock.
type Lock struct {
	pool   objstore.Pool
	oid    string
	o      Options
	mu     sync.Mutex
	watch  objstore.Watch
	cookie string
	lost   error
}

// Acquire takes the exclusive lock on header object oid. If a live client
// holds it, the error wraps ErrLocked and names the holder.
func Acquire(ctx context.Context, pool objstore.Pool, oid string, o Options) (*Lock, error) {
	if o.FenceExpire == 0 {
		o.FenceExpire = time.Hour
	}
	l := &Lock{pool: pool, oid: oid, o: o}
	w, err := pool.Watch(ctx, oid, handler{l})
	if err != nil {
		return nil, fmt.Errorf("lock %s: watch: %w", oid, err)
	}
	l.watch = w
	l.cookie = CookiePrefix + strconv.FormatUint(w.Cookie(), 10)
	if err := l.acquire(ctx); err != nil {
		w.Close()
		return nil, err
	}
	return l, nil
}

func (l *Lock) acquire(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		op := &objstore.WriteOp{}
		clslock.Lock(op, LockName, clslock.LockExclusive, l.cookie, LockTag, l.o.Description, 0, 0)
		err := l.pool.Operate(ctx, l.oid, op)
		if err == nil {
			return nil
		}
		if !errors.Is(err, objstore.ErrBusy) && !errors.Is(err, objstore.ErrExists) || attempt >= 3 {
			return fmt.Errorf("lock %s: %w", l.oid, err)
		}
		holder, id, err := l.holder(ctx)
		if err != nil {
			return err
		}
		if holder == nil {
			continue // released meanwhile
		}
		alive, err := l.alive(ctx, id)
		if err != nil {
			return err
		}
		if alive && !l.knownDead(holder.Addr) {
			return fmt.Errorf("lock %s: %w: held by %s", l.oid, ErrLocked, holder)
		}
		if l.o.Fencer == nil {
			return fmt.Errorf("lock %s: %w: held by %s, which is gone, but no fencer is configured to break it safely", l.oid, ErrLocked, holder)
		}
		klog.InfoS("Fencing the dead holder of an image lock before breaking it", "object", l.oid, "holder", holder.String())
		if err := l.o.Fencer.Blocklist(ctx, holder.Addr, l.o.FenceExpire); err != nil {
			return fmt.Errorf("lock %s: fence %s: %w", l.oid, holder, err)
		}
		op = &objstore.WriteOp{}
		clslock.BreakLock(op, LockName, id.Cookie, id.Locker)
		if err := l.pool.Operate(ctx, l.oid, op); err != nil && !errors.Is(err, objstore.ErrNotFound) {
			return fmt.Errorf("lock %s: break lock of %s: %w", l.oid, holder, err)
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
		if info.Tag != LockTag || !strings.HasPrefix(id.Cookie, CookiePrefix) {
			return nil, id, fmt.Errorf("lock %s: held by %s with tag %q cookie %q: not a managed lock; remove it by hand", l.oid, id.Locker, info.Tag, id.Cookie)
		}
		return &Holder{Client: id.Locker.String(), Addr: li.Addr.ClientAddr(), Cookie: id.Cookie, Description: li.Description}, id, nil
	}
	return nil, clslock.LockerID{}, nil
}

// alive reports whether the holder still watches the header with the
// handle its cookie names (librbd's test for a live lock owner).
func (l *Lock) alive(ctx context.Context, id clslock.LockerID) (bool, error) {
	ws, err := l.pool.ListWatchers(ctx, l.oid)
	if err != nil {
		return false, fmt.Errorf("lock %s: list watchers: %w", l.oid, err)
	}
	for _, w := range ws {
		if int64(w.Client.ID) == id.Locker.Num && CookiePrefix+strconv.FormatUint(w.Cookie, 10) == id.Cookie {
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
	return Holder{Client: c.Name(), Addr: c.Addr, Cookie: l.cookie, Description: l.o.Description}
}

// Err returns why the lock was lost, or nil while it is held.
func (l *Lock) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lost
}

// Release unlocks and stops watching the header.
func (l *Lock) Release(ctx context.Context) error {
	op := &objstore.WriteOp{}
	clslock.Unlock(op, LockName, l.cookie)
	err := l.pool.Operate(ctx, l.oid, op)
	if errors.Is(err, objstore.ErrNotFound) {
		err = nil // already broken
	}
	werr := l.watch.Close()
	if err != nil {
		return fmt.Errorf("unlock %s: %w", l.oid, err)
	}
	return werr
}

type handler struct{ l *Lock }

func (h handler) HandleNotify(n *objstore.Notification) {
	n.Ack(nil)
	if f := h.l.o.OnNotify; f != nil {
		f(n.Payload)
	}
}

func (h handler) HandleWatchError(err error) {
	// The cookie names the watch handle; without the watch, others see the
	// owner as dead. Issue 6 re-watches and moves the cookie; until then the
	// lock is reported lost so that the device stops taking writes.
	h.l.mu.Lock()
	h.l.lost = fmt.Errorf("lock %s: header watch lost: %w", h.l.oid, err)
	h.l.mu.Unlock()
	klog.ErrorS(err, "Image header watch lost; ownership can no longer be shown to others", "object", h.l.oid)
}
