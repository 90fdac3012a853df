package driver_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestMirroringLocal: the local backend refuses the mirroring parameter
// (InvalidArgument naming Ceph) and creates nothing; a volume whose
// journal's current epoch belongs to a mirror peer (what rbd-mirror's
// replay leaves on a replica) or to nobody (demoted) is not staged
// read-write; a read-only staging (SINGLE_NODE_READER_ONLY,
// MULTI_NODE_READER_ONLY) serves it without owning it: its file is read, a
// write fails with EROFS; neither touches the journal.
func TestMirroringLocal(t *testing.T) {
	kerneltest.RequireRoot(t)
	ctx := context.Background()
	d := serveLocal(t)
	dir, b, ctrl, node := d.dir, d.b, d.ctrl, d.node
	_, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "m", VolumeCapabilities: []*csi.VolumeCapability{rwo},
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

	vol := createVolume(ctx, t, ctrl, &csi.CreateVolumeRequest{Name: "replica", VolumeCapabilities: []*csi.VolumeCapability{rwo}})
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
	// A filesystem with a file, written while the image was primary.
	stageReq := &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolume().GetVolumeId(), StagingTargetPath: staging, VolumeCapability: rwo}
	if _, err := node.NodeStageVolume(ctx, stageReq); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(staging, "f"), []byte("written while primary"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.GetVolume().GetVolumeId(), StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
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
		_, err = node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolume().GetVolumeId(), StagingTargetPath: staging, VolumeCapability: rwo})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "rbd mirror image promote rbd/"+name) ||
			!strings.Contains(err.Error(), "read-only staging") {
			t.Fatalf("read-write stage of an image owned by %q: %v, want FailedPrecondition saying %q, how to promote and the read-only alternative", tt.owner, err, tt.want)
		}
		// Read-only, both reader modes: served without owning the image.
		for _, mode := range []csi.VolumeCapability_AccessMode_Mode{csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY} {
			if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolume().GetVolumeId(), StagingTargetPath: staging,
				VolumeCapability: mountCap(mode, "ext4")}); err != nil {
				t.Fatalf("%v stage of an image owned by %q: %v", mode, tt.owner, err)
			}
			if b, err := os.ReadFile(filepath.Join(staging, "f")); err != nil || string(b) != "written while primary" {
				t.Errorf("%v: file %q, %v", mode, b, err)
			}
			if err := os.WriteFile(filepath.Join(staging, "g"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
				t.Errorf("%v: write: %v, want EROFS", mode, err)
			}
			if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.GetVolume().GetVolumeId(), StagingTargetPath: staging}); err != nil {
				t.Fatal(err)
			}
		}
		// Nothing was written to the journal by the stages.
		if next, _ := clsjournal.GetNextTagTid(ctx, pool, oid); next != tid+1 {
			t.Fatalf("the refused stage allocated journal tags (next tid %d, want %d)", next, tid+1)
		}
	}
}

// TestJournalMaxConcurrentObjectSets, on real loop devices (local backend):
// the StorageClass's laggy-client bound reaches the node's journaler. A
// replicator's journal client (registered as rbd-mirror does, committing
// nothing) holds back trimming of a volume without the bound and is
// disconnected, no longer holding it back, with journalMaxConcurrentObjectSets 2.
func TestJournalMaxConcurrentObjectSets(t *testing.T) {
	kerneltest.RequireRoot(t)
	for _, tt := range []struct {
		bound    string
		wantDisc bool
	}{{"", false}, {"2", true}} {
		t.Run("bound="+tt.bound, func(t *testing.T) {
			ctx := context.Background()
			d := serveLocal(t)
			dir, b, ctrl, node := d.dir, d.b, d.ctrl, d.node
			params := map[string]string{volume.ParamJournalOrder: "16"}
			if tt.bound != "" {
				params[volume.ParamJournalMaxConcurrentObjectSets] = tt.bound
			}
			block := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}, AccessMode: rwo.AccessMode}
			vol, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "laggy", VolumeCapabilities: []*csi.VolumeCapability{block},
				CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20}, Parameters: params})
			if err != nil {
				t.Fatal(err)
			}
			if got := vol.GetVolume().GetVolumeContext()[volume.CtxJournalMaxObjectSets]; got != tt.bound {
				t.Fatalf("volume context carries bound %q, want %q", got, tt.bound)
			}
			pool, err := b.EnsurePool(ctx, volume.DefaultPool)
			if err != nil {
				t.Fatal(err)
			}
			id, err := clsrbd.GetID(ctx, pool, clsrbd.IDOID(volume.ImageNameFor("laggy")))
			if err != nil {
				t.Fatal(err)
			}
			hdr := journal.HeaderOID(id)
			var op objstore.WriteOp
			clsjournal.ClientRegister(&op, "peer-mirror-uuid", nil)
			if err := pool.Operate(ctx, hdr, &op); err != nil {
				t.Fatal(err)
			}
			staging := filepath.Join(dir, "staging")
			if err := os.Mkdir(staging, 0o755); err != nil {
				t.Fatal(err)
			}
			if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolume().GetVolumeId(), StagingTargetPath: staging,
				VolumeCapability: block, VolumeContext: vol.GetVolume().GetVolumeContext()}); err != nil {
				t.Fatal(err)
			}
			dev := ""
			for _, l := range loopsUnder(dir) {
				dev = "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(l)))
			}
			if dev == "" {
				t.Fatal("no loop device")
			}
			// 4 MiB in 64 KiB journal objects: dozens of object sets.
			f, err := os.OpenFile(dev, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 64<<10)
			for i := range 64 {
				buf[0] = byte(i)
				if _, err := f.WriteAt(buf, int64(i)*int64(len(buf))); err != nil {
					t.Fatal(err)
				}
				if err := f.Sync(); err != nil {
					t.Fatal(err)
				}
			}
			f.Close()
			if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.GetVolume().GetVolumeId(), StagingTargetPath: staging}); err != nil {
				t.Fatal(err)
			}
			c, err := clsjournal.GetClient(ctx, pool, hdr, "peer-mirror-uuid")
			if err != nil {
				t.Fatal(err)
			}
			minSet, activeSet, _, err := clsjournal.GetMutableMetadata(ctx, pool, hdr)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("peer state %v, minimum set %d, active set %d", c.State, minSet, activeSet)
			if activeSet < 5 {
				t.Fatalf("active set %d: the writes did not span enough object sets", activeSet)
			}
			if disc := c.State == clsjournal.ClientStateDisconnected; disc != tt.wantDisc {
				t.Fatalf("peer disconnected = %v, want %v", disc, tt.wantDisc)
			}
			if tt.wantDisc != (minSet > 0) {
				t.Fatalf("minimum set %d: trimming %s", minSet, map[bool]string{true: "should have passed the disconnected peer", false: "passed a connected peer that committed nothing"}[tt.wantDisc])
			}
		})
	}
}
