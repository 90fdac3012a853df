package volume

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
)

// VolumeIDPrefix starts every volume id this driver issues. The version in it
// lets a later format coexist with volumes created under this one.
const VolumeIDPrefix = "rbdj1"

// maxVolumeIDLen is the CSI limit on a volume id (128 bytes).
const maxVolumeIDLen = 128

// imagePrefix starts the names of the images the controller creates.
const imagePrefix = "csi-vol-"

// VolumeID is what a volume id encodes: everything a node needs to find the
// image without asking the controller.
//
//	rbdj1/<backend>/<cluster id>/<pool>/<image>
//
// for example "rbdj1/local/default/rbd/csi-vol-5f1c0d6a3b2e4f7a8c9d0e1f".
type VolumeID struct {
	Backend string // "local" or "ceph"
	Cluster string // the cluster id the storage was configured with
	Pool    string
	Image   string
}

// String formats the id.
func (v VolumeID) String() string {
	return strings.Join([]string{VolumeIDPrefix, v.Backend, v.Cluster, v.Pool, v.Image}, "/")
}

// Errors of ParseVolumeID.
var (
	// ErrForeignVolumeID: the id was not issued by this driver (no volume
	// can have it: callers answer NotFound).
	ErrForeignVolumeID = errors.New("not a csi-rbdj volume id")
	// ErrMalformedVolumeID: the id has this driver's prefix but is damaged
	// (callers answer InvalidArgument).
	ErrMalformedVolumeID = errors.New("malformed csi-rbdj volume id")
)

// ParseVolumeID parses an id made by VolumeID.String.
func ParseVolumeID(s string) (VolumeID, error) {
	if !strings.HasPrefix(s, VolumeIDPrefix+"/") {
		return VolumeID{}, fmt.Errorf("volume id %q: %w (want %s/<backend>/<cluster>/<pool>/<image>)", s, ErrForeignVolumeID, VolumeIDPrefix)
	}
	parts := strings.Split(s, "/")
	if len(parts) != 5 {
		return VolumeID{}, fmt.Errorf("volume id %q: %w: want 5 '/'-separated fields, got %d", s, ErrMalformedVolumeID, len(parts))
	}
	v := VolumeID{Backend: parts[1], Cluster: parts[2], Pool: parts[3], Image: parts[4]}
	if err := v.Validate(); err != nil {
		return VolumeID{}, fmt.Errorf("volume id %q: %w: %w", s, ErrMalformedVolumeID, err)
	}
	return v, nil
}

// volumeID returns v; a SnapshotID has it too (of its volume), for
// resolveID.
func (v VolumeID) volumeID() VolumeID { return v }

// Validate checks every field.
func (v VolumeID) Validate() error {
	if v.Backend != storage.BackendLocal && v.Backend != storage.BackendCeph {
		return fmt.Errorf("unknown backend %q", v.Backend)
	}
	if err := storage.ValidateName("cluster id", v.Cluster); err != nil {
		return err
	}
	if err := storage.ValidateName("pool", v.Pool); err != nil {
		return err
	}
	if err := storage.ValidateName("image", v.Image); err != nil {
		return err
	}
	return checkIDLen("id", v.String())
}

// checkIDLen enforces the CSI limit on an id the driver issues (what
// names it in the error).
func checkIDLen(what, id string) error {
	if len(id) > maxVolumeIDLen {
		return fmt.Errorf("%s longer than %d bytes", what, maxVolumeIDLen)
	}
	return nil
}

// ImageNameFor derives the image name of the volume a CreateVolume request
// names. It is deterministic (CreateVolume is idempotent by name) and
// bounded in length whatever the CSI name is; the CSI name itself is kept in
// the volume's record object.
func ImageNameFor(csiName string) string {
	sum := sha256.Sum256([]byte(csiName))
	return imagePrefix + hex.EncodeToString(sum[:12])
}
