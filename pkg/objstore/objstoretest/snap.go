package objstoretest

import (
	"bytes"
	"slices"
	"syscall"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// readAt reads oid's data as of snapshot id (0: the head).
func readAt(t *testing.T, p objstore.Pool, oid string, id uint64) ([]byte, uint64, error) {
	t.Helper()
	op := &objstore.ReadOp{}
	op.SetSnap(id)
	r := op.Read(0, 0)
	st := op.Stat()
	if err := p.Read(ctxT(t), oid, op); err != nil {
		return nil, 0, err
	}
	return r.Data(), st.Stat().Size, nil
}

func wantAt(t *testing.T, p objstore.Pool, oid string, id uint64, want string) {
	t.Helper()
	got, size, err := readAt(t, p, oid, id)
	if err != nil {
		t.Fatalf("read %s at snapshot %d: %v", oid, id, err)
	}
	if !bytes.Equal(got, []byte(want)) || size != uint64(len(want)) {
		t.Fatalf("%s at snapshot %d = %q (size %d), want %q", oid, id, trunc(got), size, want)
	}
}

func wantMissingAt(t *testing.T, p objstore.Pool, oid string, id uint64) {
	t.Helper()
	_, _, err := readAt(t, p, oid, id)
	wantErrno(t, "read "+oid+" at a snapshot", err, syscall.ENOENT)
}

func writeSnapc(t *testing.T, p objstore.Pool, oid string, sc objstore.SnapContext, build func(op *objstore.WriteOp)) {
	t.Helper()
	mustOperate(t, p, oid, func(op *objstore.WriteOp) {
		op.SetSnapContext(sc)
		build(op)
	})
}

// testSnaps checks self-managed snapshots: clone-on-write with a snapshot
// context, reads at a snapshot, removal.
func testSnaps(t *testing.T, s *suite) {
	p := s.p
	sn, err := objstore.Snapper(p)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	s1, err := sn.SelfManagedSnapCreate(ctx)
	if err != nil {
		t.Fatalf("snap create: %v", err)
	}
	s2, err := sn.SelfManagedSnapCreate(ctx)
	if err != nil || s2 <= s1 {
		t.Fatalf("second snap create: %d, %v (first %d)", s2, err, s1)
	}
	// Snapshots are created in order: s1 first; the objects below are
	// written "between" them with the matching contexts.
	ctx1 := objstore.SnapContext{Seq: s1, Snaps: []uint64{s1}}
	ctx2 := objstore.SnapContext{Seq: s2, Snaps: []uint64{s2, s1}}

	a, b, c, d := s.oid(t), s.oid(t), s.oid(t), s.oid(t)
	for _, o := range []string{a, c, d} {
		mustOperate(t, p, o, func(op *objstore.WriteOp) {
			op.WriteFull([]byte("v1-" + o[len(o)-1:]))
			op.SetXattr("x", []byte("old"))
		})
	}
	// a: overwritten after s1 (twice: one clone), then after s2.
	writeSnapc(t, p, a, ctx1, func(op *objstore.WriteOp) { op.Write(0, []byte("V2")) })
	writeSnapc(t, p, a, ctx1, func(op *objstore.WriteOp) { op.Write(3, []byte("three")) })
	wantAt(t, p, a, s1, "v1-"+a[len(a)-1:])
	wantData(t, p, a, []byte("V2-three"))
	writeSnapc(t, p, a, ctx2, func(op *objstore.WriteOp) { op.Truncate(2) })
	wantAt(t, p, a, s2, "V2-three")
	wantAt(t, p, a, s1, "v1-"+a[len(a)-1:])
	wantData(t, p, a, []byte("V2"))

	// b: created after s1: it did not exist at s1.
	writeSnapc(t, p, b, ctx1, func(op *objstore.WriteOp) { op.Write(0, []byte("new")) })
	wantMissingAt(t, p, b, s1)
	wantAt(t, p, b, s2, "new") // not written since s2: the head
	wantData(t, p, b, []byte("new"))

	// c: removed after s1: the snapshot keeps it, with its xattrs.
	writeSnapc(t, p, c, ctx1, func(op *objstore.WriteOp) { op.Remove() })
	wantMissing(t, p, c)
	wantAt(t, p, c, s1, "v1-"+c[len(c)-1:])
	xop := &objstore.ReadOp{}
	xop.SetSnap(s1)
	xr := xop.GetXattr("x")
	if err := p.Read(ctx, c, xop); err != nil || string(xr.Value()) != "old" {
		t.Fatalf("xattr of removed %s at snapshot %d: %q, %v", c, s1, xr.Value(), err)
	}

	// d: never written after the snapshots: every snapshot reads the head.
	wantAt(t, p, d, s1, "v1-"+d[len(d)-1:])
	wantAt(t, p, d, s2, "v1-"+d[len(d)-1:])

	// A write without a context preserves nothing.
	mustOperate(t, p, d, func(op *objstore.WriteOp) { op.WriteFull([]byte("plain")) })
	wantAt(t, p, d, s1, "plain")

	// Listing names the objects, never their clones. (Ceph also lists an
	// object whose head was removed while clones remain; the local backend
	// does not.)
	names, err := p.List(ctx, s.prefix+t.Name())
	if err != nil {
		t.Fatal(err)
	}
	names = slices.DeleteFunc(names, func(n string) bool { return n == c })
	slices.Sort(names)
	want := []string{a, b, d}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Fatalf("List = %q, want %q (and maybe %q)", names, want, c)
	}

	// A malformed context is refused.
	err = operate(t, p, a, func(op *objstore.WriteOp) {
		op.SetSnapContext(objstore.SnapContext{Seq: s2, Snaps: []uint64{s1, s2}})
		op.Write(0, []byte("x"))
	})
	wantErrno(t, "write with an unsorted snapshot context", err, syscall.EINVAL)

	// Removing s1 keeps what s2 needs.
	if err := sn.SelfManagedSnapRemove(ctx, s1); err != nil {
		t.Fatalf("snap remove %d: %v", s1, err)
	}
	wantAt(t, p, a, s2, "V2-three")
	wantData(t, p, a, []byte("V2"))
	if err := sn.SelfManagedSnapRemove(ctx, s2); err != nil {
		t.Fatalf("snap remove %d: %v", s2, err)
	}
	// Writes with the context of no snapshot left preserve nothing more.
	writeSnapc(t, p, a, objstore.SnapContext{Seq: s2}, func(op *objstore.WriteOp) { op.WriteFull([]byte("last")) })
	wantData(t, p, a, []byte("last"))
}
