package volume

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
)

// SecretsSnapshotter: CreateSnapshot and DeleteSnapshot (the
// csi-snapshotter sends the VolumeSnapshotClass's
// csi.storage.k8s.io/snapshotter-secret-*).
const SecretsSnapshotter SecretsOf = "snapshotter"

// snapPrefix starts the names of the snapshots the controller makes.
const snapPrefix = "csi-snap-"

// SnapshotID is what a snapshot id encodes: the volume id of the source
// image and the snapshot's name on it.
//
//	rbdj1/<backend>/<cluster id>/<pool>/<image>@<snapshot>
type SnapshotID struct {
	VolumeID
	Snap string
}

// String formats the id.
func (s SnapshotID) String() string { return s.VolumeID.String() + "@" + s.Snap }

// Validate checks every field.
func (s SnapshotID) Validate() error {
	if err := s.VolumeID.Validate(); err != nil {
		return err
	}
	if err := storage.ValidateName("snapshot", s.Snap); err != nil {
		return err
	}
	return checkIDLen("snapshot id", s.String())
}

// ParseSnapshotID parses an id made by SnapshotID.String; the errors wrap
// ErrForeignVolumeID (never issued by this driver) or ErrMalformedVolumeID.
func ParseSnapshotID(s string) (SnapshotID, error) {
	vol, snap, ok := strings.Cut(s, "@")
	if !strings.HasPrefix(s, VolumeIDPrefix+"/") {
		return SnapshotID{}, fmt.Errorf("snapshot id %q: %w (want %s/<backend>/<cluster>/<pool>/<image>@<snapshot>)", s, ErrForeignVolumeID, VolumeIDPrefix)
	}
	if !ok {
		return SnapshotID{}, fmt.Errorf("snapshot id %q: %w: no '@<snapshot>'", s, ErrMalformedVolumeID)
	}
	v, err := ParseVolumeID(vol)
	if err != nil {
		return SnapshotID{}, fmt.Errorf("snapshot id %q: %w", s, err)
	}
	id := SnapshotID{VolumeID: v, Snap: snap}
	if err := id.Validate(); err != nil {
		return SnapshotID{}, fmt.Errorf("snapshot id %q: %w: %w", s, ErrMalformedVolumeID, err)
	}
	return id, nil
}

// SnapNameFor derives the snapshot name of a CreateSnapshot request's
// name (deterministic: CreateSnapshot is idempotent by name).
func SnapNameFor(csiName string) string {
	sum := sha256.Sum256([]byte(csiName))
	return snapPrefix + hex.EncodeToString(sum[:12])
}
