package driver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/driver"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/testwait"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
)

// Controller-only tests of layered restores and clones on the local
// backend (no kernel parts: the images are read and written through
// pkg/image, as the node would).

const cloneTestSize = 4 << 20 // 4 objects of 1 MiB

// blockCap is a Block volume for one node.
var blockCap = &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}

// cloneEnv is a controller on a local backend.
type cloneEnv struct {
	t      *testing.T
	d      *driver.Driver
	pool   objstore.Pool
	params map[string]string
	prefix string // of the CSI names (unique on a shared Ceph pool)
}

func newCloneEnv(t *testing.T, b storage.Backend, params map[string]string) *cloneEnv {
	t.Helper()
	d, err := driver.New(driver.Options{Mode: driver.ModeController, Backend: b})
	if err != nil {
		t.Fatal(err)
	}
	st, err := b.Storage(context.Background(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := st.EnsurePool(context.Background(), "rbd")
	if err != nil {
		t.Fatal(err)
	}
	p := map[string]string{volume.ParamObjectOrder: "20"}
	for k, v := range params {
		p[k] = v
	}
	return &cloneEnv{t: t, d: d, pool: pool, params: p}
}

func openLocalBackend(t *testing.T) *storage.LocalBackend {
	t.Helper()
	b, err := storage.OpenLocal(storage.LocalOptions{Dir: filepath.Join(t.TempDir(), "cluster"), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func (e *cloneEnv) create(name string, src *csi.VolumeContentSource) (*csi.Volume, error) {
	resp, err := e.d.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: e.prefix + name, VolumeCapabilities: []*csi.VolumeCapability{blockCap},
		CapacityRange: &csi.CapacityRange{RequiredBytes: cloneTestSize}, Parameters: e.params, VolumeContentSource: src})
	return resp.GetVolume(), err
}

func (e *cloneEnv) mustCreate(name string, src *csi.VolumeContentSource) *csi.Volume {
	e.t.Helper()
	v, err := e.create(name, src)
	if err != nil {
		e.t.Fatalf("CreateVolume %s: %v", name, err)
	}
	return v
}

func (e *cloneEnv) snapshot(name string, v *csi.Volume) string {
	e.t.Helper()
	resp, err := e.d.CreateSnapshot(context.Background(), &csi.CreateSnapshotRequest{Name: e.prefix + name, SourceVolumeId: v.GetVolumeId()})
	if err != nil {
		e.t.Fatalf("CreateSnapshot %s: %v", name, err)
	}
	return resp.GetSnapshot().GetSnapshotId()
}

func fromSnap(sid string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: sid}}}
}

func fromVol(v *csi.Volume) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.GetVolumeId()}}}
}

func imageOf(v *csi.Volume) string {
	vid, _ := volume.ParseVolumeID(v.GetVolumeId())
	return vid.Image
}

// write writes p at off of v's image (as the node would: copy-up first).
func (e *cloneEnv) write(v *csi.Volume, p []byte, off int64) {
	e.t.Helper()
	img, err := image.Open(context.Background(), e.pool, imageOf(v))
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := img.WriteAt(context.Background(), p, off); err != nil {
		e.t.Fatal(err)
	}
}

func (e *cloneEnv) read(v *csi.Volume) []byte {
	e.t.Helper()
	img, err := image.Open(context.Background(), e.pool, imageOf(v))
	if err != nil {
		e.t.Fatal(err)
	}
	b := make([]byte, img.Size())
	if _, err := img.ReadAt(context.Background(), b, 0); err != nil {
		e.t.Fatal(err)
	}
	return b
}

