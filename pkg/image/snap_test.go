package image

import (
	"bytes"
	"errors"
	"testing"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image/imagetest"
)

// TestSnapshotPointInTime: after a snapshot, writes, discards and
// write-zeroes of the head leave the snapshot's data as it was.
func TestSnapshotPointInTime(t *testing.T) {
	ctx := ctxT(t)
	p := newPool(t)
	const size = 3 << 22 // three 4 MiB objects
	img := mustCreate(t, p, "vol", size, CreateOptions{Features: clsrbd.FeatureLayering})
	before := bytes.Repeat([]byte("before.."), size/8)
	if _, err := img.WriteAt(ctx, before[:2<<22], 0); err != nil { // objects 0 and 1; 2 never written
		t.Fatal(err)
	}
	id := imagetest.AddSnapshot(t, ctx, p, img, "s1", clsrbd.SnapshotNamespace{})
	if sc := img.SnapContext(); sc.Seq != id || len(sc.Snaps) != 1 {
		t.Fatalf("snap context after refresh: %+v", sc)
	}
	// Change every object after the snapshot.
	if _, err := img.WriteAt(ctx, []byte("after"), 100); err != nil {
		t.Fatal(err)
	}
	if err := img.Discard(ctx, 1<<22, 1<<22); err != nil { // removes object 1
		t.Fatal(err)
	}
	if _, err := img.WriteAt(ctx, []byte("new object"), 2<<22); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, size)
	copy(want, before[:2<<22])
	got := make([]byte, size)
	if _, err := img.ReadAtSnap(ctx, got, 0, id); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the snapshot changed with the head")
	}
	head := make([]byte, size)
	if _, err := img.ReadAt(ctx, head, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(head[100:105], []byte("after")) || head[1<<22] != 0 || !bytes.Equal(head[2<<22:2<<22+10], []byte("new object")) {
		t.Fatal("head lacks the writes after the snapshot")
	}
	s, err := img.Snapshot(ctx, clsrbd.SnapshotNamespace{}, "s1")
	if err != nil || s.ID != id || s.ImageSize != size {
		t.Fatalf("snapshot s1: %+v, %v", s, err)
	}
	if _, err := img.Snapshot(ctx, clsrbd.SnapshotNamespace{}, "nope"); !errors.Is(err, ErrSnapshotNotFound) {
		t.Fatalf("missing snapshot: %v", err)
	}
	if _, err := img.ReadAtSnap(ctx, got[:10], 0, id+100); !errors.Is(err, ErrSnapshotNotFound) {
		t.Fatalf("read at a missing snapshot: %v", err)
	}
}
