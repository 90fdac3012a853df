package storage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Mirroring (rbd-mirror, journal mode) is Ceph's: a Storage that supports
// it implements Mirrorer; the local backend does not.

// MirrorModeJournal is the image mirroring mode csi-rbdj enables: rbd-mirror
// replays the image's journal on the peer cluster.
const MirrorModeJournal = "journal"

// Errors of mirroring, for callers to branch on (CSI codes in pkg/volume
// and pkg/driver).
var (
	// ErrMirroringUnsupported: the backend cannot mirror (local).
	ErrMirroringUnsupported = errors.New("mirroring needs the Ceph backend (rbd-mirror replays the journal on a peer cluster)")
	// ErrPoolMirroringDisabled: mirroring is not enabled on the pool.
	ErrPoolMirroringDisabled = errors.New("mirroring is not enabled on the pool")
	// ErrMirroringDisabled: mirroring is not enabled on the image.
	ErrMirroringDisabled = errors.New("mirroring is not enabled on the image")
	// ErrMirrorModeConflict: the image is mirrored in another mode.
	ErrMirrorModeConflict = errors.New("the image is mirrored in another mode")
	// ErrImagePrimary: the request needs a non-primary image (resync).
	ErrImagePrimary = errors.New("the image is primary")
)

// MirrorInfo is the mirroring state of an image on this cluster.
type MirrorInfo struct {
	// Enabled: mirroring is enabled on the image.
	Enabled bool
	// Mode is MirrorModeJournal or "snapshot" (when Enabled).
	Mode string
	// Primary: this cluster's copy is the writable one. Images without
	// mirroring are primary.
	Primary bool
	// GlobalID names the image on every site.
	GlobalID string
}

// Mirrorer manages the rbd-mirror state of images. Every method fails
// with image.ErrNotFound for a missing image.
type Mirrorer interface {
	// CheckPoolMirroring fails with ErrPoolMirroringDisabled (naming the
	// command that enables it) unless images of the pool can be mirrored
	// one by one (pool mirror mode "image"; mode "pool" mirrors every
	// journaled image already, which is accepted too).
	CheckPoolMirroring(ctx context.Context, pool objstore.Pool) error
	// EnableJournalMirroring enables journal mirroring on an image; a
	// no-op if it is enabled in journal mode already, ErrMirrorModeConflict
	// in snapshot mode.
	EnableJournalMirroring(ctx context.Context, pool objstore.Pool, name string) error
	// MirrorInfo returns an image's mirroring state.
	MirrorInfo(ctx context.Context, pool objstore.Pool, name string) (MirrorInfo, error)
	// PromoteImage makes this cluster's copy primary (force: without the
	// peer's consent, when it is lost); a no-op on a primary image.
	PromoteImage(ctx context.Context, pool objstore.Pool, name string, force bool) error
	// DemoteImage makes this cluster's copy non-primary; a no-op on a
	// non-primary image. The image must not be in use (its owner would
	// have to demote it, which csi-rbdj's node does not do).
	DemoteImage(ctx context.Context, pool objstore.Pool, name string) error
	// ResyncImage asks rbd-mirror to copy a non-primary image anew from
	// the primary; ErrImagePrimary on a primary image.
	ResyncImage(ctx context.Context, pool objstore.Pool, name string) error
	// DisableMirroring disables mirroring of an image (a no-op when it is
	// not mirrored). A non-primary copy is disabled only with force (it
	// then stops being a replica and keeps what it has); without force
	// that is ErrNotPrimary. The image keeps a journal (librbd drops the
	// journaling feature with journal mirroring; Ceph's re-adds it) and
	// must not be in use (image.ErrBusy).
	DisableMirroring(ctx context.Context, pool objstore.Pool, name string, force bool) error
	// LocalMirrorStatus returns what this site's rbd-mirror reports about
	// the image (and whether a resync is pending).
	LocalMirrorStatus(ctx context.Context, pool objstore.Pool, name string) (MirrorSiteStatus, error)
	// Replication reports how far each rbd-mirror peer is behind this
	// (primary) copy's journal (JournalReplication); ErrNoMirrorPeer when
	// none has registered.
	Replication(ctx context.Context, pool objstore.Pool, name string) ([]PeerReplication, error)
}

// Image mirror states reported by rbd-mirror (MirrorSiteStatus.State; rbd
// mirror image status's "state" without the up+/down+ prefix).
const (
	MirrorStateUnknown        = "unknown"
	MirrorStateError          = "error"
	MirrorStateSyncing        = "syncing"
	MirrorStateStartingReplay = "starting_replay"
	MirrorStateReplaying      = "replaying"
	MirrorStateStoppingReplay = "stopping_replay"
	MirrorStateStopped        = "stopped"
)

// MirrorSiteStatus is one site's rbd-mirror status of an image.
type MirrorSiteStatus struct {
	// Known: the site's rbd-mirror has reported a status for the image.
	Known bool
	// Up: that rbd-mirror daemon is running.
	Up bool
	// State is one of the MirrorState constants.
	State string
	// Description is rbd-mirror's text ("replaying, {...}", "split-brain
	// detected", ...).
	Description string
	// LastUpdate is when rbd-mirror last wrote the status.
	LastUpdate time.Time
	// ResyncRequested: a resync was requested and rbd-mirror has not yet
	// re-created the image.
	ResyncRequested bool
}

// MirrorerOf returns st's Mirrorer, or ErrMirroringUnsupported.
func MirrorerOf(st Storage) (Mirrorer, error) {
	m, ok := st.(Mirrorer)
	if !ok {
		return nil, fmt.Errorf("%s backend: %w", st.Backend(), ErrMirroringUnsupported)
	}
	return m, nil
}

// PoolMirroringCommand is the command that enables per-image mirroring on
// a pool (and the peer setup it needs).
func PoolMirroringCommand(pool string) string {
	return fmt.Sprintf("rbd mirror pool enable %s image", pool)
}
