package volume

import (
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// TestNodeCapabilityReaderOnly: the node accepts MULTI_NODE_READER_ONLY
// (served unowned for a non-primary image), the controller does not; both
// reader-only modes are read-only; the access type is still checked.
func TestNodeCapabilityReaderOnly(t *testing.T) {
	mount := func(mode csi.VolumeCapability_AccessMode_Mode, fs string) *csi.VolumeCapability {
		return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}
	}
	for _, tc := range []struct {
		name           string
		c              *csi.VolumeCapability
		node, ctrl, ro bool
	}{
		{"RWO", mount(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "ext4"), true, true, false},
		{"single reader", mount(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, "xfs"), true, true, true},
		{"multi reader", mount(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY, "ext4"), true, false, true},
		{"multi reader block", &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY}}, true, false, true},
		{"multi reader btrfs", mount(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY, "btrfs"), false, false, true},
		{"multi writer", mount(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, "ext4"), false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := ValidateNodeCapability(tc.c); (err == nil) != tc.node {
				t.Errorf("ValidateNodeCapability: %v, want ok %v", err, tc.node)
			}
			if err := ValidateCapability(tc.c); (err == nil) != tc.ctrl {
				t.Errorf("ValidateCapability: %v, want ok %v", err, tc.ctrl)
			}
			if got := IsReadOnlyMode(tc.c); got != tc.ro {
				t.Errorf("IsReadOnlyMode %v, want %v", got, tc.ro)
			}
		})
	}
}
