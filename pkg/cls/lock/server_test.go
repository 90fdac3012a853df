package clslock

import (
	"context"
	"errors"
	"maps"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/classtest"
)

const testOID = "rbd_header.10257c397567"

// The two callers of the tests: a Ceph client and a local-backend client.
var (
	infoA = objstore.ClientInfo{ID: 4100, Addr: "127.0.0.1:0/3141592653"}
	infoB = objstore.ClientInfo{ID: 4200, Addr: "local:0/77"}
	nameA = ClientName(infoA.ID)
	nameB = ClientName(infoB.ID)
)

func lockStep(name string, typ LockType, cookie, tag string, d time.Duration, flags Flags) func(*objstore.WriteOp) {
	return func(op *objstore.WriteOp) { Lock(op, name, typ, cookie, tag, "desc "+cookie, d, flags) }
}

func unlockStep(name, cookie string) func(*objstore.WriteOp) {
	return func(op *objstore.WriteOp) { Unlock(op, name, cookie) }
}

func breakStep(name, cookie string, locker EntityName) func(*objstore.WriteOp) {
	return func(op *objstore.WriteOp) { BreakLock(op, name, cookie, locker) }
}

func assertStep(name string, typ LockType, cookie, tag string) func(*objstore.WriteOp) {
	return func(op *objstore.WriteOp) { AssertLocked(op, name, typ, cookie, tag) }
}

func setCookieStep(name string, typ LockType, cookie, tag, newCookie string) func(*objstore.WriteOp) {
	return func(op *objstore.WriteOp) { SetCookie(op, name, typ, cookie, tag, newCookie) }
}

// step is one operation of a scenario: client "a" or "b" runs op at the
// given time after the scenario's start and expects errno want (0: success).
type step struct {
	who  string
	at   time.Duration
	op   func(*objstore.WriteOp)
	want syscall.Errno
}

func a(op func(*objstore.WriteOp), want syscall.Errno) step {
	return step{who: "a", op: op, want: want}
}
func b(op func(*objstore.WriteOp), want syscall.Errno) step {
	return step{who: "b", op: op, want: want}
}

func (s step) after(d time.Duration) step { s.at = d; return s }

// scenario runs steps on a fresh cluster and returns it with its clients.
func scenario(t *testing.T, steps ...step) (*memCluster, map[string]*classtest.Pool) {
	t.Helper()
	c := newMemCluster()
	start := c.now
	clients := map[string]*classtest.Pool{"a": c.client(infoA.ID, infoA.Addr), "b": c.client(infoB.ID, infoB.Addr)}
	for i, s := range steps {
		c.now = start.Add(s.at)
		var op objstore.WriteOp
		s.op(&op)
		err := clients[s.who].Operate(context.Background(), testOID, &op)
		if got := objstore.Errno(err); got != s.want || (err != nil && got == 0) {
			t.Fatalf("step %d (%s, %s): err %v, want errno %d (%v)", i, s.who, op.Steps()[0].Method, err, s.want, s.want)
		}
	}
	return c, clients
}

