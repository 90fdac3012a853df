//go:build ceph && pacific

package storage

import (
	"context"
	"errors"
	"fmt"

	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/librbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"k8s.io/klog/v2"
)

// CloneImage clones through librbd (rbd_clone3, clone format 2), which
// removes what it made if it fails; a failed growth to size removes the
// clone here.
func (s *cephStorage) CloneImage(ctx context.Context, pool objstore.Pool, parent, snap, child string, size int64, o image.CreateOptions) error {
	info, err := snapshotOf(ctx, pool, parent, snap)
	if err != nil {
		return s.opErr(fmt.Errorf("clone %s@%s: %w", parent, snap, err))
	}
	if size < info.Size {
		return fmt.Errorf("clone %s@%s (%d bytes) into %d bytes: %w", parent, snap, info.Size, size, image.ErrInvalid)
	}
	if err := librbd.Clone(ctx, pool, parent, snap, child, o); err != nil {
		return s.opErr(err)
	}
	if size > info.Size {
		if err := librbd.Resize(ctx, pool, child, size); err != nil {
			if rerr := s.RemoveImage(context.WithoutCancel(ctx), pool, child); rerr != nil {
				klog.FromContext(ctx).Error(rerr, "Could not remove a clone that could not be grown", "image", child)
			}
			return s.opErr(fmt.Errorf("clone %s@%s: grow %s to %d bytes: %w", parent, snap, child, size, err))
		}
	}
	return nil
}

// removeImage removes an image through librbd, which detaches a clone from
// its parent and removes the parent's trashed snapshot with its last
// child; a parked parent without snapshots is removed here.
func (s *cephStorage) removeImage(ctx context.Context, pool objstore.Pool, name string) error {
	id, _, err := headerOf(ctx, pool, name)
	if err != nil {
		return s.opErr(removeWithExtentLog(ctx, pool, name, func() error { return librbd.Remove(ctx, pool, name) }))
	}
	if err := checkNoChildren(ctx, pool, name, id); err != nil {
		return err
	}
	p, isClone, err := parentOf(ctx, pool, id)
	if err != nil && !errors.Is(err, objstore.ErrNotFound) {
		return s.opErr(fmt.Errorf("remove image %q: %w", name, err))
	}
	if err := removeWithExtentLog(ctx, pool, name, func() error { return librbd.Remove(ctx, pool, name) }); err != nil {
		return s.opErr(err)
	}
	reapAfter(ctx, s, pool, p, isClone)
	return nil
}

func (s *cephStorage) FlattenImage(ctx context.Context, pool objstore.Pool, name string) error {
	id, hdr, err := headerOf(ctx, pool, name)
	if errors.Is(err, objstore.ErrNotFound) {
		return fmt.Errorf("flatten %q: %w: %w", name, image.ErrNotFound, err)
	}
	if err != nil {
		return s.opErr(err)
	}
	p, isClone, err := parentOf(ctx, pool, id)
	if err != nil || !isClone {
		return s.opErr(err)
	}
	if err := checkFlattenable(ctx, pool, name, hdr); err != nil {
		return err
	}
	if err := librbd.Flatten(ctx, pool, name); err != nil {
		return s.opErr(err)
	}
	reapAfter(ctx, s, pool, p, true)
	return nil
}

func (s *cephStorage) ParkImage(ctx context.Context, pool objstore.Pool, name string) (string, error) {
	id, err := parkableID(ctx, pool, name, s.opErr)
	if err != nil {
		return "", err
	}
	to := ParkedName(id)
	if err := librbd.Rename(ctx, pool, name, to); err != nil {
		return "", s.opErr(err)
	}
	return to, nil
}
