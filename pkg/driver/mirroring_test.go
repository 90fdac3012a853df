package driver_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestMirroringLocal: the local backend refuses the mirroring parameter
// (InvalidArgument naming Ceph) and creates nothing; a volume whose
// journal's current epoch belongs to a mirror peer (what rbd-mirror's
// replay leaves on a replica) or to nobody (demoted) is not staged.
func TestMirroringLocal(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b, err := storage.OpenLocal(storage.LocalOptions{Dir: filepath.Join(dir, "cluster"), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ctrl, node, _ := serveDriver(t, dir, b)
	_, err = ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "m", VolumeCapabilities: []*csi.VolumeCapability{rwo},
		Parameters: map[string]string{volume.ParamMirroring: "journal"}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "needs the Ceph backend") {
		t.Fatalf("mirroring on the local backend: %v, want InvalidArgument naming Ceph", err)
	}
	_, err = ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "m", VolumeCapabilities: []*csi.VolumeCapability{rwo},
		Parameters: map[string]string{volume.ParamMirroring: "snapshot"}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `want "journal"`) {
		t.Fatalf("mirroring: snapshot: %v, want InvalidArgument", err)
	}
	pool, err := b.EnsurePool(ctx, volume.DefaultPool)
	if err != nil {
		t.Fatal(err)
	}
	if objs, _ := pool.List(ctx, "rbd_id."); len(objs) != 0 {
		t.Fatalf("a refused CreateVolume created images: %v", objs)
	}

	vol, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "replica", VolumeCapabilities: []*csi.VolumeCapability{rwo}})
	if err != nil {
		t.Fatal(err)
	}
	staging := filepath.Join(dir, "staging")
	if err := os.Mkdir(staging, 0o755); err != nil {
		t.Fatal(err)
	}
	name := volume.ImageNameFor("replica")
	id, err := clsrbd.GetID(ctx, pool, clsrbd.IDOID(name))
	if err != nil {
		t.Fatal(err)
	}
	oid := journal.HeaderOID(id)
	c, err := clsjournal.GetClient(ctx, pool, oid, rbdjournal.LocalMirrorUUID)
	if err != nil {
		t.Fatal(err)
	}
	var cd rbdjournal.ClientData
	if err := cephenc.Unmarshal(c.Data, &cd); err != nil {
		t.Fatal(err)
	}
	tagClass := cd.Meta.(rbdjournal.ImageClientMeta).TagClass
	for _, tt := range []struct{ owner, want string }{
		{"5f0c9b8e-peer-uuid", "non-primary: a mirror replica whose journal belongs to the mirror peer with uuid 5f0c9b8e-peer-uuid"},
		{rbdjournal.OrphanMirrorUUID, "demoted: no site is primary"},
	} {
		tid, err := clsjournal.GetNextTagTid(ctx, pool, oid)
		if err != nil {
			t.Fatal(err)
		}
		var op objstore.WriteOp
		clsjournal.TagCreate(&op, tid, tagClass, cephenc.Marshal(rbdjournal.TagData{MirrorUUID: tt.owner}))
		if err := pool.Operate(ctx, oid, &op); err != nil {
			t.Fatal(err)
		}
		for _, mode := range []*csi.VolumeCapability{rwo, mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, "ext4")} {
			_, err = node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolume().GetVolumeId(), StagingTargetPath: staging, VolumeCapability: mode})
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "rbd mirror image promote rbd/"+name) {
				t.Fatalf("stage (%v) of an image owned by %q: %v, want FailedPrecondition saying %q and how to promote", mode.GetAccessMode().GetMode(), tt.owner, err, tt.want)
			}
		}
		// Nothing was written to the journal by the refused stages.
		if next, _ := clsjournal.GetNextTagTid(ctx, pool, oid); next != tid+1 {
			t.Fatalf("the refused stage allocated journal tags (next tid %d, want %d)", next, tid+1)
		}
	}
}
