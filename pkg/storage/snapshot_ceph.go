//go:build ceph && pacific

package storage

import (
	"context"
	"errors"
	"fmt"

	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/librbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

func (s *cephStorage) Snapshot(ctx context.Context, pool objstore.Pool, name, snap string) (SnapshotInfo, error) {
	info, err := snapshotOf(ctx, pool, name, snap)
	return info, s.opErr(err)
}

// CreateSnapshot makes the snapshot through librbd, which proxies it to
// the lock owner of a served image (see librbd.CreateSnapshot). Before,
// a lock held by a client that no longer watches the header (a dead node
// whose lock nobody broke yet) is refused with ErrOwnerUnresponsive
// rather than left to librbd, which would wait for it.
func (s *cephStorage) CreateSnapshot(ctx context.Context, pool objstore.Pool, name, snap string) (SnapshotInfo, error) {
	if info, err := snapshotOf(ctx, pool, name, snap); !errors.Is(err, ErrSnapshotNotFound) {
		return info, s.opErr(err)
	}
	if err := s.checkOwnerAlive(ctx, pool, name); err != nil {
		return SnapshotInfo{}, err
	}
	err := librbd.CreateSnapshot(ctx, pool, name, snap)
	if err != nil && !errors.Is(err, image.ErrExists) {
		return SnapshotInfo{}, s.opErr(err)
	}
	info, err := snapshotOf(ctx, pool, name, snap)
	return info, s.opErr(err)
}

func (s *cephStorage) RemoveSnapshot(ctx context.Context, pool objstore.Pool, name, snap string) error {
	if _, err := snapshotOf(ctx, pool, name, snap); err != nil {
		return s.opErr(err)
	}
	if err := s.checkOwnerAlive(ctx, pool, name); err != nil {
		return err
	}
	err := librbd.RemoveSnapshot(ctx, pool, name, snap)
	if errors.Is(err, image.ErrNotFound) {
		return fmt.Errorf("remove snapshot %s@%s: %w: %w", name, snap, ErrSnapshotNotFound, err)
	}
	return s.opErr(err)
}

// checkOwnerAlive fails with ErrOwnerUnresponsive if the image's lock is
// held by a client that does not watch its header (librbd would wait for
// an answer that never comes).
func (s *cephStorage) checkOwnerAlive(ctx context.Context, pool objstore.Pool, name string) error {
	_, hdr, err := headerOf(ctx, pool, name)
	if err != nil {
		return s.opErr(err)
	}
	holder, err := lockHolder(ctx, pool, hdr)
	if err != nil || holder == "" {
		return s.opErr(err)
	}
	ws, err := pool.ListWatchers(ctx, hdr)
	if err != nil {
		return s.opErr(fmt.Errorf("watchers of %s: %w", hdr, err))
	}
	if len(ws) == 0 {
		return fmt.Errorf("image %q: its exclusive lock is held by %s, which no longer watches the image: %w (staging the volume elsewhere fences it and takes the lock over)", name, holder, ErrOwnerUnresponsive)
	}
	return nil
}