func (e *cloneEnv) depth(v *csi.Volume) int {
	e.t.Helper()
	d, err := storage.ImageDepth(context.Background(), e.pool, imageOf(v))
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

// TestCloneChainLimits: each restore is a layered clone of its source
// until the chain would pass cloneDepthHardLimit (then a full copy, depth
// 0); clones deeper than cloneDepthSoftLimit are flattened by
// FlattenPending unless they have snapshots; every volume reads its
// source's data.
func TestCloneChainLimits(t *testing.T) {
	for _, tc := range []struct {
		name       string
		soft, hard int
		levels     int
		snapshot   bool  // each level is snapshotted and restored (else cloned from the volume)
		depths     []int // of levels 1.., after CreateVolume
		flattened  []int // depths after FlattenPending
	}{
		{"defaults, restores", -1, -1, 10, true, []int{1, 2, 3, 4, 5, 6, 7, 8, 0, 1}, []int{1, 2, 3, 4, 5, 6, 7, 8, 0, 1}},
		{"soft 1 hard 3, restores", 1, 3, 5, true, []int{1, 2, 3, 0, 1}, []int{1, 2, 3, 0, 1}},
		{"soft 1 hard 3, volume clones", 1, 3, 5, false, []int{1, 2, 3, 0, 1}, []int{1, 0, 0, 0, 1}},
		{"soft 0: always flattened", 0, 2, 3, false, []int{1, 2, 0}, []int{0, 0, 0}},
		{"hard 1", 1, 1, 3, true, []int{1, 0, 1}, []int{1, 0, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			params := map[string]string{}
			if tc.soft >= 0 {
				params[volume.ParamCloneDepthSoftLimit] = strconv.Itoa(tc.soft)
				params[volume.ParamCloneDepthHardLimit] = strconv.Itoa(tc.hard)
			}
			e := newCloneEnv(t, openLocalBackend(t), params)
			orig := make([]byte, cloneTestSize)
			rand.New(rand.NewSource(7)).Read(orig[:3<<20]) // the last object stays zeros
			// Level L writes byte L: it reads every byte up to its own.
			expect := func(level int) []byte {
				w := append([]byte{}, orig...)
				for j := 1; j <= level; j++ {
					w[j] = byte(0xa0 + j)
				}
				return w
			}
			prev := e.mustCreate("v0", nil)
			e.write(prev, orig, 0)
			vols := []*csi.Volume{}
			for i := 1; i <= tc.levels; i++ {
				src := fromVol(prev)
				if tc.snapshot {
					src = fromSnap(e.snapshot(fmt.Sprintf("s%d", i-1), prev))
				}
				v := e.mustCreate(fmt.Sprintf("v%d", i), src)
				if got := e.depth(v); got != tc.depths[i-1] {
					t.Errorf("v%d: depth %d, want %d", i, got, tc.depths[i-1])
				}
				e.write(v, []byte{byte(0xa0 + i)}, int64(i))
				vols = append(vols, v)
				prev = v
			}
			// A clone flattened frees its parent's trashed snapshot, which
			// lets the parent be flattened on the next pass.
			pending := -1
			for pass := 0; pass < 3; pass++ {
				n, err := e.d.FlattenPending(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				if n == pending {
					break
				}
				pending = n
			}
			for i, v := range vols {
				if got := e.depth(v); got != tc.flattened[i] {
					t.Errorf("v%d after FlattenPending: depth %d, want %d", i+1, got, tc.flattened[i])
				}
				if !bytes.Equal(e.read(v), expect(i+1)) {
					t.Errorf("v%d reads other data than its sources wrote", i+1)
				}
			}
			t.Logf("%d clones still pending (they have snapshots)", pending)
			e.deleteAll(vols)
		})
	}
}

// deleteAll deletes every snapshot and volume the controller lists, then
// checks that the pool holds nothing of them.
func (e *cloneEnv) deleteAll(vols []*csi.Volume) {
	e.t.Helper()
	ctx := context.Background()
	snaps, err := e.d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, s := range snaps.GetEntries() {
		if _, err := e.d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: s.GetSnapshot().GetSnapshotId()}); err != nil {
			e.t.Fatalf("DeleteSnapshot: %v", err)
		}
	}
	lv, err := e.d.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, v := range lv.GetEntries() {
		if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolume().GetVolumeId()}); err != nil {
			e.t.Fatalf("DeleteVolume: %v", err)
		}
	}
	e.checkEmpty()
}

