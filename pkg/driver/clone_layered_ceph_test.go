//go:build ceph && pacific

package driver_test

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

// Layered restores and clones on the Ceph test cluster: librbd makes them
// (clone format 2), reads them, lists them, and after the whole family is
// deleted in any order nothing is left (rbd ls, rbd trash ls, rbd
// children).

func newCephCloneEnv(t *testing.T, f *cephFixture, params map[string]string) *cloneEnv {
	t.Helper()
	b := openCeph(t, f.configFile, credentialsDir(t, f.rw))
	p := cephPoolParams()
	for k, v := range params {
		p[k] = v
	}
	e := newCloneEnv(t, b, p)
	e.prefix = uniqueName("fam") + "-"
	return e
}

// rbdExport returns the content of spec (pool/image[@snap]) as librbd
// reads it.
func (f *cephFixture) rbdExport(t *testing.T, spec string) []byte {
	t.Helper()
	cmd := exec.Command("rbd", "-c", f.conf, "export", "--no-progress", spec, "-")
	cmd.Env = append(cmd.Environ(), "CEPH_ARGS=--admin-socket=")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("rbd export %s: %v", spec, err)
	}
	return out
}

// familyIDs returns the image ids of the volumes.
func (e *cloneEnv) familyIDs(vols map[string]*csi.Volume) map[string]string {
	e.t.Helper()
	ids := map[string]string{}
	for n, v := range vols {
		id, err := storage.ImageID(context.Background(), e.pool, imageOf(v))
		if err != nil {
			e.t.Fatal(err)
		}
		ids[n] = id
	}
	return ids
}

// checkCephFamilyGone: no image of the family is left under any name,
// none is in the trash, no header object is left.
func checkCephFamilyGone(t *testing.T, f *cephFixture, e *cloneEnv, names []string, ids map[string]string) {
	t.Helper()
	ls := f.rbd(t, "ls", cephtest.PoolName)
	trash := f.rbd(t, "trash", "ls", "--all", cephtest.PoolName)
	for n, id := range ids {
		for _, name := range []string{storage.ParkedName(id)} {
			if strings.Contains(ls, name) {
				t.Errorf("rbd ls still lists %s (%s)", name, n)
			}
		}
		if strings.Contains(trash, id) {
			t.Errorf("rbd trash ls lists %s (%s):\n%s", id, n, trash)
		}
		var op objstore.ReadOp
		op.Stat()
		if err := e.pool.Read(context.Background(), clsrbd.HeaderOID(id), &op); err == nil {
			t.Errorf("the header of %s (%s) is left", id, n)
		}
	}
	for _, n := range names {
		if strings.Contains(ls, n) {
			t.Errorf("rbd ls still lists %s", n)
		}
	}
}

// TestCephCloneFamily: the family of TestCloneFamilyDeleteOrders on Ceph.
// librbd reads each restore and clone as the controller expects (rbd
// export), rbd info names the parents and rbd children lists the clones;
// the family is deleted in several orders, the volumes left keep their
// data, and nothing is left.
func TestCephCloneFamily(t *testing.T) {
	f := newCephFixture(t)
	for _, order := range [][]string{
		{"v0", "s0", "r1", "c1", "s1", "r2", "c2"},
		{"c2", "r2", "s1", "c1", "r1", "s0", "v0"},
		{"s0", "s1", "v0", "r1", "c1", "r2", "c2"},
		{"r1", "v0", "s1", "c2", "s0", "c1", "r2"},
	} {
		t.Run(strings.Join(order, ","), func(t *testing.T) {
			e := newCephCloneEnv(t, f, nil)
			vols, sids, data := e.buildFamily()
			ids := e.familyIDs(vols)
			var names []string
			for _, v := range vols {
				names = append(names, imageOf(v))
			}
			t.Cleanup(func() { checkCephFamilyGone(t, f, e, names, ids) })
			p := cephtest.PoolName + "/"
			for n, v := range vols {
				if got := f.rbdExport(t, p+imageOf(v)); !bytes.Equal(got, data[n]) {
					t.Errorf("rbd export of %s differs from what the controller wrote", n)
				}
			}
			s1, _ := volume.ParseSnapshotID(sids["s1"])
			if out := f.rbd(t, "info", p+imageOf(vols["r2"])); !strings.Contains(out, "parent: "+p+s1.Image+"@"+s1.Snap) {
				t.Errorf("rbd info of r2 names no parent %s:\n%s", s1, out)
			}
			if out := f.rbd(t, "children", p+s1.Image+"@"+s1.Snap); !strings.Contains(out, imageOf(vols["r2"])) {
				t.Errorf("rbd children of s1 does not list r2:\n%s", out)
			}
			// Our cls client reads what the OSD's cls_rbd keeps (the
			// local backend's class writes the same).
			r1id := ids["r1"]
			s1info, err := clsrbd.FindSnapshot(context.Background(), e.pool, clsrbd.HeaderOID(r1id), clsrbd.SnapshotNamespace{}, s1.Snap)
			if err != nil {
				t.Fatal(err)
			}
			kids, err := clsrbd.ChildrenList(context.Background(), e.pool, clsrbd.HeaderOID(r1id), s1info.ID)
			if err != nil || len(kids) != 1 || kids[0].ImageID != ids["r2"] || kids[0].PoolID != e.pool.ID() {
				t.Errorf("children_list of s1 on the OSD: %+v, %v; want r2 (%s)", kids, err, ids["r2"])
			}
			if of, err := clsrbd.OpFeaturesGet(context.Background(), e.pool, clsrbd.HeaderOID(r1id)); err != nil || of&clsrbd.OpFeatureCloneParent == 0 || of&clsrbd.OpFeatureCloneChild == 0 {
				t.Errorf("op features of r1 on the OSD: %x, %v; want clone-parent and clone-child", of, err)
			}
			// c2 is a clone of c1's temporary snapshot, in the trash
			// namespace: rbd children --all lists it.
			if out := f.rbd(t, "children", "--all", p+imageOf(vols["c1"])); !strings.Contains(out, imageOf(vols["c2"])) {
				t.Errorf("rbd children --all of c1 does not list c2:\n%s", out)
			}
			e.deleteFamily(order, vols, sids, data)
		})
	}
}

