//go:build ceph && pacific

package driver_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/fsprobe"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
)

// mirrorPool creates a pool of its own for a test (initialised for rbd,
// mirroring disabled) and removes it, with everything in it, at the end.
func (f *cephFixture) mirrorPool(t *testing.T) string {
	t.Helper()
	name := uniqueName("csi-rbdj-mirror")
	if out, err := cephCLI(context.Background(), f.conf, "ceph", "osd", "pool", "create", name, "8", "8"); err != nil {
		t.Fatalf("create pool %s: %v\n%s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := cephCLI(context.Background(), f.conf, "ceph", "osd", "pool", "rm", name, name, "--yes-i-really-really-mean-it"); err != nil {
			t.Errorf("remove pool %s: %v\n%s", name, err, out)
		}
	})
	f.rbd(t, "pool", "init", name)
	return name
}

// TestCephMirroring, on the test cluster in a pool of its own:
//   - mirroring: journal in a pool without mirroring fails CreateVolume
//     with FailedPrecondition naming the command, and creates nothing;
//   - once the pool mirrors per image, CreateVolume enables journal
//     mirroring on the image (primary), idempotently;
//   - the volume stages and holds a file; demoted (rbd mirror image demote),
//     a read-write NodeStage refuses it (FailedPrecondition: demoted,
//     promote); a read-only one (SINGLE_NODE_READER_ONLY and
//     MULTI_NODE_READER_ONLY) serves it without a lock: the file is read,
//     a write fails with EROFS, the journal is unchanged, the image stays
//     demoted; promoted again it stages with its file (not formatted
//     anew), and MULTI_NODE_READER_ONLY of the primary is refused;
//   - the storage layer's promote/demote/resync: promote of a primary and
//     demote of a non-primary are no-ops, resync of a primary is
//     ErrImagePrimary, demote of a staged image is refused (image.ErrBusy),
//     an unknown image is image.ErrNotFound.
func TestCephMirroring(t *testing.T) {
	f := newCephFixture(t)
	ctx := context.Background()
	pool := f.mirrorPool(t)
	b := openCeph(t, f.configFile, "")
	dir := t.TempDir()
	ctrl, node, _ := serveDriver(t, dir, b)
	staging := filepath.Join(dir, "staging")
	if err := os.Mkdir(staging, 0o755); err != nil {
		t.Fatal(err)
	}
	params := map[string]string{volume.ParamPool: pool, volume.ParamMirroring: "journal"}
	req := &csi.CreateVolumeRequest{Name: "mirrored", VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}, Parameters: params, Secrets: secrets(f.rw)}

	_, err := ctrl.CreateVolume(ctx, req)
	wantStatus(t, "CreateVolume with mirroring in a pool without it", err, codes.FailedPrecondition,
		"mirroring is not enabled on the pool", "rbd mirror pool enable "+pool+" image")
	if out := strings.TrimSpace(f.rbd(t, "ls", pool)); out != "" {
		t.Fatalf("the refused CreateVolume created images: %s", out)
	}

	f.rbd(t, "mirror", "pool", "enable", pool, "image")
	vol, err := ctrl.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	name := volume.ImageNameFor("mirrored")
	info := f.rbd(t, "info", pool+"/"+name)
	for _, want := range []string{"mirroring state: enabled", "mirroring mode: journal", "mirroring primary: true"} {
		if !strings.Contains(info, want) {
			t.Errorf("rbd info does not say %q:\n%s", want, info)
		}
	}
	if _, err := ctrl.CreateVolume(ctx, req); err != nil {
		t.Fatalf("CreateVolume again (idempotent): %v", err)
	}
	_, err = ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "mirrored", VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}, Parameters: map[string]string{volume.ParamPool: pool}, Secrets: secrets(f.rw)})
	wantStatus(t, "CreateVolume of the same name without mirroring", err, codes.AlreadyExists, `"mirroring":"journal"`)
	id := vol.GetVolume().GetVolumeId()
	stageReq := &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: rwo, Secrets: secrets(f.rw)}
	if _, err := node.NodeStageVolume(ctx, stageReq); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(staging, "f"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}

	m, p := f.mirrorer(t, b, pool)
	if err := m.DemoteImage(ctx, p, name); !errors.Is(err, image.ErrBusy) {
		t.Fatalf("demote of a staged image: %v, want image.ErrBusy", err)
	}
	if err := m.PromoteImage(ctx, p, name, false); err != nil {
		t.Fatalf("promote of a primary (no-op): %v", err)
	}
	if err := m.ResyncImage(ctx, p, name); !errors.Is(err, storage.ErrImagePrimary) {
		t.Fatalf("resync of a primary: %v, want ErrImagePrimary", err)
	}
	if err := m.PromoteImage(ctx, p, "no-such-image", false); !errors.Is(err, image.ErrNotFound) {
		t.Fatalf("promote of a missing image: %v, want image.ErrNotFound", err)
	}
	// An image mirrored by snapshots is not switched to journal mode.
	snapImg := uniqueName("snapmirror")
	f.rbd(t, "create", "--size", "16M", "--image-feature", "layering,exclusive-lock,journaling", pool+"/"+snapImg)
	f.rbd(t, "mirror", "image", "enable", pool+"/"+snapImg, "snapshot")
	if err := m.EnableJournalMirroring(ctx, p, snapImg); !errors.Is(err, storage.ErrMirrorModeConflict) {
		t.Fatalf("enable journal mirroring of a snapshot-mirrored image: %v, want ErrMirrorModeConflict", err)
	}
	if err := m.ResyncImage(ctx, p, name+"-missing"); !errors.Is(err, image.ErrNotFound) {
		t.Fatalf("resync of a missing image: %v, want image.ErrNotFound", err)
	}
	if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}

	// Demoted (the rbd CLI, as an operator would): not staged.
	f.rbd(t, "mirror", "image", "demote", pool+"/"+name)
	if mi, err := m.MirrorInfo(ctx, p, name); err != nil || mi.Primary || !mi.Enabled || mi.Mode != "journal" {
		t.Fatalf("mirror info after demote: %+v, %v", mi, err)
	}
	if err := m.DemoteImage(ctx, p, name); err != nil {
		t.Fatalf("demote of a non-primary (no-op): %v", err)
	}
	_, err = node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: rwo, Secrets: secrets(f.rw)})
	wantStatus(t, "NodeStage (read-write) of a demoted image", err, codes.FailedPrecondition,
		"demoted", "rbd mirror image promote "+pool+"/"+name, "read-only staging")
	if left := fsprobe.MountsUnder(dir); len(left) > 0 {
		t.Fatalf("refused stage left mounts: %v", left)
	}
	// Read-only (both reader-only modes): served without owning the image.
	journalBefore := f.rbd(t, "journal", "status", "--pool", pool, "--image", name)
	for _, mode := range []csi.VolumeCapability_AccessMode_Mode{csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY} {
		roReq := &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: mountCap(mode, "ext4"), Secrets: secrets(f.rw)}
		if _, err := node.NodeStageVolume(ctx, roReq); err != nil {
			t.Fatalf("NodeStage (%v) of a demoted image: %v", mode, err)
		}
		if b, err := os.ReadFile(filepath.Join(staging, "f")); err != nil || string(b) != "kept" {
			t.Errorf("%v: file of the demoted image: %q, %v", mode, b, err)
		}
		if err := os.WriteFile(filepath.Join(staging, "g"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
			t.Errorf("%v: write to the read-only staging: %v, want EROFS", mode, err)
		}
		if locks := strings.TrimSpace(f.rbd(t, "lock", "ls", pool+"/"+name)); locks != "" {
			t.Errorf("%v: the read-only staging holds a lock:\n%s", mode, locks)
		}
		if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			t.Fatalf("%v: unstage: %v", mode, err)
		}
	}
	if after := f.rbd(t, "journal", "status", "--pool", pool, "--image", name); after != journalBefore {
		t.Errorf("the read-only stagings changed the journal:\nbefore:\n%s\nafter:\n%s", journalBefore, after)
	}
	if mi, err := m.MirrorInfo(ctx, p, name); err != nil || mi.Primary {
		t.Fatalf("mirror info after the read-only stagings: %+v, %v (the image must stay demoted)", mi, err)
	}
	if left := fsprobe.MountsUnder(dir); len(left) > 0 {
		t.Fatalf("read-only stagings left mounts: %v", left)
	}

	// Promoted through the storage layer: staged with its data.
	if err := m.PromoteImage(ctx, p, name, false); err != nil {
		t.Fatalf("promote: %v", err)
	}
	if _, err := node.NodeStageVolume(ctx, stageReq); err != nil {
		t.Fatalf("stage after promote: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(staging, "f")); err != nil || string(b) != "kept" {
		t.Fatalf("file after demote/promote: %q, %v", b, err)
	}
	if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	// MULTI_NODE_READER_ONLY of a primary image: refused (it has one server).
	_, err = node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		VolumeCapability: mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY, "ext4"), Secrets: secrets(f.rw)})
	wantStatus(t, "NodeStage (MULTI_NODE_READER_ONLY) of a primary image", err, codes.FailedPrecondition, "MULTI_NODE_READER_ONLY", "primary")
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := ctrl.DeleteVolume(dctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: secrets(f.rw)}); err != nil {
		t.Fatalf("delete a mirrored volume: %v", err)
	}
}
