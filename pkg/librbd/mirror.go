//go:build ceph && pacific

package librbd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ceph/go-ceph/rbd"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Pool mirroring modes (rbd mirror pool info).
const (
	MirrorPoolDisabled = "disabled"
	MirrorPoolImage    = "image"
	MirrorPoolPool     = "pool"
)

// MirrorPoolMode returns the mirroring mode of the pool: MirrorPoolDisabled,
// MirrorPoolImage (images are mirrored once enabled one by one) or
// MirrorPoolPool (every journaled image is mirrored).
func MirrorPoolMode(ctx context.Context, pool objstore.Pool) (string, error) {
	p, err := cephPool(pool)
	if err != nil {
		return "", err
	}
	var mode rbd.MirrorMode
	var rerr error
	if cerr := p.Cluster().Call(ctx, func() { mode, rerr = rbd.GetMirrorMode(p.IOContext()) }); cerr != nil {
		return "", fmt.Errorf("mirror mode of pool %s: %w", p.Name(), cerr)
	}
	if rerr != nil {
		return "", fmt.Errorf("mirror mode of pool %s: %w", p.Name(), mapErr(rerr))
	}
	switch mode {
	case rbd.MirrorModeDisabled:
		return MirrorPoolDisabled, nil
	case rbd.MirrorModeImage:
		return MirrorPoolImage, nil
	case rbd.MirrorModePool:
		return MirrorPoolPool, nil
	}
	return "", fmt.Errorf("mirror mode of pool %s: unknown mode %d", p.Name(), mode)
}

// MirrorInfo is an image's mirroring state (rbd mirror image status, the
// local part).
type MirrorInfo struct {
	// State is "enabled", "disabled" or "disabling".
	State string
	// Mode is "journal" or "snapshot" (meaningful while enabled).
	Mode string
	// Primary: this site's copy is the primary one (writable).
	Primary bool
	// GlobalID names the image on every site.
	GlobalID string
}

// Enabled reports whether mirroring is enabled on the image.
func (m MirrorInfo) Enabled() bool { return m.State == rbd.MirrorImageEnabled.String() }

// GetMirrorInfo returns the mirroring state of image name.
func GetMirrorInfo(ctx context.Context, pool objstore.Pool, name string) (MirrorInfo, error) {
	return mirrorRead(ctx, pool, name, "mirror info", func(img *rbd.Image) (MirrorInfo, error) {
		info, err := img.GetMirrorImageInfo()
		if err != nil {
			return MirrorInfo{}, mapErr(err)
		}
		mi := MirrorInfo{State: info.State.String(), Primary: info.Primary, GlobalID: info.GlobalID}
		if info.State == rbd.MirrorImageEnabled {
			mode, err := img.GetImageMirrorMode()
			if err != nil {
				return MirrorInfo{}, mapErr(err)
			}
			mi.Mode = mode.String()
		}
		return mi, nil
	})
}

// mirrorRead opens image name read-only and returns what read finds; what
// names the result in errors.
func mirrorRead[T any](ctx context.Context, pool objstore.Pool, name, what string, read func(img *rbd.Image) (T, error)) (T, error) {
	var v T
	p, err := cephPool(pool)
	if err != nil {
		return v, err
	}
	err = withImage(ctx, p, name, false, func(img *rbd.Image) error {
		var err error
		v, err = read(img)
		return err
	})
	if err != nil {
		var zero T
		return zero, fmt.Errorf("%s of image %s/%s: %w", what, p.Name(), name, err)
	}
	return v, nil
}

// mirrorOp opens image name for writing and runs op on it.
func mirrorOp(ctx context.Context, pool objstore.Pool, name, what string, op func(img *rbd.Image) error) error {
	p, err := cephPool(pool)
	if err != nil {
		return err
	}
	if err := withImage(ctx, p, name, true, func(img *rbd.Image) error { return mapErr(op(img)) }); err != nil {
		return fmt.Errorf("%s image %s/%s: %w", what, p.Name(), name, err)
	}
	return nil
}

