package clslock

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/cls/clsenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// xattrPrefix starts the name of the xattr that holds each lock's state
// (LOCK_PREFIX in cls_lock.cc).
const xattrPrefix = "lock."

// XattrName returns the name of the xattr that holds lock name's state, an
// encoded LockInfo.
func XattrName(name string) string { return xattrPrefix + name }

// Class returns the "lock" object class: every method of Ceph 16's cls_lock
// with the same inputs, outputs, on-object state and return codes, timed by
// the local clock.
func Class() objstore.Class { return ClassWithClock(time.Now) }

// ClassWithClock returns the class with now as its clock, which decides
// when holds expire (Ceph uses the OSD's clock).
//
// Each lock's state is an encoded LockInfo in the object's xattr
// XattrName(name). A lock records the caller as objstore.MethodContext's
// Caller reports it: entity name client.<ID>, and the address parsed by
// ParseEntityAddr and typed v1, as Ceph records every holder's address.
func ClassWithClock(now func() time.Time) objstore.Class {
	s := server{now: now}
	return objstore.Class{
		"lock":          {Write: true, Call: s.lock},
		"unlock":        {Write: true, Call: s.unlock},
		"break_lock":    {Write: true, Call: s.breakLock},
		"get_info":      {Call: s.getInfo},
		"list_locks":    {Call: listLocks},
		"assert_locked": {Call: s.assertLocked},
		"set_cookie":    {Write: true, Call: s.setCookie},
	}
}

type server struct {
	now func() time.Time
}

// readLock is read_lock: the state of lock name without its expired
// holders. A lock that was never taken on an existing object is the zero
// state; on a missing object it is objstore.ErrNotFound (cls_cxx_getxattr's
// -ENOENT, where a missing xattr is -ENODATA). An undecodable state is -EIO.
// An ephemeral lock left without holders removes the object: in a write
// method, as in Ceph, a failure to remove is only logged (ignored here); a
// read-only method fails with -EIO, which is what an OSD returns for a
// method not marked as writing that tries to write.
func (s server) readLock(ctx objstore.MethodContext, name string, write bool) (LockInfo, error) {
	b, err := ctx.GetXattr(XattrName(name))
	if errors.Is(err, objstore.ErrNotFound) {
		if _, err := ctx.Stat(); err != nil {
			return LockInfo{}, err
		}
		return LockInfo{Lockers: map[LockerID]LockerInfo{}}, nil
	}
	if err != nil {
		return LockInfo{}, err
	}
	var li LockInfo
	if err := cephenc.Unmarshal(b, &li); err != nil {
		return LockInfo{}, fmt.Errorf("lock %q: %w: %w", name, syscall.EIO, err)
	}
	now := UTimeOf(s.now())
	maps.DeleteFunc(li.Lockers, func(_ LockerID, info LockerInfo) bool {
		return !info.Expiration.IsZero() && info.Expiration.Before(now)
	})
	if len(li.Lockers) == 0 && li.Type == LockExclusiveEphemeral {
		if !write {
			return LockInfo{}, fmt.Errorf("lock %q: expired ephemeral lock: a read cannot remove the object: %w", name, syscall.EIO)
		}
		_ = ctx.Remove()
	}
	return li, nil
}

func writeLock(ctx objstore.MethodContext, name string, li LockInfo) error {
	return ctx.SetXattr(XattrName(name), cephenc.Marshal(li))
}

// caller is the locker id of the calling client with cookie, and its
// address as Ceph records it.
func caller(ctx objstore.MethodContext, cookie string) (LockerID, EntityAddr, error) {
	c := ctx.Caller()
	addr, err := ParseEntityAddr(c.Addr)
	if err != nil {
		// Ceph always knows the address of a client; a backend that does
		// not cannot let it lock, as nobody could fence it.
		return LockerID{}, EntityAddr{}, fmt.Errorf("caller: %w: %w", objstore.ErrInvalid, err)
	}
	addr.Type = AddrLegacy
	return LockerID{Locker: ClientName(c.ID), Cookie: cookie}, addr, nil
}