// checkEmpty fails if an image, a record or an image object is left.
func (e *cloneEnv) checkEmpty() {
	e.t.Helper()
	ctx := context.Background()
	imgs, err := image.List(ctx, e.pool)
	if err != nil || len(imgs) != 0 {
		e.t.Errorf("images left: %v, %v", imgs, err)
	}
	names, err := e.pool.List(ctx, "")
	if err != nil {
		e.t.Fatal(err)
	}
	for _, n := range names {
		if n != clsrbd.DirectoryOID {
			e.t.Errorf("object left: %s", n)
		}
	}
}

// TestCloneFamilyDeleteOrders: a family of volumes, snapshots, restores
// and clones (of volumes and of restores) is deleted through the CSI
// calls in many orders; each call succeeds, the volumes still there read
// their data, and nothing is left at the end.
func TestCloneFamilyDeleteOrders(t *testing.T) {
	members := []string{"v0", "s0", "r1", "c1", "s1", "r2", "c2"}
	orders := [][]string{
		members, // parents first
		{"c2", "r2", "s1", "c1", "r1", "s0", "v0"}, // children first
		{"s0", "s1", "v0", "r1", "c1", "r2", "c2"}, // snapshots first
	}
	rng := rand.New(rand.NewSource(1))
	for len(orders) < 24 {
		o := append([]string{}, members...)
		rng.Shuffle(len(o), func(i, j int) { o[i], o[j] = o[j], o[i] })
		orders = append(orders, o)
	}
	for _, order := range orders {
		t.Run(strings.Join(order, ","), func(t *testing.T) {
			e := newCloneEnv(t, openLocalBackend(t), nil)
			vols, sids, data := e.buildFamily()
			e.deleteFamily(order, vols, sids, data)
			e.checkEmpty()
		})
	}
}

// buildFamily makes v0 (random data), its snapshot s0, r1 = restore of
// s0, c1 = clone of v0, s1 = snapshot of r1, r2 = restore of s1, c2 =
// clone of c1; each new volume writes its name into its second object. It
// returns the volumes, the snapshot ids and what each volume reads.
func (e *cloneEnv) buildFamily() (map[string]*csi.Volume, map[string]string, map[string][]byte) {
	e.t.Helper()
	data := map[string][]byte{}
	vols := map[string]*csi.Volume{}
	sids := map[string]string{}
	v0 := e.mustCreate("v0", nil)
	d0 := make([]byte, cloneTestSize)
	rand.New(rand.NewSource(2)).Read(d0)
	e.write(v0, d0, 0)
	vols["v0"], data["v0"] = v0, d0
	sids["s0"] = e.snapshot("s0", v0)
	mk := func(name string, src *csi.VolumeContentSource, from string) {
		v := e.mustCreate(name, src)
		d := append([]byte{}, data[from]...)
		mark := []byte(name)
		copy(d[1<<20+77:], mark)
		e.write(v, mark, 1<<20+77)
		vols[name], data[name] = v, d
	}
	mk("r1", fromSnap(sids["s0"]), "v0")
	mk("c1", fromVol(v0), "v0")
	sids["s1"] = e.snapshot("s1", vols["r1"])
	mk("r2", fromSnap(sids["s1"]), "r1")
	mk("c2", fromVol(vols["c1"]), "c1")
	return vols, sids, data
}

// deleteFamily deletes the members in order (snapshots by DeleteSnapshot,
// volumes by DeleteVolume): each call succeeds and the volumes left read
// their data.
func (e *cloneEnv) deleteFamily(order []string, vols map[string]*csi.Volume, sids map[string]string, data map[string][]byte) {
	e.t.Helper()
	ctx := context.Background()
	for _, m := range order {
		if sid, ok := sids[m]; ok {
			if _, err := e.d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: sid}); err != nil {
				e.t.Fatalf("DeleteSnapshot %s: %v", m, err)
			}
		} else {
			if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vols[m].GetVolumeId()}); err != nil {
				e.t.Fatalf("DeleteVolume %s: %v", m, err)
			}
			delete(vols, m)
		}
		for n, v := range vols {
			if !bytes.Equal(e.read(v), data[n]) {
				e.t.Fatalf("after deleting %s, %s reads other data", m, n)
			}
		}
	}
}

