// Package imagetest helps tests put an RBD image into states that the code
// under test does not create itself, as another librbd client would (a
// snapshot taken by `rbd snap create` while nobody serves the image).
package imagetest

import (
	"context"
	"testing"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Image is what AddSnapshot needs of an open image (*image.Image); an
// interface so that package image's own tests can use this package.
type Image interface {
	ID() string
	Refresh(ctx context.Context) error
}

// AddSnapshot snapshots img as librbd's SnapshotCreateRequest does without
// an exclusive lock: it allocates a self-managed snapshot id in pool,
// records the snapshot as name in the image header, and refreshes img so
// that its snapshot context includes it. It returns the snapshot id; any
// failure fails t.
func AddSnapshot(t testing.TB, ctx context.Context, pool objstore.Pool, img Image, name string, ns clsrbd.SnapshotNamespace) uint64 {
	t.Helper()
	sn, err := objstore.Snapper(pool)
	if err != nil {
		t.Fatal(err)
	}
	id, err := sn.SelfManagedSnapCreate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var op objstore.WriteOp
	clsrbd.SnapshotAdd(&op, id, name, ns)
	if err := pool.Operate(ctx, clsrbd.HeaderOID(img.ID()), &op); err != nil {
		t.Fatal(err)
	}
	if err := img.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	return id
}
