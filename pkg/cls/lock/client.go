package clslock

import (
	"context"
	"fmt"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/cls/clsenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// className is the object class's name in Ceph.
const className = "lock"

// Reader runs a compound read on one object; objstore.Pool is one.
type Reader = clsenc.Reader

// Lock adds lock.lock to op: the caller (identified by its entity name and
// cookie) takes lock name of type typ, tagged tag. A hold with a duration
// of zero or less never expires; a positive duration is capped at 2^32-1
// seconds, as Ceph converts it. description is free-form text for people.
//
// The operation fails with objstore.ErrBusy if another locker holds the lock
// exclusively, holds it with another type, or with another tag;
// objstore.ErrExists if the caller holds it already (unless flags has
// FlagMayRenew); objstore.ErrNotFound if flags has FlagMustRenew and the
// caller does not hold it; objstore.ErrInvalid for an empty name, an invalid
// type or both flags. The object is created if it does not exist.
func Lock(op *objstore.WriteOp, name string, typ LockType, cookie, tag, description string, duration time.Duration, flags Flags) {
	exec(op, "lock", LockOp{
		Name: name, Type: typ, Cookie: cookie, Tag: tag, Description: description,
		Duration: DurationUTime(duration), Flags: flags,
	})
}

// Unlock adds lock.unlock to op: the caller releases its hold with cookie.
// It fails with objstore.ErrNotFound if the caller does not hold the lock
// with that cookie (including when the hold expired).
func Unlock(op *objstore.WriteOp, name, cookie string) {
	exec(op, "unlock", UnlockOp{Name: name, Cookie: cookie})
}

// BreakLock adds lock.break_lock to op: it removes locker's hold with
// cookie, whoever the caller is. It fails with objstore.ErrNotFound if there
// is no such hold. Break a dead holder's lock only after fencing it
// (blocklisting its address), or it may go on writing.
func BreakLock(op *objstore.WriteOp, name, cookie string, locker EntityName) {
	exec(op, "break_lock", BreakOp{Name: name, Locker: locker, Cookie: cookie})
}

// AssertLocked adds lock.assert_locked to op: the operation fails with
// objstore.ErrBusy unless the caller holds lock name with cookie, with type
// typ and tag tag, so that the rest of op applies only while it does.
func AssertLocked(op *objstore.WriteOp, name string, typ LockType, cookie, tag string) {
	exec(op, "assert_locked", AssertOp{Name: name, Type: typ, Cookie: cookie, Tag: tag})
}

// SetCookie adds lock.set_cookie to op: the caller's hold with cookie
// becomes a hold with newCookie, keeping its expiration, address and
// description. It fails with objstore.ErrBusy if the caller does not hold
// the lock with cookie, type typ and tag tag, or already holds it with
// newCookie.
func SetCookie(op *objstore.WriteOp, name string, typ LockType, cookie, tag, newCookie string) {
	exec(op, "set_cookie", SetCookieOp{Name: name, Type: typ, Cookie: cookie, Tag: tag, NewCookie: newCookie})
}

func exec(op *objstore.WriteOp, method string, in cephenc.Encodable) {
	op.Exec(className, method, cephenc.Marshal(in))
}

// GetLockInfo reads lock name of object oid: its holders, type and tag,
// without the holders whose hold has expired. A lock nobody ever took has
// no holders and type LockNone; a missing object is objstore.ErrNotFound.
// As on Ceph, reading an exclusive-ephemeral lock whose holder expired fails
// with EIO (the class would have to remove the object, which a read cannot).
func GetLockInfo(ctx context.Context, r Reader, oid, name string) (LockInfo, error) {
	li, err := clsenc.CallDecode[LockInfo](ctx, r, oid, className, "get_info", cephenc.Marshal(GetInfoOp{Name: name}))
	if err != nil {
		return LockInfo{}, fmt.Errorf("get lock %q info: %w", name, err)
	}
	return li, nil
}

// ListLocks returns the names of the locks of object oid in byte order,
// including locks that have no holder left.
func ListLocks(ctx context.Context, r Reader, oid string) ([]string, error) {
	reply, err := clsenc.CallDecode[ListLocksReply](ctx, r, oid, className, "list_locks", nil)
	if err != nil {
		return nil, fmt.Errorf("list locks: %w", err)
	}
	return reply.Locks, nil
}