// lock is lock_op / lock_obj.
func (s server) lock(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	var op LockOp
	if err := clsenc.DecodeInput(in, &op); err != nil {
		return nil, err
	}
	failIfExists := op.Flags&FlagMayRenew == 0
	failIfMissing := op.Flags&FlagMustRenew != 0
	switch {
	case !op.Type.valid():
		return nil, fmt.Errorf("lock %q: type %d: %w", op.Name, op.Type, objstore.ErrInvalid)
	case op.Name == "":
		return nil, fmt.Errorf("lock: empty name: %w", objstore.ErrInvalid)
	case !failIfExists && failIfMissing:
		return nil, fmt.Errorf("lock %q: may-renew and must-renew together: %w", op.Name, objstore.ErrInvalid)
	}
	li, err := s.readLock(ctx, op.Name, true)
	if err != nil && !errors.Is(err, objstore.ErrNotFound) {
		return nil, err
	}
	if li.Lockers == nil {
		li.Lockers = map[LockerID]LockerInfo{}
	}
	id, addr, err := caller(ctx, op.Cookie)
	if err != nil {
		return nil, err
	}
	// The tag is checked before the caller's own hold is dropped for a
	// renewal, so that a renewal cannot change the tag.
	if len(li.Lockers) > 0 && op.Tag != li.Tag {
		return nil, fmt.Errorf("lock %q: held with another tag: %w", op.Name, objstore.ErrBusy)
	}
	if _, held := li.Lockers[id]; held {
		if failIfExists && !failIfMissing {
			return nil, fmt.Errorf("lock %q: already held by %s with cookie %q: %w", op.Name, id.Locker, id.Cookie, objstore.ErrExists)
		}
		delete(li.Lockers, id)
	} else if failIfMissing {
		return nil, fmt.Errorf("lock %q: not held by %s with cookie %q: %w", op.Name, id.Locker, id.Cookie, objstore.ErrNotFound)
	}
	if len(li.Lockers) > 0 {
		if op.Type.exclusive() {
			return nil, fmt.Errorf("lock %q: held by another locker: %w", op.Name, objstore.ErrBusy)
		}
		if li.Type != op.Type {
			return nil, fmt.Errorf("lock %q: held as %s: %w", op.Name, li.Type, objstore.ErrBusy)
		}
	}
	li.Type, li.Tag = op.Type, op.Tag
	var expiration UTime
	if !op.Duration.IsZero() {
		expiration = UTimeOf(s.now()).Add(op.Duration)
	}
	li.Lockers[id] = LockerInfo{Expiration: expiration, Addr: addr, Description: op.Description}
	return nil, writeLock(ctx, op.Name, li)
}

// removeLock is remove_lock: it drops locker's hold with cookie.
func (s server) removeLock(ctx objstore.MethodContext, name string, locker EntityName, cookie string) error {
	li, err := s.readLock(ctx, name, true)
	if err != nil {
		return err
	}
	id := LockerID{Locker: locker, Cookie: cookie}
	if _, ok := li.Lockers[id]; !ok {
		return fmt.Errorf("lock %q: not held by %s with cookie %q: %w", name, locker, cookie, objstore.ErrNotFound)
	}
	delete(li.Lockers, id)
	if li.Type == LockExclusiveEphemeral {
		if len(li.Lockers) > 0 {
			// Ceph asserts that an exclusive lock had one holder; only a
			// corrupt state has more.
			return fmt.Errorf("lock %q: ephemeral lock with %d more holders: %w", name, len(li.Lockers), syscall.EIO)
		}
		return ctx.Remove()
	}
	return writeLock(ctx, name, li)
}

