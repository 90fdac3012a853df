package clslock_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	clslock "github.com/csi-rbdj/csi-rbdj/pkg/cls/lock"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local/localtest"
)

// TestLocalBackend has two clients of one local directory contend for
// librbd's image lock the way the node plugin takes over from a dead owner:
// the second sees the holder, fences its address, breaks its lock and takes
// it, after which the first can no longer write under the lock.
func TestLocalBackend(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	_, pa := localtest.Open(t, dir, local.Options{NoSync: true})
	cb, pb := localtest.Open(t, dir, local.Options{NoSync: true})
	const oid, name, tag = "rbd_header.10257c397567", "rbd_lock", "internal"
	cookieA, cookieB := "auto 1", "auto 2"

	lock := func(p objstore.Pool, cookie string) error {
		var op objstore.WriteOp
		clslock.Lock(&op, name, clslock.LockExclusive, cookie, tag, "", 0, 0)
		return p.Operate(ctx, oid, &op)
	}
	if err := lock(pa, cookieA); err != nil {
		t.Fatal(err)
	}
	if err := lock(pb, cookieB); !errors.Is(err, objstore.ErrBusy) {
		t.Fatalf("second client locks: %v, want EBUSY", err)
	}
	guardedWrite := func(p objstore.Pool, cookie string) error {
		var op objstore.WriteOp
		clslock.AssertLocked(&op, name, clslock.LockExclusive, cookie, tag)
		op.WriteFull([]byte("written by " + p.Client().Name()))
		return p.Operate(ctx, oid, &op)
	}
	if err := guardedWrite(pb, cookieB); !errors.Is(err, objstore.ErrBusy) {
		t.Fatalf("write guarded by a lock the writer does not hold: %v, want EBUSY", err)
	}
	if err := guardedWrite(pa, cookieA); err != nil {
		t.Fatal(err)
	}

	info, err := clslock.GetLockInfo(ctx, pb, oid, name)
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != clslock.LockExclusive || info.Tag != tag || len(info.Lockers) != 1 {
		t.Fatalf("lock info %+v", info)
	}
	var holder clslock.LockerID
	var holderInfo clslock.LockerInfo
	for id, li := range info.Lockers {
		holder, holderInfo = id, li
	}
	if holder.Locker.String() != pa.Client().Name() || holder.Cookie != cookieA || holderInfo.Addr.ClientAddr() != pa.Client().Addr {
		t.Fatalf("holder %s %q at %s, want %s %q at %s", holder.Locker, holder.Cookie, holderInfo.Addr.ClientAddr(),
			pa.Client().Name(), cookieA, pa.Client().Addr)
	}

	// The state is where Ceph keeps it.
	var rop objstore.ReadOp
	x := rop.GetXattr(clslock.XattrName(name))
	if err := pb.Read(ctx, oid, &rop); err != nil {
		t.Fatal(err)
	}
	var stored clslock.LockInfo
	if err := cephenc.Unmarshal(x.Value(), &stored); err != nil || !stored.Equal(info) {
		t.Fatalf("xattr lock.%s holds %+v, %v", name, stored, err)
	}

	switch locks, err := clslock.ListLocks(ctx, pb, oid); {
	case errors.Is(err, objstore.ErrNotSupp):
		t.Log("objstore/local's MethodContext cannot list xattrs yet: list_locks is not supported there")
	case err != nil || !slices.Equal(locks, []string{name}):
		t.Errorf("ListLocks = %q, %v", locks, err)
	}

	// Fence, then break.
	if err := cb.Blocklist(ctx, holderInfo.Addr.ClientAddr(), time.Minute); err != nil {
		t.Fatal(err)
	}
	var brk objstore.WriteOp
	clslock.BreakLock(&brk, name, holder.Cookie, holder.Locker)
	if err := pb.Operate(ctx, oid, &brk); err != nil {
		t.Fatal(err)
	}
	if err := lock(pb, cookieB); err != nil {
		t.Fatal(err)
	}

	// The old owner's guarded writes fail; the new owner's succeed.
	if err := guardedWrite(pa, cookieA); !errors.Is(err, objstore.ErrBlocklisted) {
		t.Fatalf("the fenced owner's write under the lock: %v, want ESHUTDOWN", err)
	}
	if err := guardedWrite(pb, cookieB); err != nil {
		t.Fatal(err)
	}

	info, err = clslock.GetLockInfo(ctx, pb, oid, name)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := info.Lockers[clslock.LockerID{Locker: clslock.ClientName(pb.Client().ID), Cookie: cookieB}]; !ok || len(info.Lockers) != 1 {
		t.Fatalf("after the takeover: %+v", info)
	}
	var unlock objstore.WriteOp
	clslock.Unlock(&unlock, name, cookieB)
	if err := pb.Operate(ctx, oid, &unlock); err != nil {
		t.Fatal(err)
	}
	if info, err := clslock.GetLockInfo(ctx, pb, oid, name); err != nil || len(info.Lockers) != 0 {
		t.Fatalf("after unlock: %+v, %v", info, err)
	}
}
