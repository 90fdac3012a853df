package clsrbd

import (
	"context"
	"errors"
	"syscall"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// TestCloneMethods: child_attach/child_detach/children_list keep the
// children set, the snapshot's child_count and the clone-parent operation
// feature as cls_rbd does, with its error codes; op_features_set and
// remove_parent likewise.
func TestCloneMethods(t *testing.T) {
	ctx := context.Background()
	p := newPool()
	const parent, child = "rbd_header.p", "rbd_header.c"
	mustCreate(t, p, parent, 16<<20, 22, FeatureLayering|FeatureExclusiveLock, "rbd_data.p")
	mustCreate(t, p, child, 16<<20, 22, FeatureLayering|FeatureExclusiveLock, "rbd_data.c")
	run := func(oid string, fill func(op *objstore.WriteOp)) error {
		op := &objstore.WriteOp{}
		fill(op)
		return p.Operate(ctx, oid, op)
	}
	if err := run(parent, func(op *objstore.WriteOp) { SnapshotAdd(op, 4, "s", SnapshotNamespace{}) }); err != nil {
		t.Fatal(err)
	}
	a := ChildImageSpec{PoolID: 1, ImageID: "c"}
	b := ChildImageSpec{PoolID: 1, ImageID: "b"}
	opf := func(oid string) uint64 {
		v, err := OpFeaturesGet(ctx, p, oid)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, tc := range []struct {
		name     string
		oid      string
		fill     func(op *objstore.WriteOp)
		want     syscall.Errno
		children []ChildImageSpec
	}{
		{"attach a", parent, func(op *objstore.WriteOp) { ChildAttach(op, 4, a) }, 0, []ChildImageSpec{a}},
		{"attach a again", parent, func(op *objstore.WriteOp) { ChildAttach(op, 4, a) }, syscall.EEXIST, []ChildImageSpec{a}},
		{"attach to a missing snapshot", parent, func(op *objstore.WriteOp) { ChildAttach(op, 5, a) }, syscall.ENOENT, []ChildImageSpec{a}},
		{"attach b", parent, func(op *objstore.WriteOp) { ChildAttach(op, 4, b) }, 0, []ChildImageSpec{b, a}}, // set order
		{"detach a", parent, func(op *objstore.WriteOp) { ChildDetach(op, 4, a) }, 0, []ChildImageSpec{b}},
		{"detach a again", parent, func(op *objstore.WriteOp) { ChildDetach(op, 4, a) }, syscall.ENOENT, []ChildImageSpec{b}},
		{"op features: unknown bit", child, func(op *objstore.WriteOp) { OpFeaturesSet(op, 1<<9, 1<<9) }, syscall.EINVAL, []ChildImageSpec{b}},
		{"remove a missing parent", child, func(op *objstore.WriteOp) { RemoveParent(op) }, syscall.ENOENT, []ChildImageSpec{b}},
	} {
		err := run(tc.oid, tc.fill)
		if tc.want == 0 && err != nil || tc.want != 0 && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		got, err := ChildrenList(ctx, p, parent, 4)
		if err != nil || len(got) != len(tc.children) {
			t.Fatalf("%s: children %v, %v; want %v", tc.name, got, err, tc.children)
		}
		for i := range got {
			if got[i] != tc.children[i] {
				t.Errorf("%s: children %v, want %v", tc.name, got, tc.children)
			}
		}
		if s, err := SnapshotGet(ctx, p, parent, 4); err != nil || int(s.ChildCount) != len(tc.children) {
			t.Errorf("%s: child_count %d (%v), want %d", tc.name, s.ChildCount, err, len(tc.children))
		}
	}
	if opf(parent)&OpFeatureCloneParent == 0 {
		t.Error("a parent with a child lacks the clone-parent operation feature")
	}
	if f, _, _ := GetFeatures(ctx, p, parent, false); f&FeatureOperations == 0 {
		t.Error("a parent with a child lacks the operations feature")
	}
	// A trashed snapshot accepts no new child; its last child's detach
	// drops the clone-parent feature.
	if err := run(parent, func(op *objstore.WriteOp) { SnapshotTrashAdd(op, 4) }); err != nil {
		t.Fatal(err)
	}
	if err := run(parent, func(op *objstore.WriteOp) { ChildAttach(op, 4, a) }); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("attach to a trashed snapshot: %v, want ENOENT", err)
	}
	if err := run(parent, func(op *objstore.WriteOp) { ChildDetach(op, 4, b) }); err != nil {
		t.Fatal(err)
	}
	if opf(parent)&OpFeatureCloneParent != 0 {
		t.Error("a parent without children keeps the clone-parent feature")
	}
	if got, err := ChildrenList(ctx, p, parent, 4); err != nil || len(got) != 0 {
		t.Errorf("children after the last detach: %v, %v", got, err)
	}

	// The child: parent link and clone-child feature, removed by
	// remove_parent.
	if err := run(child, func(op *objstore.WriteOp) {
		SetParent(op, 1, "p", 4, 16<<20)
		OpFeaturesSet(op, OpFeatureCloneChild, OpFeatureCloneChild)
	}); err != nil {
		t.Fatal(err)
	}
	if opf(child) != OpFeatureCloneChild {
		t.Errorf("child op features %x", opf(child))
	}
	if err := run(child, func(op *objstore.WriteOp) { RemoveParent(op) }); err != nil {
		t.Fatal(err)
	}
	if pi, err := GetParent(ctx, p, child, NoSnap); err != nil || pi.PoolID != -1 {
		t.Errorf("parent after remove_parent: %+v, %v", pi, err)
	}
	if opf(child) != 0 {
		t.Errorf("child op features after remove_parent: %x", opf(child))
	}
}

// TestChildImageSpecEncoding: version 2 as Nautilus and later write it;
// version 1 (no namespace) decodes.
func TestChildImageSpecEncoding(t *testing.T) {
	s := ChildImageSpec{PoolID: 2, ImageID: "abc", PoolNamespace: "ns"}
	var got ChildImageSpec
	if err := cephenc.Unmarshal(cephenc.Marshal(s), &got); err != nil || got != s {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	v1 := cephenc.MarshalFunc(func(e *cephenc.Encoder) {
		m := e.Start(1, 1)
		e.S64(2)
		e.String("abc")
		e.Finish(m)
	})
	if err := cephenc.Unmarshal(v1, &got); err != nil || got != (ChildImageSpec{PoolID: 2, ImageID: "abc"}) {
		t.Fatalf("version 1: %+v, %v", got, err)
	}
}
