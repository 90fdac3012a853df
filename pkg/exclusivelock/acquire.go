package exclusivelock

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"time"

	clslock "github.com/csi-rbdj/csi-rbdj/pkg/cls/lock"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
)

// Acquiring the lock: taking the cls lock, asking a live holder to release
// it, and breaking the lock of a dead or frozen holder after fencing it.

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
		l.log.Info("Fencing the holder of an image lock before breaking it", "object", l.oid, "holder", holder.String(), "reason", why)
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
		l.log.Info("Fenced the holder of an image lock and broke its lock", "object", l.oid, "holder", holder.String(), "duration", time.Since(start).Round(time.Millisecond))
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
	// Each wait runs from the holder's first answer of its kind: a mirror
	// daemon that refused for most of RefusedWait and then agrees still
	// gets the whole ReleaseTimeout to let go.
	var refusedUntil time.Time // set at the first refusal waited out
	var agreedUntil time.Time  // set at the first agreement
	for {
		// A ReleasedLock that arrived before this request cannot answer it.
		select {
		case <-l.releasedC:
		default:
		}
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
			refused := fmt.Errorf("lock %s: %w: held by %s, which refused to release it (%v)", l.oid, ErrLocked, holder, syscall.Errno(-res.result))
			if syscall.Errno(-res.result) != syscall.EROFS || holder.Description != "" || l.o.RefusedWait <= 0 {
				return "", refused
			}
			now := time.Now()
			if refusedUntil.IsZero() {
				refusedUntil = now.Add(l.o.RefusedWait)
				l.log.Info("Lock holder refused to release the lock; asking again for a while (a mirror daemon lets go once it notices a promotion)",
					"object", l.oid, "holder", holder.String(), "for", l.o.RefusedWait)
			}
			if !now.Before(refusedUntil) {
				return "", fmt.Errorf("%w, and still refused after %v", refused, l.o.RefusedWait)
			}
			err := l.waitReleased(ctx, id, min(reRequestInterval, time.Until(refusedUntil)))
			if err == nil {
				return "", nil
			}
			if ctx.Err() != nil {
				return "", fmt.Errorf("%w; asking it again: %w", refused, ctx.Err())
			}
			continue
		}
		// The owner agreed to release the lock (a librbd client with the
		// automatic policy): wait for it to do so.
		if agreedUntil.IsZero() {
			agreedUntil = time.Now().Add(l.o.ReleaseTimeout)
		}
		wait := min(reRequestInterval, time.Until(agreedUntil))
		err = l.waitReleased(ctx, id, wait)
		if err == nil {
			return "", nil
		}
		if ctx.Err() != nil {
			return "", fmt.Errorf("lock %s: waiting for %s to release it: %w", l.oid, holder, ctx.Err())
		}
		if !time.Now().Before(agreedUntil) {
			return "", fmt.Errorf("lock %s: %w: held by %s, which agreed to release it but did not within %v", l.oid, ErrLocked, holder, l.o.ReleaseTimeout)
		}
		// librbd answers 0 without releasing anything when the request
		// arrives while it is still taking the lock (ExclusiveLock's
		// accept_request is false outside STATE_LOCKED, and its result
		// then 0): a client that just released the lock on request and
		// took it back for its queued I/O, for one. librbd's own requester
		// asks again when the owner acked but did not release
		// (ImageWatcher::handle_request_lock); so do we. Asking a holder
		// that is already releasing again is harmless: it answers 0 and
		// releases once.
		l.log.Info("Lock holder agreed to release the lock but still holds it; asking again", "object", l.oid, "holder", holder.String(), "after", wait)
	}
}

// reRequestInterval is how long a holder that agreed to release the lock
// has before it is asked again (within Options.ReleaseTimeout). librbd
// asks again after client_notify_timeout (10 s); a holder answering while
// it was still taking the lock (see deadHolder) would cost that long on
// every handover that races it.
const reRequestInterval = 2 * time.Second

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
		l.log.V(1).Info("Lock holder answered a lock request", "object", l.oid, "answered", ok, "result", r.Result, "duration", time.Since(start).Round(time.Millisecond))
		return out, nil
	}
	for _, w := range res.TimedOut {
		if holds(w) {
			l.log.Info("Lock holder did not answer a lock request", "object", l.oid, "holder", fmt.Sprintf("client.%d", gid), "timeout", l.o.OwnerTimeout)
			return requestResult{timedOut: true}, nil
		}
	}
	// Its watch went away meanwhile: it died.
	return requestResult{gone: true}, nil
}

// waitReleased waits until the lock of id is gone, for at most timeout: it
// returns as soon as a ReleasedLock notification arrives (the holder may
// want the lock back at once: the caller must try to take it without
// delay), and polls in case the notification is lost.
func (l *Lock) waitReleased(ctx context.Context, id clslock.LockerID, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
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
