package volume

import (
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// singleNodeModes are the access modes a journaled volume supports: one
// node at a time, because the image has one journal writer (the holder of
// its exclusive lock).
var singleNodeModes = map[csi.VolumeCapability_AccessMode_Mode]bool{
	csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER:        true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:   true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER: true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:  true,
}

// ValidateCapability checks one volume capability; the error says what to
// change. It is used by the controller and the node.
func ValidateCapability(c *csi.VolumeCapability) error {
	if c == nil {
		return fmt.Errorf("volume capability is missing")
	}
	am := c.GetAccessMode()
	if am == nil {
		return fmt.Errorf("volume capability has no access mode (use SINGLE_NODE_WRITER, SINGLE_NODE_READER_ONLY, SINGLE_NODE_SINGLE_WRITER or SINGLE_NODE_MULTI_WRITER)")
	}
	if !singleNodeModes[am.GetMode()] {
		return fmt.Errorf("access mode %s is not supported: a journaled RBD volume has exactly one journal writer (the node holding the image's exclusive lock), so it can be used by one node at a time; use a SINGLE_NODE_* mode (ReadWriteOnce or ReadWriteOncePod)", am.GetMode())
	}
	switch at := c.GetAccessType().(type) {
	case *csi.VolumeCapability_Block:
	case *csi.VolumeCapability_Mount:
		if fs := at.Mount.GetFsType(); fs != "" && !isSupportedFs(fs) {
			return fmt.Errorf("filesystem %q is not supported (use ext4 or xfs)", fs)
		}
		if at.Mount.GetVolumeMountGroup() != "" {
			return fmt.Errorf("volume_mount_group is not supported (the driver does not advertise VOLUME_MOUNT_GROUP)")
		}
	default:
		return fmt.Errorf("volume capability has no access type (use block or mount)")
	}
	return nil
}

// ValidateCapabilities checks every capability of a request.
func ValidateCapabilities(cs []*csi.VolumeCapability) error {
	if len(cs) == 0 {
		return fmt.Errorf("volume capabilities are missing (give at least one, e.g. mount with SINGLE_NODE_WRITER)")
	}
	for i, c := range cs {
		if err := ValidateCapability(c); err != nil {
			return fmt.Errorf("volume capability %d: %w", i, err)
		}
	}
	return nil
}

// ValidateNodeCapability is ValidateCapability for NodeStageVolume and
// NodePublishVolume, which also accept MULTI_NODE_READER_ONLY: a node
// serves a non-primary mirror image read-only without owning it, so any
// number of nodes may read it (the node refuses the mode for an image it
// would have to own). The controller never offers the mode.
func ValidateNodeCapability(c *csi.VolumeCapability) error {
	if c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY {
		single := &csi.VolumeCapability{AccessType: c.GetAccessType(),
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY}}
		return ValidateCapability(single)
	}
	return ValidateCapability(c)
}

// IsReadOnlyMode reports whether the access mode allows no writes.
func IsReadOnlyMode(c *csi.VolumeCapability) bool {
	switch c.GetAccessMode().GetMode() {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:
		return true
	}
	return false
}
