package local

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

func readAtT(t *testing.T, p objstore.Pool, oid string, snap uint64) (string, error) {
	t.Helper()
	op := &objstore.ReadOp{}
	op.SetSnap(snap)
	r := op.Read(0, 0)
	err := p.Read(context.Background(), oid, op)
	return string(r.Data()), err
}

func writeT(t *testing.T, p objstore.Pool, oid string, sc objstore.SnapContext, data string) {
	t.Helper()
	op := &objstore.WriteOp{}
	op.SetSnapContext(sc)
	op.WriteFull([]byte(data))
	if err := p.Operate(context.Background(), oid, op); err != nil {
		t.Fatal(err)
	}
}

// TestSnapsDurableAndTrimmed: snapshot ids, clones and snapsets survive a
// restart of every client; removing a snapshot deletes the clones only it
// needed; reads at a removed snapshot fail.
func TestSnapsDurableAndTrimmed(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c, err := Open(dir, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	p := poolT(t, c, "rbd")
	sn, _ := objstore.Snapper(p)
	writeT(t, p, "obj", objstore.SnapContext{}, "one")
	s1, err := sn.SelfManagedSnapCreate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	writeT(t, p, "obj", objstore.SnapContext{Seq: s1, Snaps: []uint64{s1}}, "two")
	s2, err := sn.SelfManagedSnapCreate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	writeT(t, p, "obj", objstore.SnapContext{Seq: s2, Snaps: []uint64{s2, s1}}, "three")
	c.Close()

	c2 := openT(t, dir, testOptions())
	p = poolT(t, c2, "rbd")
	sn, _ = objstore.Snapper(p)
	for _, tc := range []struct {
		snap uint64
		want string
	}{{0, "three"}, {s1, "one"}, {s2, "two"}} {
		if got, err := readAtT(t, p, "obj", tc.snap); err != nil || got != tc.want {
			t.Fatalf("after restart, at snapshot %d: %q, %v; want %q", tc.snap, got, err, tc.want)
		}
	}
	if s3, err := sn.SelfManagedSnapCreate(ctx); err != nil || s3 <= s2 {
		t.Fatalf("snapshot id after restart: %d, %v (want > %d)", s3, err, s2)
	}
	clones := func() []string {
		names, err := p.List(ctx, snapClonePrefix)
		if err != nil {
			t.Fatal(err)
		}
		return names
	}
	if n := len(clones()); n != 2 {
		t.Fatalf("%d clones, want 2", n)
	}
	if err := sn.SelfManagedSnapRemove(ctx, s1); err != nil {
		t.Fatal(err)
	}
	if _, err := readAtT(t, p, "obj", s1); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("read at removed snapshot: %v, want ENOENT", err)
	}
	if got, err := readAtT(t, p, "obj", s2); err != nil || got != "two" {
		t.Fatalf("at snapshot %d after removing %d: %q, %v", s2, s1, got, err)
	}
	if cl := clones(); len(cl) != 1 || !strings.HasSuffix(cl[0], "obj\x00"+"000000000000000"+string("0123456789abcdef"[s2])) {
		t.Fatalf("clones after removing snapshot %d: %q", s1, cl)
	}
	if err := sn.SelfManagedSnapRemove(ctx, s2); err != nil {
		t.Fatal(err)
	}
	if cl := clones(); len(cl) != 0 {
		t.Fatalf("clones after removing every snapshot: %q", cl)
	}
	if names, _ := p.List(ctx, ""); len(names) != 1 || names[0] != "obj" {
		t.Fatalf("List = %q, want [obj]", names)
	}
}
