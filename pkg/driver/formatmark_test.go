package driver_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/fsprobe"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestNeverFormatVolumeThatHadData, on real loop devices and filesystems
// (local backend): a volume created by CreateVolume gets its filesystem at
// the first stage and loses its "new" marker; once its data objects are
// gone (a replica that never synced reads the same: all zeros) the next
// stage is refused with FailedPrecondition and writes nothing; a
// pre-provisioned blank image (no marker) is refused too; the documented
// override (image metadata csi-rbdj.format-blank=true) formats it.
func TestNeverFormatVolumeThatHadData(t *testing.T) {
	kerneltest.RequireRoot(t)
	ctx := context.Background()
	d := serveLocal(t)
	dir, b, ctrl, node := d.dir, d.b, d.ctrl, d.node
	pool, err := b.EnsurePool(ctx, volume.DefaultPool)
	if err != nil {
		t.Fatal(err)
	}
	staging := filepath.Join(dir, "staging")
	if err := os.Mkdir(staging, 0o755); err != nil {
		t.Fatal(err)
	}
	mark := func(name string) storage.FormatBlank {
		t.Helper()
		f, err := storage.GetFormatBlank(ctx, pool, name)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	dataObjects := func(name string) []string {
		t.Helper()
		id, err := clsrbd.GetID(ctx, pool, clsrbd.IDOID(name))
		if err != nil {
			t.Fatal(err)
		}
		objs, err := pool.List(ctx, "rbd_data."+id+".")
		if err != nil {
			t.Fatal(err)
		}
		return objs
	}
	stage := func(id string) error {
		_, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: rwo})
		return err
	}
	unstage := func(id string) {
		t.Helper()
		if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			t.Fatal(err)
		}
	}
	refused := func(what string, err error, name string) {
		t.Helper()
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "reads as blank") ||
			!strings.Contains(err.Error(), "rbd image-meta set rbd/"+name+" csi-rbdj.format-blank true") {
			t.Fatalf("%s: %v, want FailedPrecondition with the override", what, err)
		}
		if objs := dataObjects(name); len(objs) != 0 {
			t.Fatalf("%s: the refused stage wrote %d data objects (formatted?)", what, len(objs))
		}
		if m := fsprobe.MountsUnder(dir); len(m) != 0 {
			t.Fatalf("%s: left mounts %v", what, m)
		}
	}

	// A new volume: marked at CreateVolume, formatted at the first stage.
	vol := createVolume(ctx, t, ctrl, &csi.CreateVolumeRequest{Name: "fresh", VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 32 << 20}})
	id := vol.GetVolume().GetVolumeId()
	name := volume.ImageNameFor("fresh")
	if f := mark(name); f != storage.FormatBlankNew {
		t.Fatalf("CreateVolume left marker %v, want new", f)
	}
	if err := stage(id); err != nil {
		t.Fatalf("stage a new volume: %v", err)
	}
	if err := os.WriteFile(filepath.Join(staging, "data"), []byte("acknowledged"), 0o644); err != nil {
		t.Fatal(err)
	}
	unstage(id)
	if f := mark(name); f != storage.FormatBlankUnset {
		t.Fatalf("after the filesystem was made the marker is %v, want unset", f)
	}
	if n := len(dataObjects(name)); n == 0 {
		t.Fatal("the staged volume has no data objects")
	}
	// The same again: an idempotent CreateVolume must not mark it anew.
	if _, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "fresh", VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 32 << 20}}); err != nil {
		t.Fatal(err)
	}
	if f := mark(name); f != storage.FormatBlankUnset {
		t.Fatalf("a repeated CreateVolume marked a used volume: %v", f)
	}

	// Its data is lost (as on a never-synced replica): refused, untouched.
	for _, o := range dataObjects(name) {
		var op objstore.WriteOp
		op.Remove()
		if err := pool.Operate(ctx, o, &op); err != nil {
			t.Fatal(err)
		}
	}
	refused("stage of a wiped volume", stage(id), name)

	// A pre-provisioned blank image carries no marker: refused; the
	// override formats it and is consumed.
	static := "static-blank"
	if err := b.CreateImage(ctx, pool, static, 32<<20, image.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	staticID := volume.VolumeID{Backend: storage.BackendLocal, Cluster: b.ClusterID(), Pool: volume.DefaultPool, Image: static}.String()
	refused("stage of a blank static volume", stage(staticID), static)
	imgID, err := clsrbd.GetID(ctx, pool, clsrbd.IDOID(static))
	if err != nil {
		t.Fatal(err)
	}
	var op objstore.WriteOp
	clsrbd.MetadataSet(&op, map[string]string{storage.MetaFormatBlank: storage.FormatBlankOverride})
	if err := pool.Operate(ctx, clsrbd.HeaderOID(imgID), &op); err != nil {
		t.Fatal(err)
	}
	if err := stage(staticID); err != nil {
		t.Fatalf("stage with the override: %v", err)
	}
	unstage(staticID)
	if f := mark(static); f != storage.FormatBlankUnset {
		t.Fatalf("override not consumed: %v", f)
	}
	if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
}