// faultStorage injects failures into the clone steps of a local backend.
type faultStorage struct {
	*storage.LocalBackend
	failClone      bool // CloneImage fails before doing anything
	failRemoveSnap bool // the first RemoveSnapshot of a temporary snapshot fails
}

var errInjected = errors.New("injected failure")

func (f *faultStorage) Storage(context.Context, string, map[string]string) (storage.Storage, error) {
	return f, nil
}

func (f *faultStorage) CloneImage(ctx context.Context, pool objstore.Pool, parent, snap, child string, size int64, o image.CreateOptions) error {
	if f.failClone {
		return errInjected
	}
	return f.LocalBackend.CloneImage(ctx, pool, parent, snap, child, size, o)
}

func (f *faultStorage) RemoveSnapshot(ctx context.Context, pool objstore.Pool, name, snap string) error {
	if f.failRemoveSnap && strings.HasPrefix(snap, "csi-clone-") {
		f.failRemoveSnap = false
		return errInjected
	}
	return f.LocalBackend.RemoveSnapshot(ctx, pool, name, snap)
}

// TestCloneFailureLeavesNothing: a clone or restore that fails in the
// middle (the clone step, or the removal of the temporary snapshot after
// the clone was made) answers an error and leaves no image, record or
// temporary snapshot; bad sources fail with their codes.
func TestCloneFailureLeavesNothing(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fault    faultStorage
		fromSnap bool
		code     codes.Code
	}{
		{"volume clone, clone step fails", faultStorage{failClone: true}, false, codes.Internal},
		{"restore, clone step fails", faultStorage{failClone: true}, true, codes.Internal},
		{"volume clone, temporary snapshot not removable", faultStorage{failRemoveSnap: true}, false, codes.Internal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.fault
			f.LocalBackend = openLocalBackend(t)
			e := newCloneEnv(t, &f, nil)
			v0 := e.mustCreate("v0", nil)
			e.write(v0, bytes.Repeat([]byte{1}, 4096), 0)
			src := fromVol(v0)
			if tc.fromSnap {
				src = fromSnap(e.snapshot("s0", v0))
			}
			_, err := e.create("c", src)
			expectCode(t, tc.name, err, tc.code, "injected failure")
			ctx := context.Background()
			if _, err := clsrbd.GetID(ctx, e.pool, clsrbd.IDOID(volume.ImageNameFor("c"))); !errors.Is(err, objstore.ErrNotFound) {
				t.Errorf("the clone's image is left: %v", err)
			}
			var op objstore.ReadOp
			op.Stat()
			if err := e.pool.Read(ctx, "csi.volume."+volume.ImageNameFor("c"), &op); !errors.Is(err, objstore.ErrNotFound) {
				t.Errorf("the clone's record is left: %v", err)
			}
			fam, err := storage.FamilyOf(ctx, e.pool, imageOf(v0))
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range fam.Snapshots {
				if s.Namespace.Type != rbdnotify.SnapNamespaceUser || strings.HasPrefix(s.Name, "csi-clone-") || s.Children != 0 {
					t.Errorf("snapshot left on the source: %+v", s)
				}
			}
			// Once the fault is gone the same request succeeds.
			f.failClone, f.failRemoveSnap = false, false
			c := e.mustCreate("c", src)
			if !bytes.Equal(e.read(c), e.read(v0)) {
				t.Error("the clone reads other data than its source")
			}
			e.deleteAll(nil)
		})
	}
}

