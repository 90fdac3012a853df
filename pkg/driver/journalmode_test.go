package driver_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/extentlog"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestJournalModeCreateVolume: the journal mode is fixed for the life of a
// volume, metadata cannot be mirrored, unknown modes are refused with the
// accepted ones named.
func TestJournalModeCreateVolume(t *testing.T) {
	ctrl, _, _, _ := startDriver(t)
	ctx := context.Background()
	create := func(name string, params map[string]string) error {
		_, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{rwo},
			CapacityRange: &csi.CapacityRange{RequiredBytes: 32 << 20}, Parameters: params})
		return err
	}
	meta := map[string]string{volume.ParamJournalMode: "metadata"}
	if err := create("m", meta); err != nil {
		t.Fatal(err)
	}
	if err := create("f", nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		params map[string]string
		msg    string
	}{
		{"m", nil, `volume "m" exists with journal mode "metadata"; the journal mode of a volume cannot be changed (requested "full")`},
		{"m", map[string]string{volume.ParamJournalMode: "full"}, `cannot be changed (requested "full")`},
		{"f", meta, `volume "f" exists with journal mode "full"; the journal mode of a volume cannot be changed (requested "metadata")`},
		{"x", map[string]string{volume.ParamJournalMode: "metadata", volume.ParamMirroring: storage.MirrorModeJournal}, `cannot be combined with journalMode "metadata"`},
		{"y", map[string]string{volume.ParamJournalMode: "data=ordered"}, `unknown journal mode "data=ordered" (want full or metadata)`},
	} {
		err := create(tc.name, tc.params)
		if st, _ := status.FromError(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tc.msg) {
			t.Errorf("CreateVolume(%s, %v) = %v, want InvalidArgument with %q", tc.name, tc.params, err, tc.msg)
		}
	}
	// The same request again is idempotent.
	if err := create("m", meta); err != nil {
		t.Errorf("repeated CreateVolume: %v", err)
	}
}

// TestJournalModeMetadataStage stages a metadata-mode volume through the
// driver (ext4 formatted on it), and checks that its image has no librbd
// journal but an extent log, and that DeleteVolume removes the log.
func TestJournalModeMetadataStage(t *testing.T) {
	kerneltest.RequireRoot(t)
	d := serveLocal(t)
	dir, b, ctrl, node := d.dir, d.b, d.ctrl, d.node
	ctx := context.Background()
	vol := createVolume(ctx, t, ctrl, &csi.CreateVolumeRequest{Name: "m", VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, Parameters: map[string]string{volume.ParamJournalMode: "metadata"}})
	id := vol.GetVolume().GetVolumeId()
	vc := vol.GetVolume().GetVolumeContext()
	if vc[volume.CtxJournalMode] != "metadata" {
		t.Fatalf("volume context %v lacks the journal mode", vc)
	}
	stageWriteUnstage(t, node, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: filepath.Join(dir, "staging"), VolumeCapability: rwo, VolumeContext: vc},
		"journal mode metadata, 0 torn extents")
	vid, err := volume.ParseVolumeID(id)
	if err != nil {
		t.Fatal(err)
	}
	st, err := b.Storage(ctx, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := st.Pool(ctx, vid.Pool)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.ImageInfo(ctx, pool, vid.Image)
	if err != nil {
		t.Fatal(err)
	}
	if info.Features&clsrbd.FeatureJournaling != 0 {
		t.Errorf("metadata-mode image has features %v", clsrbd.FeatureNames(info.Features))
	}
	if ok, err := extentlog.Exists(ctx, pool, info.ID); err != nil || !ok {
		t.Fatalf("extent log after staging: %v %v", ok, err)
	}
	if objs, err := pool.List(ctx, journal.HeaderOID(info.ID)); err != nil || len(objs) != 0 {
		t.Errorf("a librbd journal header exists: %v %v", objs, err)
	}
	if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
	if ok, err := extentlog.Exists(ctx, pool, info.ID); err != nil || ok {
		t.Errorf("extent log after DeleteVolume: %v %v", ok, err)
	}
	left, err := pool.List(ctx, "csi_rbdj_journal")
	if err != nil || len(left) != 0 {
		t.Errorf("extent log objects left: %v %v", left, err)
	}
}

// stageWriteUnstage stages a filesystem volume with req (its staging path
// created first), writes a file on it, checks that NodeGetVolumeStats
// reports it healthy with wantCondition in the message, and unstages it.
func stageWriteUnstage(t *testing.T, node csi.NodeClient, req *csi.NodeStageVolumeRequest, wantCondition string) {
	t.Helper()
	ctx := context.Background()
	staging := req.GetStagingTargetPath()
	if err := os.Mkdir(staging, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeStageVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(staging, "hello"), []byte("staged"), 0o644); err != nil {
		t.Fatal(err)
	}
	stats, err := node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: req.GetVolumeId(), VolumePath: staging})
	if err != nil {
		t.Fatal(err)
	}
	if c := stats.GetVolumeCondition(); c.GetAbnormal() || !strings.Contains(c.GetMessage(), wantCondition) {
		t.Errorf("volume condition %v, want healthy with %q", c, wantCondition)
	}
	if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: req.GetVolumeId(), StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
}
