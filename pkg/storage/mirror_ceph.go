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

var _ Mirrorer = (*cephStorage)(nil)

func (s *cephStorage) CheckPoolMirroring(ctx context.Context, pool objstore.Pool) error {
	mode, err := librbd.MirrorPoolMode(ctx, pool)
	if err != nil {
		return s.opErr(err)
	}
	if mode == librbd.MirrorPoolDisabled {
		return fmt.Errorf("pool %q of Ceph cluster %q: %w: enable it with `%s` (and add the peer cluster: rbd mirror pool peer add / bootstrap import)",
			pool.Name(), s.clusterID, ErrPoolMirroringDisabled, PoolMirroringCommand(pool.Name()))
	}
	return nil
}

func (s *cephStorage) MirrorInfo(ctx context.Context, pool objstore.Pool, name string) (MirrorInfo, error) {
	mi, err := librbd.GetMirrorInfo(ctx, pool, name)
	if err != nil {
		return MirrorInfo{}, s.opErr(err)
	}
	// librbd reports an image without mirroring as not primary; it is
	// the only copy, and writable.
	return MirrorInfo{Enabled: mi.Enabled(), Mode: mi.Mode, Primary: mi.Primary || !mi.Enabled(), GlobalID: mi.GlobalID}, nil
}

func (s *cephStorage) EnableJournalMirroring(ctx context.Context, pool objstore.Pool, name string) error {
	mi, err := s.MirrorInfo(ctx, pool, name)
	if err != nil {
		return err
	}
	if mi.Enabled {
		if mi.Mode != MirrorModeJournal {
			return fmt.Errorf("image %s/%s is mirrored in %s mode: %w; disable it (rbd mirror image disable) to mirror it by its journal",
				pool.Name(), name, mi.Mode, ErrMirrorModeConflict)
		}
		return nil
	}
	if err := refuseMetadataMirroring(ctx, pool, name); err != nil { // extentlog.go
		return err
	}
	// In pool mode librbd refuses per-image enabling (and mirrors every
	// journaled image by itself once the pool is so configured).
	mode, err := librbd.MirrorPoolMode(ctx, pool)
	if err != nil {
		return s.opErr(err)
	}
	switch mode {
	case librbd.MirrorPoolDisabled:
		return s.CheckPoolMirroring(ctx, pool)
	case librbd.MirrorPoolPool:
		return nil
	}
	return s.opErr(librbd.MirrorEnableJournal(ctx, pool, name))
}

func (s *cephStorage) mirrored(ctx context.Context, pool objstore.Pool, name string) (MirrorInfo, error) {
	mi, err := s.MirrorInfo(ctx, pool, name)
	if err != nil {
		return mi, err
	}
	if !mi.Enabled {
		return mi, fmt.Errorf("image %s/%s: %w (rbd mirror image enable %s/%s journal)", pool.Name(), name, ErrMirroringDisabled, pool.Name(), name)
	}
	return mi, nil
}

func (s *cephStorage) PromoteImage(ctx context.Context, pool objstore.Pool, name string, force bool) error {
	mi, err := s.mirrored(ctx, pool, name)
	if err != nil || mi.Primary {
		return err
	}
	return s.opErr(librbd.MirrorPromote(ctx, pool, name, force))
}

func (s *cephStorage) DemoteImage(ctx context.Context, pool objstore.Pool, name string) error {
	mi, err := s.mirrored(ctx, pool, name)
	if err != nil || !mi.Primary {
		return err
	}
	// librbd demotes through the image's exclusive lock: a csi-rbdj node
	// serving the image owns it and does not hand it over for a demotion
	// (librbd's owner-side DemotePromote is not implemented), so a served
	// image is refused rather than left half demoted.
	users, err := imageOpeners(ctx, pool, name)
	if err != nil {
		return s.opErr(err)
	}
	if len(users) > 0 {
		return fmt.Errorf("image %s/%s is in use by %d client(s) (staged on a node): %w; unstage it before demoting it", pool.Name(), name, len(users), image.ErrBusy)
	}
	return s.opErr(librbd.MirrorDemote(ctx, pool, name))
}

func (s *cephStorage) ResyncImage(ctx context.Context, pool objstore.Pool, name string) error {
	mi, err := s.mirrored(ctx, pool, name)
	if err != nil {
		return err
	}
	if mi.Primary {
		return fmt.Errorf("image %s/%s: %w: only a non-primary copy can be resynced from its primary; demote this one first (or resync on the other site)", pool.Name(), name, ErrImagePrimary)
	}
	return s.opErr(librbd.MirrorResync(ctx, pool, name))
}

func (s *cephStorage) DisableMirroring(ctx context.Context, pool objstore.Pool, name string, force bool) error {
	mi, err := s.MirrorInfo(ctx, pool, name)
	if err != nil || !mi.Enabled {
		return err
	}
	if !mi.Primary && !force {
		return fmt.Errorf("image %s/%s is a non-primary replica: %w; disabling mirroring there makes it a standalone copy of whatever it has replayed: ask with force, or disable mirroring on the primary site",
			pool.Name(), name, ErrNotPrimary)
	}
	// librbd's disable removes the journaling feature through the image's
	// exclusive lock, and the journal is re-created here without it:
	// refused while a node serves the image.
	users, err := imageOpeners(ctx, pool, name)
	if err != nil {
		return s.opErr(err)
	}
	if len(users) > 0 {
		return fmt.Errorf("image %s/%s is in use by %d client(s) (staged on a node): %w; unstage it before disabling its mirroring", pool.Name(), name, len(users), image.ErrBusy)
	}
	before, err := imageInfo(ctx, pool, name)
	if err != nil {
		return s.opErr(err)
	}
	if err := librbd.MirrorDisable(ctx, pool, name, force && !mi.Primary); err != nil {
		return s.opErr(err)
	}
	// librbd drops the journaling feature of a journal-mirrored image
	// (in a pool of image mode); a csi-rbdj volume needs its journal.
	if err := ensureJournaling(ctx, pool, name, before); err != nil {
		return s.opErr(fmt.Errorf("mirroring of %s/%s disabled, but librbd removed its journal and re-creating it failed (rbd feature enable %s/%s journaling --journal-order %d --journal-splay-width %d): %w",
			pool.Name(), name, pool.Name(), name, before.JournalOrder, before.JournalSplayWidth, err))
	}
	return nil
}

func (s *cephStorage) LocalMirrorStatus(ctx context.Context, pool objstore.Pool, name string) (MirrorSiteStatus, error) {
	st, err := librbd.MirrorLocalStatus(ctx, pool, name)
	if err != nil {
		return MirrorSiteStatus{}, s.opErr(err)
	}
	resync, err := ResyncRequested(ctx, pool, name)
	if err != nil {
		return MirrorSiteStatus{}, s.opErr(err)
	}
	return MirrorSiteStatus{Known: st.Known, Up: st.Up, State: st.State, Description: st.Description,
		LastUpdate: st.LastUpdate, ResyncRequested: resync}, nil
}

func (s *cephStorage) Replication(ctx context.Context, pool objstore.Pool, name string) ([]PeerReplication, error) {
	peers, err := JournalReplication(ctx, pool, name)
	if err != nil && !errors.Is(err, ErrNoMirrorPeer) {
		return nil, s.opErr(err)
	}
	return peers, err
}
