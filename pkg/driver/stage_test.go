package driver_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/fsprobe"
	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestStageErrorsCleanUp: a NodeStage that fails after the device was
// served leaves nothing behind (no loop device, no FUSE mount, no record,
// no watcher: the volume deletes), and staging conflicts are refused.
func TestStageErrorsCleanUp(t *testing.T) {
	kerneltest.RequireRoot(t)
	ctrl, node, _, dir := startDriver(t)
	ctx := context.Background()
	vol := createVolume(ctx, t, ctrl, &csi.CreateVolumeRequest{Name: "v", VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 32 << 20}})
	id := vol.GetVolume().GetVolumeId()
	staging, other := filepath.Join(dir, "staging"), filepath.Join(dir, "other")
	for _, p := range []string{staging, other} {
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	// A blank volume cannot be formatted read-only: the stage fails after
	// serving and attaching the device, and must undo both.
	roCap := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, "ext4")
	_, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: roCap})
	if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "unformatted") {
		t.Fatalf("read-only stage of a blank volume: %v", err)
	}
	if left := loopsUnder(dir); len(left) > 0 {
		t.Errorf("failed stage left loop devices: %v", left)
	}
	if left := fsprobe.MountsUnder(dir); len(left) > 0 {
		t.Errorf("failed stage left mounts: %v", left)
	}
	if recs, _ := filepath.Glob(filepath.Join(dir, "node", "volumes", "*")); len(recs) > 0 {
		t.Errorf("failed stage left records: %v", recs)
	}

	// Stage for real, then the conflicts.
	if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: rwo}); err != nil {
		t.Fatal(err)
	}
	_, err = node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: other, VolumeCapability: rwo})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("stage at a second path: %v, want FailedPrecondition", err)
	}
	_, err = node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "xfs")})
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("stage with another fs type: %v, want AlreadyExists", err)
	}
	block := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}, AccessMode: rwo.AccessMode}
	_, err = node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: filepath.Join(dir, "t"), VolumeCapability: block})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("publish as block of a filesystem staging: %v, want InvalidArgument", err)
	}
	sw := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER, "ext4")
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: filepath.Join(dir, "t1"), VolumeCapability: sw}); err != nil {
		t.Fatal(err)
	}
	_, err = node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: filepath.Join(dir, "t2"), VolumeCapability: sw})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("second writer of a SINGLE_NODE_SINGLE_WRITER volume: %v, want FailedPrecondition", err)
	}
	_, err = node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("unstage while published: %v, want FailedPrecondition", err)
	}
	if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: filepath.Join(dir, "t1")}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
}