func TestLockConflicts(t *testing.T) {
	const (
		ok     = syscall.Errno(0)
		busy   = syscall.EBUSY
		exists = syscall.EEXIST
		noent  = syscall.ENOENT
		inval  = syscall.EINVAL
	)
	tests := []struct {
		name  string
		steps []step
	}{
		{"exclusive", []step{a(lockStep("L", LockExclusive, "c", "t", 0, 0), ok)}},
		{"relock is EEXIST", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), exists),
		}},
		{"same client, other cookie is another locker", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
			a(lockStep("L", LockExclusive, "c2", "t", 0, 0), busy),
		}},
		{"other client exclusive", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
			b(lockStep("L", LockExclusive, "c", "t", 0, 0), busy),
		}},
		{"other client shared over exclusive", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
			b(lockStep("L", LockShared, "c", "t", 0, 0), busy),
		}},
		{"exclusive over shared", []step{
			a(lockStep("L", LockShared, "c", "t", 0, 0), ok),
			b(lockStep("L", LockExclusive, "c", "t", 0, 0), busy),
		}},
		{"two shared", []step{
			a(lockStep("L", LockShared, "c", "t", 0, 0), ok),
			b(lockStep("L", LockShared, "c", "t", 0, 0), ok),
			a(lockStep("L", LockShared, "c2", "t", 0, 0), ok),
		}},
		{"shared with another tag", []step{
			a(lockStep("L", LockShared, "c", "t", 0, 0), ok),
			b(lockStep("L", LockShared, "c", "u", 0, 0), busy),
		}},
		{"renew cannot change the tag", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
			a(lockStep("L", LockExclusive, "c", "u", 0, FlagMayRenew), busy),
		}},
		{"renew may change the type when alone", []step{
			a(lockStep("L", LockShared, "c", "t", 0, 0), ok),
			a(lockStep("L", LockExclusive, "c", "t", 0, FlagMayRenew), ok),
			b(lockStep("L", LockShared, "c", "t", 0, 0), busy),
		}},
		{"renew as exclusive while others share", []step{
			a(lockStep("L", LockShared, "c", "t", 0, 0), ok),
			b(lockStep("L", LockShared, "c", "t", 0, 0), ok),
			a(lockStep("L", LockExclusive, "c", "t", 0, FlagMayRenew), busy),
		}},
		{"may renew", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, FlagMayRenew), ok),
			a(lockStep("L", LockExclusive, "c", "t", 0, FlagMayRenew), ok),
		}},
		{"must renew", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, FlagMustRenew), noent),
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
			a(lockStep("L", LockExclusive, "c", "t", 0, FlagMustRenew), ok),
			b(lockStep("L", LockExclusive, "c", "t", 0, FlagMustRenew), noent),
		}},
		{"must renew with another tag is EBUSY first", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
			b(lockStep("L", LockExclusive, "c", "u", 0, FlagMustRenew), busy),
		}},
		{"both flags", []step{a(lockStep("L", LockExclusive, "c", "t", 0, FlagMayRenew|FlagMustRenew), inval)}},
		{"unknown flag bits are ignored", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, 0x80), ok),
			a(lockStep("L", LockExclusive, "c", "t", 0, 0x80), exists),
		}},
		{"type none", []step{a(lockStep("L", LockNone, "c", "t", 0, 0), inval)}},
		{"type 4", []step{a(lockStep("L", 4, "c", "t", 0, 0), inval)}},
		{"empty name", []step{a(lockStep("", LockExclusive, "c", "t", 0, 0), inval)}},
		{"locks are independent", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
			b(lockStep("M", LockExclusive, "c", "t", 0, 0), ok),
		}},
		{"free lock takes a new tag and type", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
			a(unlockStep("L", "c"), ok),
			b(lockStep("L", LockShared, "c", "u", 0, 0), ok),
		}},

		{"unlock on a missing object", []step{a(unlockStep("L", "c"), noent)}},
		{"unlock of a lock never taken", []step{
			a(lockStep("M", LockExclusive, "c", "t", 0, 0), ok),
			a(unlockStep("L", "c"), noent),
		}},
		{"unlock by another client", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
			b(unlockStep("L", "c"), noent),
		}},
		{"unlock with another cookie", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
			a(unlockStep("L", "d"), noent),
		}},
		{"unlock twice", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
			a(unlockStep("L", "c"), ok),
			a(unlockStep("L", "c"), noent),
			b(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
		}},

		{"break by another client", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
			b(breakStep("L", "c", nameA), ok),
			b(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
			a(unlockStep("L", "c"), noent),
		}},
		{"break names the wrong locker", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
			b(breakStep("L", "c", nameB), noent),
			b(breakStep("L", "x", nameA), noent),
		}},
		{"break one shared holder", []step{
			a(lockStep("L", LockShared, "c", "t", 0, 0), ok),
			b(lockStep("L", LockShared, "c", "t", 0, 0), ok),
			a(breakStep("L", "c", nameB), ok),
			a(assertStep("L", LockShared, "c", "t"), ok),
		}},
		{"break on a missing object", []step{b(breakStep("L", "c", nameA), noent)}},

		{"assert held", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
			a(assertStep("L", LockExclusive, "c", "t"), ok),
		}},
		{"assert wrong type, tag, cookie, client", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
			a(assertStep("L", LockShared, "c", "t"), busy),
			a(assertStep("L", LockExclusive, "c", "u"), busy),
			a(assertStep("L", LockExclusive, "d", "t"), busy),
			b(assertStep("L", LockExclusive, "c", "t"), busy),
		}},
		{"assert not locked", []step{
			a(lockStep("M", LockExclusive, "c", "t", 0, 0), ok),
			a(assertStep("L", LockExclusive, "c", "t"), busy),
		}},
		{"assert invalid", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
			a(assertStep("L", LockNone, "c", "t"), inval),
			a(assertStep("", LockExclusive, "c", "t"), inval),
		}},
		{"assert on a missing object", []step{a(assertStep("L", LockExclusive, "c", "t"), noent)}},
		{"assert guards the rest of the operation", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
			b(func(op *objstore.WriteOp) {
				AssertLocked(op, "L", LockExclusive, "c", "t")
				Lock(op, "M", LockExclusive, "c", "t", "", 0, 0)
			}, busy),
			b(lockStep("M", LockExclusive, "c", "t", 0, 0), ok), // the first M was not taken
		}},

		{"set cookie", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
			a(setCookieStep("L", LockExclusive, "c", "t", "d"), ok),
			a(assertStep("L", LockExclusive, "d", "t"), ok),
			a(assertStep("L", LockExclusive, "c", "t"), busy),
			a(unlockStep("L", "c"), noent),
			a(unlockStep("L", "d"), ok),
		}},
		{"set cookie in use", []step{
			a(lockStep("L", LockShared, "c", "t", 0, 0), ok),
			a(lockStep("L", LockShared, "d", "t", 0, 0), ok),
			a(setCookieStep("L", LockShared, "c", "t", "d"), busy),
			a(setCookieStep("L", LockShared, "c", "t", "c"), busy),
		}},
		{"set cookie not held", []step{
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), ok),
			b(setCookieStep("L", LockExclusive, "c", "t", "d"), busy),
			a(setCookieStep("L", LockShared, "c", "t", "d"), busy),
			a(setCookieStep("L", LockExclusive, "c", "u", "d"), busy),
			a(setCookieStep("L", LockExclusive, "x", "t", "d"), busy),
			a(setCookieStep("L", 7, "c", "t", "d"), inval),
			a(setCookieStep("", LockExclusive, "c", "t", "d"), inval),
		}},
		{"set cookie on a missing object", []step{a(setCookieStep("L", LockExclusive, "c", "t", "d"), noent)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { scenario(t, tt.steps...) })
	}
}