func (s server) unlock(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	var op UnlockOp
	if err := clsenc.DecodeInput(in, &op); err != nil {
		return nil, err
	}
	return nil, s.removeLock(ctx, op.Name, ClientName(ctx.Caller().ID), op.Cookie)
}

func (s server) breakLock(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	var op BreakOp
	if err := clsenc.DecodeInput(in, &op); err != nil {
		return nil, err
	}
	return nil, s.removeLock(ctx, op.Name, op.Locker, op.Cookie)
}

func (s server) getInfo(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	var op GetInfoOp
	if err := clsenc.DecodeInput(in, &op); err != nil {
		return nil, err
	}
	li, err := s.readLock(ctx, op.Name, false)
	if err != nil {
		return nil, err
	}
	return cephenc.Marshal(li), nil
}

// listLocks ignores its input, as Ceph does.
func listLocks(ctx objstore.MethodContext, _ []byte) ([]byte, error) {
	xattrs, err := ctx.GetXattrs()
	if err != nil {
		return nil, err
	}
	var reply ListLocksReply
	for _, k := range slices.Sorted(maps.Keys(xattrs)) {
		if name, ok := strings.CutPrefix(k, xattrPrefix); ok {
			reply.Locks = append(reply.Locks, name)
		}
	}
	return cephenc.Marshal(reply), nil
}

// heldByCaller checks what assert_locked and set_cookie require: lock name
// is held by the caller with cookie, with type typ and tag tag. It returns
// the lock's state and the caller's id.
func (s server) heldByCaller(ctx objstore.MethodContext, name string, typ LockType, cookie, tag string, write bool) (LockInfo, LockerID, error) {
	switch {
	case !typ.valid():
		return LockInfo{}, LockerID{}, fmt.Errorf("lock %q: type %d: %w", name, typ, objstore.ErrInvalid)
	case name == "":
		return LockInfo{}, LockerID{}, fmt.Errorf("lock: empty name: %w", objstore.ErrInvalid)
	}
	li, err := s.readLock(ctx, name, write)
	if err != nil {
		return LockInfo{}, LockerID{}, err
	}
	id := LockerID{Locker: ClientName(ctx.Caller().ID), Cookie: cookie}
	switch _, held := li.Lockers[id]; {
	case len(li.Lockers) == 0:
		err = fmt.Errorf("lock %q: not locked: %w", name, objstore.ErrBusy)
	case li.Type != typ:
		err = fmt.Errorf("lock %q: held as %s, not %s: %w", name, li.Type, typ, objstore.ErrBusy)
	case li.Tag != tag:
		err = fmt.Errorf("lock %q: held with tag %q, not %q: %w", name, li.Tag, tag, objstore.ErrBusy)
	case !held:
		err = fmt.Errorf("lock %q: not held by %s with cookie %q: %w", name, id.Locker, cookie, objstore.ErrBusy)
	}
	return li, id, err
}

func (s server) assertLocked(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	var op AssertOp
	if err := clsenc.DecodeInput(in, &op); err != nil {
		return nil, err
	}
	_, _, err := s.heldByCaller(ctx, op.Name, op.Type, op.Cookie, op.Tag, false)
	return nil, err
}

func (s server) setCookie(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	var op SetCookieOp
	if err := clsenc.DecodeInput(in, &op); err != nil {
		return nil, err
	}
	li, id, err := s.heldByCaller(ctx, op.Name, op.Type, op.Cookie, op.Tag, true)
	if err != nil {
		return nil, err
	}
	newID := LockerID{Locker: id.Locker, Cookie: op.NewCookie}
	if _, ok := li.Lockers[newID]; ok {
		return nil, fmt.Errorf("lock %q: cookie %q in use: %w", op.Name, op.NewCookie, objstore.ErrBusy)
	}
	li.Lockers[newID] = li.Lockers[id]
	delete(li.Lockers, id)
	return nil, writeLock(ctx, op.Name, li)
}
