package storage

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"testing"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
)

// TestLocalSnapshotCopy: on the local backend, an image nobody serves is
// snapshotted directly; the snapshot keeps its content while the head
// changes; CopySnapshot interrupted after its first chunk resumes from the
// progress it reported and yields the snapshot's content, sparse (objects
// that read as zeros are not written); removal is idempotent-aware
// (ErrSnapshotNotFound the second time).
func TestLocalSnapshotCopy(t *testing.T) {
	ctx := context.Background()
	b, pool := openTestLocal(t)
	const order, objects = 16, 40
	const size = objects << order
	if err := b.CreateImage(ctx, pool, "src", size, image.CreateOptions{Order: order}); err != nil {
		t.Fatal(err)
	}
	src, err := image.Open(ctx, pool, "src")
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, size)
	rng := rand.New(rand.NewSource(2))
	for i := 0; i < objects; i += 3 { // every third object holds data
		rng.Read(want[i<<order : (i+1)<<order])
	}
	if _, err := src.WriteAt(ctx, want, 0); err != nil {
		t.Fatal(err)
	}
	sn, err := SnapshotterOf(b.localStorage)
	if err != nil {
		t.Fatal(err)
	}
	info, err := sn.CreateSnapshot(ctx, pool, "src", "s1")
	if err != nil {
		t.Fatal(err)
	}
	if again, err := sn.CreateSnapshot(ctx, pool, "src", "s1"); err != nil || again.ID != info.ID {
		t.Fatalf("CreateSnapshot again: %+v, %v; want %+v", again, err, info)
	}
	if info.Size != size || info.Created.IsZero() {
		t.Fatalf("snapshot %+v", info)
	}
	if err := src.Refresh(ctx); err != nil { // writes carry the new snapshot context
		t.Fatal(err)
	}
	if _, err := src.WriteAt(ctx, bytes.Repeat([]byte{0xff}, size), 0); err != nil {
		t.Fatal(err)
	}

	if err := b.CreateImage(ctx, pool, "dst", size, image.CreateOptions{Order: order}); err != nil {
		t.Fatal(err)
	}
	stop := errors.New("stop")
	var done int64
	err = CopySnapshot(ctx, pool, "src", info.ID, info.Size, "dst", 0, func(n int64) error { done = n; return stop })
	if !errors.Is(err, stop) || done != copyChunkObjects<<order {
		t.Fatalf("interrupted copy: %v after %d bytes", err, done)
	}
	calls := 0
	if err := CopySnapshot(ctx, pool, "src", info.ID, info.Size, "dst", done, func(n int64) error { calls++; done = n; return nil }); err != nil {
		t.Fatal(err)
	}
	if done != size || calls != objects/copyChunkObjects-1 { // the chunks after the first
		t.Fatalf("resumed copy reported %d bytes in %d calls", done, calls)
	}
	dst, err := image.Open(ctx, pool, "dst")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if _, err := dst.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the copy differs from the snapshot")
	}
	names, err := pool.List(ctx, dst.ObjectPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != (objects+2)/3 {
		t.Errorf("the copy has %d data objects, want %d (zeros are not copied)", len(names), (objects+2)/3)
	}

	if err := sn.RemoveSnapshot(ctx, pool, "src", "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Snapshot(ctx, pool, "src", "s1"); !errors.Is(err, ErrSnapshotNotFound) {
		t.Fatalf("Snapshot after removal: %v", err)
	}
	if err := sn.RemoveSnapshot(ctx, pool, "src", "s1"); !errors.Is(err, ErrSnapshotNotFound) {
		t.Fatalf("RemoveSnapshot again: %v", err)
	}
	hdr := clsrbd.HeaderOID(src.ID())
	if snaps, err := clsrbd.ListSnapshots(ctx, pool, hdr); err != nil || len(snaps) != 0 {
		t.Fatalf("snapshots left: %v, %v", snaps, err)
	}
	if _, err := sn.Snapshot(ctx, pool, "nope", "s1"); !errors.Is(err, image.ErrNotFound) {
		t.Fatalf("Snapshot of a missing image: %v", err)
	}
}