// TestDeleteVolumeForeignSnapshot: a volume with a snapshot not made
// through CSI is not deleted (nothing would remove its parked image):
// FailedPrecondition naming it; once it is removed the volume goes.
func TestDeleteVolumeForeignSnapshot(t *testing.T) {
	b := openLocalBackend(t)
	e := newCloneEnv(t, b, nil)
	v0 := e.mustCreate("v0", nil)
	ctx := context.Background()
	if _, err := b.CreateSnapshot(ctx, e.pool, imageOf(v0), "by-hand"); err != nil {
		t.Fatal(err)
	}
	_, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v0.GetVolumeId()})
	expectCode(t, "delete a volume with a foreign snapshot", err, codes.FailedPrecondition, "by-hand", "not made through CSI")
	if err := b.RemoveSnapshot(ctx, e.pool, imageOf(v0), "by-hand"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v0.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	e.checkEmpty()
}

// TestBackgroundFlatten: the controller Serve runs flattens a clone deeper
// than cloneDepthSoftLimit by itself, soon after CreateVolume (woken, not
// on its 30 s timer), and clears its record's flag.
func TestBackgroundFlatten(t *testing.T) {
	d := serveLocal(t)
	b, ctrl := d.b, d.ctrl
	ctx := context.Background()
	params := map[string]string{volume.ParamObjectOrder: "20", volume.ParamCloneDepthSoftLimit: "0"}
	mk := func(name string, src *csi.VolumeContentSource) *csi.Volume {
		resp, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{blockCap},
			CapacityRange: &csi.CapacityRange{RequiredBytes: cloneTestSize}, Parameters: params, VolumeContentSource: src})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetVolume()
	}
	v0 := mk("v0", nil)
	pool, err := b.Pool(ctx, "rbd")
	if err != nil {
		t.Fatal(err)
	}
	e := &cloneEnv{t: t, pool: pool}
	e.write(v0, bytes.Repeat([]byte("background "), cloneTestSize/11), 0)
	c := mk("c", fromVol(v0))
	flagCleared := func() bool {
		var op objstore.ReadOp
		r := op.Read(0, 0)
		if err := pool.Read(ctx, "csi.volume."+imageOf(c), &op); err != nil {
			t.Fatal(err)
		}
		return !strings.Contains(string(r.Data()), "flattenPending")
	}
	testwait.For(t, 10*time.Second, "the background flatten of the clone", func() bool {
		d, err := storage.ImageDepth(ctx, pool, imageOf(c))
		return err == nil && d == 0 && flagCleared()
	})
	if !bytes.Equal(e.read(c), e.read(v0)) {
		t.Error("the flattened clone reads other data than its source")
	}
	testwait.For(t, 10*time.Second, "the source's trashed snapshot to go", func() bool {
		f, err := storage.FamilyOf(ctx, pool, imageOf(v0))
		return err == nil && len(f.Snapshots) == 0
	})
	for _, v := range []*csi.Volume{c, v0} {
		if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId()}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestParkOldSnapshotRecord: a snapshot record written before records
// kept the image id still finds its snapshot after the volume was deleted
// (DeleteVolume fills the id in before it parks the image): DeleteSnapshot
// then removes the snapshot and the parked image.
func TestParkOldSnapshotRecord(t *testing.T) {
	e := newCloneEnv(t, openLocalBackend(t), nil)
	ctx := context.Background()
	v0 := e.mustCreate("v0", nil)
	sid := e.snapshot("s0", v0)
	s, _ := volume.ParseSnapshotID(sid)
	oid := "csi.snapshot." + s.Snap
	var rop objstore.ReadOp
	r := rop.Read(0, 0)
	if err := e.pool.Read(ctx, oid, &rop); err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal(r.Data(), &rec); err != nil || rec["imageID"] == nil {
		t.Fatalf("snapshot record %s: %v (want an imageID)", r.Data(), err)
	}
	delete(rec, "imageID")
	old, _ := json.Marshal(rec)
	var wop objstore.WriteOp
	wop.WriteFull(old)
	if err := e.pool.Operate(ctx, oid, &wop); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v0.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	if l, err := e.d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: sid}); err != nil || len(l.GetEntries()) != 1 {
		t.Errorf("ListSnapshots of the parked volume's snapshot: %v, %v", l, err)
	}
	if _, err := e.d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: sid}); err != nil {
		t.Fatal(err)
	}
	e.checkEmpty()
}