// MirrorEnableJournal enables journal-based mirroring on image name (rbd
// mirror image enable POOL/IMAGE journal). The pool must be in image mode.
func MirrorEnableJournal(ctx context.Context, pool objstore.Pool, name string) error {
	return mirrorOp(ctx, pool, name, "enable journal mirroring of", func(img *rbd.Image) error {
		return img.MirrorEnable(rbd.ImageMirrorModeJournal)
	})
}

// MirrorPromote makes this site's copy of image name the primary one
// (force: even though the current primary cannot be reached to demote).
func MirrorPromote(ctx context.Context, pool objstore.Pool, name string, force bool) error {
	return mirrorOp(ctx, pool, name, "promote", func(img *rbd.Image) error { return img.MirrorPromote(force) })
}

// MirrorDemote makes this site's copy of image name non-primary.
func MirrorDemote(ctx context.Context, pool objstore.Pool, name string) error {
	return mirrorOp(ctx, pool, name, "demote", func(img *rbd.Image) error { return img.MirrorDemote() })
}

// MirrorResync flags this site's non-primary copy of image name for a
// full resync from the primary (rbd-mirror deletes and re-creates it).
func MirrorResync(ctx context.Context, pool objstore.Pool, name string) error {
	return mirrorOp(ctx, pool, name, "resync", func(img *rbd.Image) error { return img.MirrorResync() })
}

// MirrorDisable disables mirroring of image name (rbd mirror image
// disable [--force]; force: even on a non-primary copy). Beware: librbd
// also removes the journaling feature of a journal-mirrored image in a
// pool of image mode (it assumes it added it at enable); see
// storage.DisableMirroring.
func MirrorDisable(ctx context.Context, pool objstore.Pool, name string, force bool) error {
	return mirrorOp(ctx, pool, name, "disable mirroring of", func(img *rbd.Image) error { return img.MirrorDisable(force) })
}

// MirrorSiteStatus is the mirror status one site's rbd-mirror reported for
// an image (rbd mirror image status).
type MirrorSiteStatus struct {
	// Known: the site reported a status.
	Known       bool
	Up          bool
	State       string // "replaying", "error", ... (MirrorImageStatusState without the up+/down+ prefix)
	Description string
	LastUpdate  time.Time
}

// MirrorLocalStatus returns the status this cluster's rbd-mirror reported
// for image name. It reads the pool's rbd_mirroring object only (unlike
// the rbd CLI it needs no mgr).
func MirrorLocalStatus(ctx context.Context, pool objstore.Pool, name string) (MirrorSiteStatus, error) {
	return mirrorRead(ctx, pool, name, "mirror status", func(img *rbd.Image) (MirrorSiteStatus, error) {
		gs, err := img.GetGlobalMirrorStatus()
		if err != nil {
			return MirrorSiteStatus{}, mapErr(err)
		}
		ls, err := gs.LocalStatus()
		if errors.Is(err, rbd.ErrNotExist) {
			return MirrorSiteStatus{}, nil
		}
		if err != nil {
			return MirrorSiteStatus{}, mapErr(err)
		}
		return MirrorSiteStatus{Known: true, Up: ls.Up, State: mirrorStateName(ls.State), Description: ls.Description,
			LastUpdate: time.Unix(ls.LastUpdate, 0)}, nil
	})
}

// mirrorStateName names a state as rbd mirror image status does.
func mirrorStateName(s rbd.MirrorImageStatusState) string {
	switch s {
	case rbd.MirrorImageStatusStateError:
		return "error"
	case rbd.MirrorImageStatusStateSyncing:
		return "syncing"
	case rbd.MirrorImageStatusStateStartingReplay:
		return "starting_replay"
	case rbd.MirrorImageStatusStateReplaying:
		return "replaying"
	case rbd.MirrorImageStatusStateStoppingReplay:
		return "stopping_replay"
	case rbd.MirrorImageStatusStateStopped:
		return "stopped"
	}
	return "unknown"
}
