package clsrbd

import (
	"bytes"
	"context"
	"errors"
	"syscall"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc/cephenctest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
)

// goldenSnapRecord is "snapshot_0000000000000004" as a Ceph 16.2.15 OSD
// wrote it for `rbd snap create pool/img@s1` on a 16 MiB image.
const goldenSnapRecord = "0808 36000000 0400000000000000 02000000 7331 0000000100000000" +
	" 00 0000000000000000 01010400000000000000 86d9146b2ac0a400 00000000 00"

func TestSnapRecordGolden(t *testing.T) {
	raw := cephenctest.Hex(t, goldenSnapRecord)
	var r SnapRecord
	if err := cephenc.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	if r.ID != 4 || r.Name != "s1" || r.ImageSize != 16<<20 || r.Namespace.Type != rbdnotify.SnapNamespaceUser ||
		r.Timestamp.Sec != 0x6b14d986 || r.ParentOverlap != nil || r.ChildCount != 0 {
		t.Fatalf("decoded %+v", r)
	}
	if got := cephenc.Marshal(r); !bytes.Equal(got, raw) {
		t.Fatalf("re-encoded\n%x\nwant\n%x", got, raw)
	}
}

func TestSnapshotMethods(t *testing.T) {
	ctx := context.Background()
	p := newPool()
	const oid = "rbd_header.x"
	mustCreate(t, p, oid, 16<<20, 22, FeatureLayering|FeatureExclusiveLock|FeatureJournaling, "rbd_data.x")
	add := func(id uint64, name string, ns SnapshotNamespace) error {
		op := &objstore.WriteOp{}
		SnapshotAdd(op, id, name, ns)
		return p.Operate(ctx, oid, op)
	}
	user := SnapshotNamespace{}
	mirror := SnapshotNamespace{Type: rbdnotify.SnapNamespaceMirror, Raw: []byte{1, 2, 3}}
	for _, tc := range []struct {
		id   uint64
		name string
		ns   SnapshotNamespace
		want syscall.Errno
	}{
		{4, "s1", user, 0},
		{5, "s1", user, syscall.EEXIST},    // name taken in the namespace
		{5, "s1", mirror, 0},               // same name, other namespace
		{3, "old", user, syscall.ESTALE},   // older than snap_seq
		{5, "again", user, syscall.EEXIST}, // id taken
		{9, "s2", user, 0},
	} {
		err := add(tc.id, tc.name, tc.ns)
		if objstore.Errno(err) != tc.want {
			t.Fatalf("snapshot_add(%d, %q, %v) = %v, want errno %d", tc.id, tc.name, tc.ns, err, tc.want)
		}
	}
	sc, err := GetSnapContext(ctx, p, oid)
	if err != nil || sc.Seq != 9 || len(sc.Snaps) != 3 || sc.Snaps[0] != 9 {
		t.Fatalf("snap context %+v, %v", sc, err)
	}
	s, err := FindSnapshot(ctx, p, oid, mirror, "s1")
	if err != nil || s.ID != 5 || s.ImageSize != 16<<20 || s.Timestamp.Sec == 0 {
		t.Fatalf("find mirror snapshot: %+v, %v", s, err)
	}
	if _, err := FindSnapshot(ctx, p, oid, user, "nope"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("find missing snapshot: %v", err)
	}
	// librbd's removal: trash, get, remove.
	op := &objstore.WriteOp{}
	SnapshotTrashAdd(op, 4)
	if err := p.Operate(ctx, oid, op); err != nil {
		t.Fatal(err)
	}
	info, err := SnapshotGet(ctx, p, oid, 4)
	if err != nil || info.Namespace.Type != rbdnotify.SnapNamespaceTrash || info.Namespace.OriginalName != "s1" || len(info.Name) != 36 {
		t.Fatalf("trashed snapshot: %+v, %v", info, err)
	}
	if f, _, _ := GetFeatures(ctx, p, oid, false); f&FeatureOperations == 0 {
		t.Fatalf("features after trashing a snapshot: %v, want operations", FeatureNames(f))
	}
	if err := p.Operate(ctx, oid, op); !errors.Is(err, objstore.ErrExists) {
		t.Fatalf("trash twice: %v", err)
	}
	op = &objstore.WriteOp{}
	SnapshotRemove(op, 4)
	if err := p.Operate(ctx, oid, op); err != nil {
		t.Fatal(err)
	}
	if f, _, _ := GetFeatures(ctx, p, oid, false); f&FeatureOperations != 0 {
		t.Fatalf("features after removing the trashed snapshot: %v", FeatureNames(f))
	}
	if err := p.Operate(ctx, oid, op); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("remove twice: %v", err)
	}
	if snaps, err := ListSnapshots(ctx, p, oid); err != nil || len(snaps) != 2 || snaps[0].ID != 9 || snaps[1].ID != 5 {
		t.Fatalf("snapshots left: %+v, %v", snaps, err)
	}
	// The snapshot keeps the size the image had.
	op = &objstore.WriteOp{}
	SetSize(op, 32<<20)
	if err := p.Operate(ctx, oid, op); err != nil {
		t.Fatal(err)
	}
	if size, _, err := GetSize(ctx, p, oid, 9); err != nil || size != 16<<20 {
		t.Fatalf("size at snapshot: %d, %v", size, err)
	}
}