func TestGetLockInfo(t *testing.T) {
	_, cl := scenario(t,
		a(func(op *objstore.WriteOp) { Lock(op, "L", LockShared, "ca", "t", "held by a", 0, 0) }, 0),
		b(func(op *objstore.WriteOp) { Lock(op, "L", LockShared, "cb", "t", "held by b", 0, 0) }, 0),
	)
	li, err := GetLockInfo(context.Background(), cl["a"], testOID, "L")
	if err != nil {
		t.Fatal(err)
	}
	want := LockInfo{Type: LockShared, Tag: "t", Lockers: map[LockerID]LockerInfo{
		{nameA, "ca"}: {Addr: mustAddr(t, "v1:127.0.0.1:0/3141592653"), Description: "held by a"},
		{nameB, "cb"}: {Addr: mustAddr(t, "v1:local:0/77"), Description: "held by b"},
	}}
	if !li.Equal(want) {
		t.Fatalf("got %+v\nwant %+v", li, want)
	}
	// The recorded addresses are what the fencing code blocklists.
	for id, info := range li.Lockers {
		caller := map[EntityName]objstore.ClientInfo{nameA: infoA, nameB: infoB}[id.Locker]
		if info.Addr.ClientAddr() != caller.Addr || id.Locker.String() != caller.Name() {
			t.Errorf("locker %s at %s, caller %s at %s", id.Locker, info.Addr.ClientAddr(), caller.Name(), caller.Addr)
		}
	}

	li, err = GetLockInfo(context.Background(), cl["b"], testOID, "never")
	if err != nil || !li.Equal(LockInfo{}) {
		t.Errorf("lock never taken: %+v, %v", li, err)
	}
	if _, err := GetLockInfo(context.Background(), cl["b"], "missing", "L"); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("missing object: %v", err)
	}
}

