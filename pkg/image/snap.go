package image

import (
	"context"
	"errors"
	"fmt"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// ErrSnapshotNotFound: the image has no such snapshot.
var ErrSnapshotNotFound = errors.New("snapshot not found")

// Snapshots returns the image's snapshots, newest first, as the header
// holds them now.
func (img *Image) Snapshots(ctx context.Context) ([]clsrbd.SnapshotInfo, error) {
	snaps, err := clsrbd.ListSnapshots(ctx, img.pool, img.headerOID)
	if err != nil {
		return nil, fmt.Errorf("snapshots of image %q: %w", img.name, notFound(err))
	}
	return snaps, nil
}

// Snapshot returns the snapshot ns/name (ErrSnapshotNotFound if there is none).
func (img *Image) Snapshot(ctx context.Context, ns clsrbd.SnapshotNamespace, name string) (clsrbd.SnapshotInfo, error) {
	s, err := clsrbd.FindSnapshot(ctx, img.pool, img.headerOID, ns, name)
	if errors.Is(err, objstore.ErrNotFound) {
		return s, fmt.Errorf("image %q: snapshot %s %q: %w", img.name, ns, name, ErrSnapshotNotFound)
	}
	if err != nil {
		return s, fmt.Errorf("image %q: snapshot %s %q: %w", img.name, ns, name, err)
	}
	return s, nil
}

// ReadAtSnap reads len(p) bytes at off of the image as of snapshot snapID:
// what the image held when the snapshot was taken (within the size it had
// then). Parts never written read as zeros.
func (img *Image) ReadAtSnap(ctx context.Context, p []byte, off int64, snapID uint64) (int, error) {
	if snapID == 0 || snapID == clsrbd.NoSnap {
		return img.ReadAt(ctx, p, off)
	}
	size, _, err := clsrbd.GetSize(ctx, img.pool, img.headerOID, snapID)
	if errors.Is(err, objstore.ErrNotFound) {
		return 0, fmt.Errorf("read image %q at snapshot %d: %w", img.name, snapID, ErrSnapshotNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("read image %q at snapshot %d: %w", img.name, snapID, err)
	}
	if off < 0 || off > int64(size) || int64(len(p)) > int64(size)-off {
		return 0, fmt.Errorf("read image %q at snapshot %d [%d, +%d): %w (size %d)", img.name, snapID, off, len(p), ErrOutOfRange, size)
	}
	return img.readAt(ctx, p, off, snapID)
}
