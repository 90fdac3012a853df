//go:build ceph && pacific

package driver_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
)

// TestCephFormatMarker: the format marker is real image metadata that
// librbd and the rbd CLI read and write: CreateVolume sets it (rbd
// image-meta get shows the image id), the first stage formats and removes
// it; a blank image created with the rbd CLI (a static volume) is refused
// and stays blank; the documented `rbd image-meta set ... true` override
// makes the next stage format it.
func TestCephFormatMarker(t *testing.T) {
	f := newCephFixture(t)
	ctx := context.Background()
	ctrl, node, staging := f.serve(t, f.configFile, "")
	metaGet := func(name string) (string, bool) {
		out, err := cephCLI(ctx, f.conf, "rbd", "image-meta", "get", cephtest.PoolName+"/"+name, storage.MetaFormatBlank)
		if err != nil {
			return out, false
		}
		return strings.TrimSpace(out), true
	}

	csiName := uniqueName("fmt")
	vol := createVolume(ctx, t, ctrl, &csi.CreateVolumeRequest{Name: csiName, VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}, Secrets: secrets(f.rw)})
	id := vol.GetVolume().GetVolumeId()
	name := volume.ImageNameFor(csiName)
	t.Cleanup(func() { f.removeImage(t, name) })
	imgID := ""
	for _, l := range strings.Split(f.rbd(t, "info", cephtest.PoolName+"/"+name), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "id: "); ok {
			imgID = v
		}
	}
	if v, ok := metaGet(name); !ok || v != imgID || imgID == "" {
		t.Fatalf("rbd image-meta get after CreateVolume: %q (ok %v), want the image id %q", v, ok, imgID)
	}
	stage := func(id string) error {
		_, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: rwo, Secrets: secrets(f.rw)})
		return err
	}
	unstage := func(id string) {
		t.Helper()
		if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			t.Fatal(err)
		}
	}
	if err := stage(id); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(staging, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	unstage(id)
	if v, ok := metaGet(name); ok {
		t.Fatalf("marker still set after the filesystem was made: %q", v)
	}

	static := uniqueName("static-blank")
	f.createImage(t, static, "layering,exclusive-lock,journaling", 16)
	err := stage(staticVolumeID(static))
	wantStatus(t, "NodeStage of a blank static image", err, codes.FailedPrecondition, "reads as blank",
		"rbd image-meta set "+cephtest.PoolName+"/"+static+" csi-rbdj.format-blank true")
	if du := f.rbd(t, "du", cephtest.PoolName+"/"+static); !strings.Contains(du, " 0 B") {
		t.Errorf("the refused stage wrote to the image:\n%s", du)
	}
	f.rbd(t, "image-meta", "set", cephtest.PoolName+"/"+static, storage.MetaFormatBlank, "true")
	if err := stage(staticVolumeID(static)); err != nil {
		t.Fatalf("stage with the override: %v", err)
	}
	unstage(staticVolumeID(static))
	if v, ok := metaGet(static); ok {
		t.Fatalf("override not consumed: %q", v)
	}
}