func TestListLocks(t *testing.T) {
	_, cl := scenario(t,
		a(lockStep("rbd_lock", LockExclusive, "c", "internal", 0, 0), 0),
		b(lockStep("b", LockShared, "c", "", 0, 0), 0),
		b(unlockStep("b", "c"), 0),
		a(func(op *objstore.WriteOp) { op.SetXattr("lockx", nil); op.SetXattr("lock.", nil) }, 0),
	)
	locks, err := ListLocks(context.Background(), cl["a"], testOID)
	if want := []string{"", "b", "rbd_lock"}; err != nil || !slices.Equal(locks, want) {
		t.Errorf("ListLocks = %q, %v; want %q (a released lock stays listed)", locks, err, want)
	}
	if _, err := ListLocks(context.Background(), cl["a"], "missing"); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("missing object: %v", err)
	}
}

func TestOnObjectLayout(t *testing.T) {
	c, _ := scenario(t, a(func(op *objstore.WriteOp) {
		Lock(op, "rbd_lock", LockExclusive, "auto 140245", "internal", "", 30*time.Second, 0)
	}, 0))
	o := c.Object(testOID)
	if got := slices.Sorted(maps.Keys(o.Xattrs)); !slices.Equal(got, []string{"lock.rbd_lock"}) {
		t.Fatalf("xattrs %q", got)
	}
	var li LockInfo
	if err := cephenc.Unmarshal(o.Xattrs["lock.rbd_lock"], &li); err != nil {
		t.Fatal(err)
	}
	exp := UTimeOf(c.now.Add(30 * time.Second))
	want := LockInfo{Type: LockExclusive, Tag: "internal", Lockers: map[LockerID]LockerInfo{
		{nameA, "auto 140245"}: {Expiration: exp, Addr: mustAddr(t, "v1:127.0.0.1:0/3141592653")},
	}}
	if !li.Equal(want) {
		t.Errorf("stored %+v, want %+v", li, want)
	}
	if len(o.Data) != 0 {
		t.Errorf("lock wrote %d bytes of data", len(o.Data))
	}
}

