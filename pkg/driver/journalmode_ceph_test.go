//go:build ceph && pacific

package driver_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestCephJournalModeMetadata: a journalMode metadata volume on Ceph, with
// the cephx capabilities of a deployment: its image has no librbd journal,
// the node keeps the extent log, a filesystem on it survives an unstage
// (rbd sees the data in place), and DeleteVolume removes the log.
func TestCephJournalModeMetadata(t *testing.T) {
	f, ctrl, node, dir := serveCephAsRoot(t)
	ctx := context.Background()
	vc := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	vol := createVolume(ctx, t, ctrl, &csi.CreateVolumeRequest{Name: uniqueName("csirbdj-meta"), VolumeCapabilities: []*csi.VolumeCapability{vc},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, Secrets: secrets(f.rw),
		Parameters: map[string]string{volume.ParamClusterID: cephTestCluster, volume.ParamJournalMode: "metadata"}})
	id := vol.GetVolume().GetVolumeId()
	vid, err := volume.ParseVolumeID(id)
	if err != nil {
		t.Fatal(err)
	}
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			_, _ = ctrl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id, Secrets: secrets(f.rw)})
		}
	})
	spec := cephtest.PoolName + "/" + vid.Image
	// Mirroring it is refused (InvalidArgument), before its first stage too.
	b := openCeph(t, f.configFile, "")
	t.Cleanup(func() { b.Close() })
	m, pool := f.mirrorer(t, b, cephtest.PoolName)
	err = m.EnableJournalMirroring(ctx, pool, vid.Image)
	if !errors.Is(err, storage.ErrMetadataJournalMode) || status.Code(volume.MirrorStatus(err, volume.SecretsReplication, "enable")) != codes.InvalidArgument {
		t.Errorf("EnableJournalMirroring of a metadata-mode volume: %v", err)
	}
	if info := f.rbd(t, "info", spec); strings.Contains(info, "journaling") {
		t.Errorf("metadata-mode image carries journaling:\n%s", info)
	}
	stageWriteUnstage(t, node, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: filepath.Join(dir, "staging"), VolumeCapability: vc,
		VolumeContext: vol.GetVolume().GetVolumeContext(), Secrets: secrets(f.rw)}, "journal mode metadata")
	imageID := strings.TrimSpace(f.rbd(t, "info", "--format", "json", spec))
	if i := strings.Index(imageID, `"id":"`); i >= 0 {
		imageID = imageID[i+6:]
		imageID = imageID[:strings.IndexByte(imageID, '"')]
	} else {
		t.Fatalf("no id in rbd info: %s", imageID)
	}
	objs, err := cephCLI(ctx, f.conf, "rados", "-p", cephtest.PoolName, "ls")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(objs, "\n")
	if !slices.Contains(lines, "csi_rbdj_journal."+imageID) {
		t.Errorf("no extent log header csi_rbdj_journal.%s in the pool", imageID)
	}
	if slices.Contains(lines, "journal."+imageID) {
		t.Errorf("a librbd journal exists for %s", imageID)
	}
	if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: secrets(f.rw)}); err != nil {
		t.Fatal(err)
	}
	deleted = true
	objs, err = cephCLI(ctx, f.conf, "rados", "-p", cephtest.PoolName, "ls")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range strings.Split(objs, "\n") {
		if strings.Contains(o, imageID) {
			t.Errorf("object %s left after DeleteVolume", o)
		}
	}
}
