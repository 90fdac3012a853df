package image

import (
	"bytes"
	"errors"
	"math/rand"
	"testing"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image/imagetest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
)

// makeClone creates image "parent" (data in model), snapshots it, changes
// the parent's head afterwards (the clone must read the snapshot) and
// creates "child" of childSize as a clone of the snapshot with overlap
// bytes. It returns the parent's snapshot content.
func makeClone(t *testing.T, p objstore.Pool, order uint8, parentSize, childSize, overlap int64) []byte {
	t.Helper()
	ctx := ctxT(t)
	parent := mustCreate(t, p, "parent", parentSize, CreateOptions{Features: clsrbd.FeatureLayering, Order: order})
	data := make([]byte, parentSize)
	rng := rand.New(rand.NewSource(1))
	rng.Read(data)
	clear(data[2<<order : 3<<order]) // object 2 all zeros: no copy-up needed
	if _, err := parent.WriteAt(ctx, data, 0); err != nil {
		t.Fatal(err)
	}
	snapID := imagetest.AddSnapshot(t, ctx, p, parent, "base", clsrbd.SnapshotNamespace{Type: rbdnotify.SnapNamespaceUser})
	if _, err := parent.WriteAt(ctx, bytes.Repeat([]byte{0xee}, int(parentSize)), 0); err != nil {
		t.Fatal(err)
	}
	child := mustCreate(t, p, "child", childSize, CreateOptions{Features: clsrbd.FeatureLayering, Order: order})
	var op objstore.WriteOp
	clsrbd.SetParent(&op, p.ID(), parent.ID(), snapID, uint64(overlap))
	if err := p.Operate(ctx, clsrbd.HeaderOID(child.ID()), &op); err != nil {
		t.Fatal(err)
	}
	return data
}

// TestClone serves a clone: unwritten parts read the parent's snapshot
// (within the overlap; zeros beyond), partial writes, zeroing and discards
// copy the parent's object up first, so the rest of the object keeps the
// parent's data and a discarded range reads as zeros, never as the
// parent's. A reopened clone (no copy-up cache) reads the same.
func TestClone(t *testing.T) {
	const order = 16
	const obj = int64(1) << order
	for _, tc := range []struct {
		name              string
		parent, child, ov int64
	}{
		{"overlap is the parent", 8 * obj, 8 * obj, 8 * obj},
		{"child grown past the parent", 6 * obj, 10 * obj, 6 * obj},
		{"overlap mid-object (child shrunk and grown)", 8 * obj, 8 * obj, 5*obj + 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxT(t)
			p := newPool(t)
			base := makeClone(t, p, order, tc.parent, tc.child, tc.ov)
			want := make([]byte, tc.child)
			copy(want, base[:tc.ov])
			child, err := Open(ctx, p, "child")
			if err != nil {
				t.Fatal(err)
			}
			if id, _, ov, ok := child.Parent(); !ok || ov != tc.ov || id == "" {
				t.Fatalf("Parent() = %q, %d, %v", id, ov, ok)
			}
			check := func(img *Image, what string) {
				t.Helper()
				got := make([]byte, tc.child)
				if _, err := img.ReadAt(ctx, got, 0); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					for i := range got {
						if got[i] != want[i] {
							t.Fatalf("%s: first difference at byte %d (object %d): %#x, want %#x", what, i, int64(i)/obj, got[i], want[i])
						}
					}
				}
			}
			check(child, "unwritten clone")

			ops := []struct {
				what string
				off  int64
				n    int64
				do   func(off, n int64) error
			}{
				{"write inside object 1", obj + 100, 200, nil},
				{"write across objects 3-4", 4*obj - 50, 100, nil},
				{"write zeroes inside object 0", 10, 500, func(off, n int64) error { return child.WriteZeroes(ctx, off, n) }},
				{"discard all of object 5", 5 * obj, obj, func(off, n int64) error { return child.Discard(ctx, off, n) }},
				{"discard the tail of object 4", 4*obj + 1000, obj - 1000, func(off, n int64) error { return child.Discard(ctx, off, n) }},
				{"write into the all-zero object 2", 2*obj + 7, 9, nil},
			}
			for i, o := range ops {
				if o.off+o.n > tc.child {
					continue
				}
				if o.do == nil {
					data := bytes.Repeat([]byte{byte(i + 1)}, int(o.n))
					if _, err := child.WriteAt(ctx, data, o.off); err != nil {
						t.Fatalf("%s: %v", o.what, err)
					}
					copy(want[o.off:], data)
				} else {
					if err := o.do(o.off, o.n); err != nil {
						t.Fatalf("%s: %v", o.what, err)
					}
					clear(want[o.off : o.off+o.n])
				}
				check(child, o.what)
			}
			again, err := Open(ctx, p, "child")
			if err != nil {
				t.Fatal(err)
			}
			check(again, "reopened")
			// The parent is never written through the clone.
			parent, err := Open(ctx, p, "parent")
			if err != nil {
				t.Fatal(err)
			}
			head := make([]byte, tc.parent)
			if _, err := parent.ReadAt(ctx, head, 0); err != nil || !bytes.Equal(head, bytes.Repeat([]byte{0xee}, int(tc.parent))) {
				t.Fatalf("the parent's head changed (%v)", err)
			}
		})
	}
}

// TestCopyupClass: rbd.copyup writes only to a missing object.
func TestCopyupClass(t *testing.T) {
	ctx := ctxT(t)
	p := newPool(t)
	run := func(data []byte) {
		var op objstore.WriteOp
		clsrbd.Copyup(&op, data)
		if err := p.Operate(ctx, "obj", &op); err != nil {
			t.Fatal(err)
		}
	}
	read := func() []byte {
		var op objstore.ReadOp
		r := op.Read(0, 0)
		if err := p.Read(ctx, "obj", &op); err != nil {
			if errors.Is(err, objstore.ErrNotFound) {
				return nil
			}
			t.Fatal(err)
		}
		return r.Data()
	}
	run(nil)
	if got := read(); got != nil {
		t.Fatalf("empty copy-up created %q", got)
	}
	run([]byte("parent"))
	run([]byte("again!"))
	if got := read(); string(got) != "parent" {
		t.Fatalf("object = %q, want the first copy-up only", got)
	}
}
