//go:build ceph && pacific

package librbd

import (
	"context"
	"fmt"

	"github.com/ceph/go-ceph/rbd"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// CreateSnapshot makes user snapshot snap of image name through librbd: if
// another client holds the image's exclusive lock (a node serving it),
// librbd asks that owner to make it (it journals SnapCreate, drains its
// acknowledged writes, adds the snapshot, journals OpFinish); otherwise
// librbd takes the lock, replays the journal and makes it itself. It fails
// with image.ErrExists if the snapshot exists.
func CreateSnapshot(ctx context.Context, pool objstore.Pool, name, snap string) error {
	p, err := cephPool(pool)
	if err != nil {
		return fmt.Errorf("snapshot %s@%s: %w", name, snap, err)
	}
	err = withImage(ctx, p, name, true, func(img *rbd.Image) error {
		_, err := img.CreateSnapshot(snap)
		return mapErr(err)
	})
	if err != nil {
		return fmt.Errorf("snapshot %s/%s@%s: %w", p.Name(), name, snap, err)
	}
	return nil
}

// RemoveSnapshot removes user snapshot snap of image name through librbd
// (proxied to the lock owner as CreateSnapshot is). A snapshot with clone
// v2 children moves to the trash namespace until its last child is gone.
// It fails with image.ErrNotFound if there is no such snapshot.
func RemoveSnapshot(ctx context.Context, pool objstore.Pool, name, snap string) error {
	p, err := cephPool(pool)
	if err != nil {
		return fmt.Errorf("remove snapshot %s@%s: %w", name, snap, err)
	}
	err = withImage(ctx, p, name, true, func(img *rbd.Image) error {
		return mapErr(img.GetSnapshot(snap).Remove())
	})
	if err != nil {
		return fmt.Errorf("remove snapshot %s/%s@%s: %w", p.Name(), name, snap, err)
	}
	return nil
}
