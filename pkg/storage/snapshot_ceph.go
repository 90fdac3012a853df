//go:build ceph && pacific

package storage

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	clslock "github.com/csi-rbdj/csi-rbdj/pkg/cls/lock"
	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"

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
	info, err := clslock.GetLockInfo(ctx, pool, hdr, exclusivelock.LockName)
	if errors.Is(err, objstore.ErrNotFound) {
		return nil
	}
	if err != nil {
		return s.opErr(fmt.Errorf("lock of %s: %w", hdr, err))
	}
	ws, err := pool.ListWatchers(ctx, hdr)
	if err != nil {
		return s.opErr(fmt.Errorf("watchers of %s: %w", hdr, err))
	}
	for id, li := range info.Lockers {
		// librbd's test for a live owner: it still watches the header
		// with the handle its lock cookie names.
		handle, err := strconv.ParseUint(strings.TrimPrefix(id.Cookie, exclusivelock.CookiePrefix), 10, 64)
		if err != nil {
			return nil // not a managed lock: librbd decides
		}
		for _, w := range ws {
			if int64(w.Client.ID) == id.Locker.Num && w.Cookie == handle {
				return nil
			}
		}
		holder := fmt.Sprintf("%s at %s", id.Locker, li.Addr.ClientAddr())
		return fmt.Errorf("image %q: its exclusive lock is held by %s, which did not answer: it no longer watches the image: %w (staging the volume elsewhere fences it and takes the lock over)", name, holder, ErrOwnerUnresponsive)
	}
	return nil
}