// TestCephCloneFlatten: with cloneDepthSoftLimit 0 a clone is flattened by
// the controller (librbd's flatten): rbd info shows no parent, rbd export
// equals the source, and the source's trashed temporary snapshot is gone.
func TestCephCloneFlatten(t *testing.T) {
	f := newCephFixture(t)
	e := newCephCloneEnv(t, f, map[string]string{volume.ParamCloneDepthSoftLimit: "0"})
	v0 := e.mustCreate("v0", nil)
	d0 := bytes.Repeat([]byte("csi-rbdj flatten "), cloneTestSize/17)
	e.write(v0, d0, 0)
	c1 := e.mustCreate("c1", fromVol(v0))
	p := cephtest.PoolName + "/"
	if out := f.rbd(t, "info", p+imageOf(c1)); !strings.Contains(out, "parent: "+p+imageOf(v0)+"@") {
		t.Fatalf("the clone is not layered:\n%s", out)
	}
	pending, err := e.d.FlattenPending(context.Background())
	if err != nil || pending != 0 {
		t.Fatalf("FlattenPending: %d left, %v", pending, err)
	}
	if out := f.rbd(t, "info", p+imageOf(c1)); strings.Contains(out, "parent:") {
		t.Errorf("the clone still has a parent after the flatten:\n%s", out)
	}
	if !bytes.Equal(f.rbdExport(t, p+imageOf(c1)), f.rbdExport(t, p+imageOf(v0))) {
		t.Error("rbd export of the flattened clone differs from its source")
	}
	if out := f.rbd(t, "snap", "ls", "--all", p+imageOf(v0)); strings.TrimSpace(out) != "" {
		t.Errorf("the source keeps snapshots after its clone was flattened:\n%s", out)
	}
	ctx := context.Background()
	for _, v := range []*csi.Volume{c1, v0} {
		if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId()}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCephServeCSIClone: a restore made by the controller (a layered
// clone) is staged by our node as a block device: it reads the parent's
// data, 4 KiB writes into several objects (copied up first) read back over
// it; after unstaging, librbd reads the clone equal; then the source
// volume, the snapshot and the restore are deleted (parent first) and
// nothing is left.
func TestCephServeCSIClone(t *testing.T) {
	kerneltest.RequireRoot(t)
	f := newCephFixture(t)
	dir := t.TempDir()
	b := openCeph(t, f.configFile, credentialsDir(t, f.rw))
	ctrl, node, _ := serveDriver(t, dir, b)
	ctx := context.Background()
	prefix := uniqueName("srv") + "-"
	params := map[string]string{volume.ParamClusterID: cephTestCluster, volume.ParamPool: cephtest.PoolName, volume.ParamObjectOrder: "20"}
	const size = 8 << 20
	src := createVolume(ctx, t, ctrl, &csi.CreateVolumeRequest{Name: prefix + "src", VolumeCapabilities: []*csi.VolumeCapability{blockCap},
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}, Parameters: params})
	st, _ := b.Storage(ctx, cephTestCluster, nil)
	pool, err := st.Pool(ctx, cephtest.PoolName)
	if err != nil {
		t.Fatal(err)
	}
	e := &cloneEnv{t: t, pool: pool}
	model := bytes.Repeat([]byte("parent data 0123"), size/16)
	clear(model[2<<20 : 3<<20]) // an object of zeros
	e.write(src.GetVolume(), model, 0)
	snap, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: prefix + "snap", SourceVolumeId: src.GetVolume().GetVolumeId()})
	if err != nil {
		t.Fatal(err)
	}
	e.write(src.GetVolume(), bytes.Repeat([]byte{0xee}, size), 0) // after the snapshot: unseen
	rs := createVolume(ctx, t, ctrl, &csi.CreateVolumeRequest{Name: prefix + "restore", VolumeCapabilities: []*csi.VolumeCapability{blockCap},
		Parameters: params, VolumeContentSource: fromSnap(snap.GetSnapshot().GetSnapshotId())})
	restore := rs.GetVolume()
	ids := e.familyIDs(map[string]*csi.Volume{"src": src.GetVolume(), "restore": restore})
	names := []string{imageOf(src.GetVolume()), imageOf(restore)}
	t.Cleanup(func() { checkCephFamilyGone(t, f, e, names, ids) })

	id := restore.GetVolumeId()
	writeServedClone(t, node, dir, &csi.NodeStageVolumeRequest{VolumeId: id, VolumeContext: restore.GetVolumeContext()}, "the served restore", model)
	if !bytes.Equal(f.rbdExport(t, cephtest.PoolName+"/"+imageOf(restore)), model) {
		t.Fatal("librbd reads the restore differently from what the node served")
	}
	t.Log(f.rbd(t, "info", cephtest.PoolName+"/"+imageOf(restore)))
	// Parent first: the source is parked, the snapshot trashed, and both
	// go with the restore.
	if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: src.GetVolume().GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshot().GetSnapshotId()}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(f.rbdExport(t, cephtest.PoolName+"/"+imageOf(restore)), model) {
		t.Fatal("the restore changed when its parent volume and snapshot were deleted")
	}
	if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
}