func TestExpiration(t *testing.T) {
	const d = 10 * time.Second
	const ok = syscall.Errno(0)
	tests := []struct {
		name  string
		steps []step
	}{
		{"held until it expires", []step{
			a(lockStep("L", LockExclusive, "c", "t", d, 0), ok),
			b(lockStep("L", LockExclusive, "c", "t", 0, 0), syscall.EBUSY).after(d - time.Nanosecond),
			b(lockStep("L", LockExclusive, "c", "t", 0, 0), syscall.EBUSY).after(d), // expiration < now, strictly
			b(lockStep("L", LockExclusive, "c", "u", 0, 0), ok).after(d + time.Nanosecond),
		}},
		{"expired holder cannot unlock, renew or assert", []step{
			a(lockStep("L", LockExclusive, "c", "t", d, 0), ok),
			a(assertStep("L", LockExclusive, "c", "t"), syscall.EBUSY).after(2 * d),
			a(unlockStep("L", "c"), syscall.ENOENT).after(2 * d),
			a(lockStep("L", LockExclusive, "c", "t", d, FlagMustRenew), syscall.ENOENT).after(2 * d),
			a(lockStep("L", LockExclusive, "c", "t", d, 0), ok).after(2 * d), // a fresh lock
		}},
		{"renewal extends", []step{
			a(lockStep("L", LockExclusive, "c", "t", d, 0), ok),
			a(lockStep("L", LockExclusive, "c", "t", d, FlagMustRenew), ok).after(d / 2),
			b(lockStep("L", LockExclusive, "c", "t", 0, 0), syscall.EBUSY).after(d + d/4),
			b(lockStep("L", LockExclusive, "c", "t", 0, 0), ok).after(2 * d),
		}},
		{"an expired shared holder makes room", []step{
			a(lockStep("L", LockShared, "c", "t", d, 0), ok),
			b(lockStep("L", LockShared, "c", "t", 0, 0), ok),
			a(lockStep("L", LockExclusive, "c", "t", 0, 0), syscall.EBUSY).after(2 * d),
			b(lockStep("L", LockExclusive, "c", "t", 0, FlagMayRenew), ok).after(2 * d),
		}},
		{"negative duration never expires", []step{
			a(lockStep("L", LockExclusive, "c", "t", -d, 0), ok),
			b(lockStep("L", LockExclusive, "c", "t", 0, 0), syscall.EBUSY).after(1000 * time.Hour),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { scenario(t, tt.steps...) })
	}

	t.Run("expired holders are dropped from reads and writes", func(t *testing.T) {
		c, cl := scenario(t,
			a(lockStep("L", LockShared, "c", "t", d, 0), ok),
			b(lockStep("L", LockShared, "c", "t", 3*d, 0), ok),
		)
		start := c.now
		c.now = start.Add(2 * d)
		li, err := GetLockInfo(context.Background(), cl["a"], testOID, "L")
		if err != nil || len(li.Lockers) != 1 {
			t.Fatalf("after a's hold expired: %+v, %v", li, err)
		}
		if _, held := li.Lockers[LockerID{nameB, "c"}]; !held {
			t.Errorf("b's hold is gone: %+v", li)
		}
		var stored LockInfo
		_ = cephenc.Unmarshal(c.Object(testOID).Xattrs["lock.L"], &stored)
		if len(stored.Lockers) != 2 {
			t.Errorf("a read rewrote the lock: %+v", stored)
		}
		mustOperate(t, cl["b"], unlockStep("L", "c"))
		_ = cephenc.Unmarshal(c.Object(testOID).Xattrs["lock.L"], &stored)
		if len(stored.Lockers) != 0 || stored.Type != LockShared || stored.Tag != "t" {
			t.Errorf("after b's unlock the lock is %+v, want no holders, type and tag kept", stored)
		}
	})
}

// TestDurationUTime: durations convert as Ceph's utime_t(timespan) does (the
// arithmetic and UTimeOf are cephenc's, tested there).
func TestDurationUTime(t *testing.T) {
	if got := DurationUTime(1500 * time.Millisecond); got != (UTime{Sec: 1, Nsec: 500_000_000}) {
		t.Errorf("DurationUTime(1.5s) = %v", got)
	}
	if got := DurationUTime(time.Duration(1<<62) * time.Nanosecond); got.Sec != 0xffffffff {
		t.Errorf("DurationUTime(2^62 ns) = %v, want capped seconds", got)
	}
}

func TestEphemeral(t *testing.T) {
	const d = 10 * time.Second
	t.Run("release removes the object", func(t *testing.T) {
		c, _ := scenario(t,
			a(func(op *objstore.WriteOp) { op.WriteFull([]byte("data")); op.SetXattr("other", []byte("x")) }, 0),
			a(lockStep("E", LockExclusiveEphemeral, "c", "", 0, 0), 0),
			b(lockStep("E", LockExclusiveEphemeral, "c", "", 0, 0), syscall.EBUSY),
			b(lockStep("E", LockExclusive, "c", "", 0, 0), syscall.EBUSY),
			a(unlockStep("E", "c"), 0),
		)
		if o := c.Object(testOID); o.Exists {
			t.Errorf("object kept after unlock: %+v", o)
		}
	})
	t.Run("break removes the object", func(t *testing.T) {
		c, _ := scenario(t,
			a(lockStep("E", LockExclusiveEphemeral, "c", "", 0, 0), 0),
			b(breakStep("E", "c", nameA), 0),
		)
		if c.Object(testOID).Exists {
			t.Error("object kept after break")
		}
	})
	t.Run("expired", func(t *testing.T) {
		c, cl := scenario(t,
			a(func(op *objstore.WriteOp) { op.WriteFull([]byte("data")) }, 0),
			a(lockStep("E", LockExclusiveEphemeral, "c", "", d, 0), 0),
			// Failing writes drop the removal with the rest of their changes.
			b(unlockStep("E", "c"), syscall.ENOENT).after(2*d),
			a(assertStep("E", LockExclusiveEphemeral, "c", ""), syscall.EIO).after(2*d),
		)
		c.now = c.now.Add(2 * d)
		if _, err := GetLockInfo(context.Background(), cl["b"], testOID, "E"); !errors.Is(err, syscall.EIO) {
			t.Errorf("get_info of an expired ephemeral lock: %v, want EIO as from an OSD", err)
		}
		if o := c.Object(testOID); !o.Exists || string(o.Data) != "data" {
			t.Fatalf("object changed by failed calls: %+v", o)
		}
		mustOperate(t, cl["b"], lockStep("E", LockExclusiveEphemeral, "c", "", 0, 0))
		o := c.Object(testOID)
		if !o.Exists || len(o.Data) != 0 || len(o.Xattrs) != 1 {
			t.Errorf("a lock after expiry recreates the object with the lock alone: %+v", o)
		}
	})
}

func TestBadStoredState(t *testing.T) {
	c, cl := scenario(t, a(func(op *objstore.WriteOp) { op.SetXattr("lock.L", []byte{1, 2, 0, 0, 0, 0}) }, 0))
	for _, op := range []func(*objstore.WriteOp){
		lockStep("L", LockExclusive, "c", "", 0, 0), unlockStep("L", "c"), breakStep("L", "c", nameA),
		assertStep("L", LockExclusive, "c", ""), setCookieStep("L", LockExclusive, "c", "", "d"),
	} {
		if err := operate(cl["a"], op); !errors.Is(err, syscall.EIO) {
			t.Errorf("%v, want EIO", err)
		}
	}
	if _, err := GetLockInfo(context.Background(), cl["a"], testOID, "L"); !errors.Is(err, syscall.EIO) {
		t.Errorf("get_info: %v, want EIO", err)
	}

	// Ceph asserts that an ephemeral lock has a single holder; a state with
	// two is refused instead.
	two := LockInfo{Type: LockExclusiveEphemeral, Lockers: map[LockerID]LockerInfo{{nameA, "c"}: {}, {nameB, "c"}: {}}}
	c.Objects[testOID].Xattrs["lock.E"] = cephenc.Marshal(two)
	if err := operate(cl["a"], unlockStep("E", "c")); !errors.Is(err, syscall.EIO) {
		t.Errorf("unlock of a corrupt ephemeral lock: %v, want EIO", err)
	}
}

func TestBadInputs(t *testing.T) {
	c := newMemCluster()
	cl := c.client(infoA.ID, infoA.Addr)
	mustOperate(t, cl, lockStep("L", LockExclusive, "c", "", 0, 0))
	for method, m := range Class() {
		for _, in := range [][]byte{nil, {1}, {1, 2, 0, 0, 0, 0}, {1, 1, 0xff, 0xff, 0xff, 0xff}} {
			if method == "list_locks" {
				continue // ignores its input
			}
			o := c.Object(testOID)
			_, err := classtest.Call(m, o, infoA, in)
			if !errors.Is(err, syscall.EINVAL) || !errors.Is(err, cephenc.ErrMalformed) {
				t.Errorf("%s(%x): %v, want EINVAL wrapping the decoding error", method, in, err)
			}
		}
	}
	// A caller without a usable address cannot lock: nobody could fence it.
	bad := c.client(5, "")
	if err := operate(bad, lockStep("M", LockExclusive, "c", "", 0, 0)); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("lock by a caller without an address: %v", err)
	}
}

func TestClassMethods(t *testing.T) {
	want := map[string]bool{"lock": true, "unlock": true, "break_lock": true, "get_info": false,
		"list_locks": false, "assert_locked": false, "set_cookie": true}
	got := map[string]bool{}
	for name, m := range Class() {
		got[name] = m.Write
	}
	if !maps.Equal(got, want) {
		t.Errorf("methods (name: writes) %v, want %v as Ceph registers them", got, want)
	}
}

func operate(cl *classtest.Pool, build func(*objstore.WriteOp)) error {
	var op objstore.WriteOp
	build(&op)
	return cl.Operate(context.Background(), testOID, &op)
}

func mustOperate(t testing.TB, cl *classtest.Pool, build func(*objstore.WriteOp)) {
	t.Helper()
	if err := operate(cl, build); err != nil {
		t.Fatal(err)
	}
}

func mustAddr(t testing.TB, s string) EntityAddr {
	t.Helper()
	a, err := ParseEntityAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
