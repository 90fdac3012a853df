package exclusivelock

import (
	"context"
	"errors"
	"fmt"
	"time"

	clslock "github.com/csi-rbdj/csi-rbdj/pkg/cls/lock"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
)

// Lost header watches: re-registering the watch and moving the lock's
// cookie to the new handle (librbd's ManagedLock reacquire).

func (h *handler) HandleWatchError(_ context.Context, err error) {
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
	l.log.Info("Image header watch lost; re-registering it", "object", l.oid, "err", err)
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
		l.log.Info("Re-registering the image header watch failed; retrying", "object", l.oid, "err", err, "backoff", backoff)
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
	if err := old.Close(ctx); err != nil {
		l.log.V(2).Info("Closing the lost header watch", "object", l.oid, "err", err)
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
	// librados may give the new watch the handle of the old one (it is the
	// address of its linger op): the lock already carries that cookie, and
	// lock.set_cookie to a cookie that is held answers EBUSY, which would
	// read as a broken lock. librbd skips the reacquire then too
	// (ManagedLock: "skipping reacquire since cookie still valid").
	if held && newCookie != oldCookie {
		op := &objstore.WriteOp{}
		clslock.SetCookie(op, LockName, clslock.LockExclusive, oldCookie, LockTag, newCookie)
		err = l.pool.Operate(ctx, l.oid, op)
		if err != nil {
			if cerr := w.Close(ctx); cerr != nil {
				l.log.V(2).Info("Closing a new header watch", "object", l.oid, "err", cerr)
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
	l.log.Info("Image header watch re-registered; the lock cookie follows the new watch", "object", l.oid, "cookie", newCookie)
	// Whatever changed while the watch was down must be re-read.
	l.headerUpdated()
	if held && !released {
		// Announce the owner's new identity (its handle changed).
		l.notify(l.ctx, rbdnotify.AcquiredLock{Client: l.ClientID()})
	}
	return nil
}
