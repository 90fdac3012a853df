package driver_test

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	clslock "github.com/csi-rbdj/csi-rbdj/pkg/cls/lock"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
)

// acked returns the items the writer has written and fsynced so far.
func (w *expandWriter) acked() map[string][32]byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return maps.Clone(w.items)
}

var ext4Cap = &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}

// stagePublish stages and publishes volume id with capability c under
// dir/name and returns the publish path and a function that unpublishes
// and unstages it (also run at the end of the test).
func stagePublish(t *testing.T, node csi.NodeClient, id string, c *csi.VolumeCapability, volCtx, secrets map[string]string, dir, name string) (string, func()) {
	t.Helper()
	ctx := context.Background()
	staging, target := filepath.Join(dir, "staging-"+name), filepath.Join(dir, "pods", name, "vol")
	if err := os.MkdirAll(staging, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: c, VolumeContext: volCtx, Secrets: secrets}); err != nil {
		t.Fatalf("stage %s: %v", name, err)
	}
	done := false
	undo := func() {
		if done {
			return
		}
		done = true
		if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
			t.Errorf("unpublish %s: %v", name, err)
		}
		if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			t.Errorf("unstage %s: %v", name, err)
		}
	}
	t.Cleanup(undo)
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target,
		VolumeCapability: c, VolumeContext: volCtx}); err != nil {
		t.Fatalf("publish %s: %v", name, err)
	}
	return target, undo
}

// TestSnapshotRestoreClone (local backend, real kernel): a writer writes
// and fsyncs files on a served ext4 volume; a CSI snapshot and a clone of
// the volume taken meanwhile each hold every file fsynced before the call
// (the node, as the lock owner, makes the snapshots). The snapshot is
// restored to a new volume; the restore and the clone are staged (never
// formatted: they carry no format marker), mounted and verified. Then the
// bad inputs: each fails with its code and leaves nothing behind.
func TestSnapshotRestoreClone(t *testing.T) {
	kerneltest.RequireRoot(t)
	d := serveLocal(t)
	dir, b, ctrl, node := d.dir, d.b, d.ctrl, d.node
	pool := func(ctx context.Context) (objstore.Pool, error) { return b.Pool(ctx, "rbd") }
	runSnapshotRestoreClone(t, ctrl, node, dir, pool, nil, nil, "", nil)
}

// runSnapshotRestoreClone is TestSnapshotRestoreClone's body on any
// backend: CSI names start with prefix; inspect (if not nil) looks at the
// volumes and the snapshot before the copies are mounted.
func runSnapshotRestoreClone(t *testing.T, ctrl csi.ControllerClient, node csi.NodeClient, dir string, openPool func(context.Context) (objstore.Pool, error),
	params, secrets map[string]string, prefix string, inspect func(src, restored, clone *csi.Volume, sid string)) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const size = 128 << 20
	create := func(name string, src *csi.VolumeContentSource, required int64) (*csi.Volume, error) {
		resp, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: prefix + name, VolumeCapabilities: []*csi.VolumeCapability{ext4Cap},
			CapacityRange: &csi.CapacityRange{RequiredBytes: required}, VolumeContentSource: src, Parameters: params, Secrets: secrets})
		if err != nil {
			return nil, err
		}
		id := resp.GetVolume().GetVolumeId()
		t.Cleanup(func() {
			if _, err := ctrl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id, Secrets: secrets}); err != nil {
				t.Errorf("delete volume %s: %v", name, err)
			}
		})
		return resp.GetVolume(), nil
	}
	var srcImageID string
	t.Cleanup(func() { // after every volume's and snapshot's deletion
		if srcImageID != "" {
			checkFamilyGone(t, openPool, srcImageID)
		}
	})
	src, err := create("source", nil, size)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := openPool(ctx)
	if err != nil {
		t.Fatal(err)
	}
	target, unstageSource := stagePublish(t, node, src.GetVolumeId(), ext4Cap, src.GetVolumeContext(), secrets, dir, "source")
	w := startExpandWriter(t, expandCase{name: "snap", fs: "ext4"}, target)
	time.Sleep(500 * time.Millisecond)

	beforeSnap := w.acked()
	start := time.Now()
	snap, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: prefix + "snap-1", SourceVolumeId: src.GetVolumeId(), Secrets: secrets})
	if err != nil {
		t.Fatalf("CreateSnapshot: %v", err)
	}
	t.Logf("CreateSnapshot of the served volume (%d files fsynced before): %v, %s", len(beforeSnap), time.Since(start).Round(time.Millisecond), snap.GetSnapshot())
	sid := snap.GetSnapshot().GetSnapshotId()
	deleteSnap := func() {
		if _, err := ctrl.DeleteSnapshot(context.Background(), &csi.DeleteSnapshotRequest{SnapshotId: sid, Secrets: secrets}); err != nil {
			t.Errorf("delete snapshot: %v", err)
		}
	}
	t.Cleanup(deleteSnap)
	if s := snap.GetSnapshot(); !s.GetReadyToUse() || s.GetSizeBytes() != size || s.GetSourceVolumeId() != src.GetVolumeId() || s.GetCreationTime().AsTime().Before(start.Add(-time.Second)) {
		t.Errorf("snapshot %v: want ready, %d bytes, source %s, created after %v", s, size, src.GetVolumeId(), start)
	}
	again, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: prefix + "snap-1", SourceVolumeId: src.GetVolumeId(), Secrets: secrets})
	if err != nil || again.GetSnapshot().GetSnapshotId() != sid {
		t.Errorf("CreateSnapshot again: %v, %v; want the same snapshot", err, again)
	}
	time.Sleep(300 * time.Millisecond)

	beforeClone := w.acked()
	start = time.Now()
	clone, err := create("clone-1", &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src.GetVolumeId()}}}, size)
	if err != nil {
		t.Fatalf("CreateVolume (clone of the served volume): %v", err)
	}
	t.Logf("clone of the served volume (%d files fsynced before): %v", len(beforeClone), time.Since(start).Round(time.Millisecond))
	written := w.stop(t)
	if len(beforeClone) <= len(beforeSnap) || len(written) <= len(beforeClone) {
		t.Fatalf("the writer did not write between the calls (%d, %d, %d files)", len(beforeSnap), len(beforeClone), len(written))
	}

	// Only the CSI snapshot is listed; the clone's temporary snapshot is in
	// the trash namespace, kept for its one clone (layered).
	list, err := ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: src.GetVolumeId()})
	if err != nil || len(list.GetEntries()) != 1 || list.GetEntries()[0].GetSnapshot().GetSnapshotId() != sid {
		t.Errorf("ListSnapshots of the source: %v, %v; want only %s", err, list, sid)
	}
	vid, _ := volume.ParseVolumeID(src.GetVolumeId())
	hdrID, err := clsrbd.GetID(ctx, pool, clsrbd.IDOID(vid.Image))
	if err != nil {
		t.Fatal(err)
	}
	srcImageID = hdrID
	if snaps, err := clsrbd.ListSnapshots(ctx, pool, clsrbd.HeaderOID(hdrID)); err != nil || len(snaps) != 2 ||
		snaps[0].Namespace.Type != rbdnotify.SnapNamespaceTrash || snaps[0].ChildCount != 1 || snaps[1].Name != strings.TrimPrefix(sid, src.GetVolumeId()+"@") {
		t.Errorf("the source image has snapshots %v (%v), want the CSI one and the clone's trashed one with 1 child", snaps, err)
	}
	cloneVid, _ := volume.ParseVolumeID(clone.GetVolumeId())
	if d, err := storage.ImageDepth(ctx, pool, cloneVid.Image); err != nil || d != 1 {
		t.Errorf("clone depth %d (%v), want 1: a layered clone of the source", d, err)
	}

	restored, err := create("restore-1", &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: sid}}}, 0)
	if err != nil {
		t.Fatalf("CreateVolume (restore): %v", err)
	}
	if restored.GetCapacityBytes() != size || restored.GetContentSource().GetSnapshot().GetSnapshotId() != sid {
		t.Errorf("restored volume %v: want %d bytes and the snapshot as its content source", restored, size)
	}

	if inspect != nil { // before the copies are mounted (which changes them)
		inspect(src, restored, clone, sid)
	}
	for _, c := range []struct {
		name  string
		vol   *csi.Volume
		items map[string][32]byte
	}{
		{"restore", restored, beforeSnap},
		{"clone", clone, beforeClone},
	} {
		v, _ := volume.ParseVolumeID(c.vol.GetVolumeId())
		if fb, err := storage.GetFormatBlank(ctx, pool, v.Image); err != nil || fb != storage.FormatBlankUnset {
			t.Errorf("%s: format marker %v (%v); want unset: a copy of a formatted volume is never formatted", c.name, fb, err)
		}
		tgt, undo := stagePublish(t, node, c.vol.GetVolumeId(), ext4Cap, c.vol.GetVolumeContext(), secrets, dir, c.name)
		verifyItems(t, expandCase{name: c.name, fs: "ext4"}, tgt, c.items)
		undo()
	}

	// Deleting the clone while its source is served: the source's trashed
	// temporary snapshot goes with it, removed by the node (lock owner).
	if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: clone.GetVolumeId(), Secrets: secrets}); err != nil {
		t.Fatalf("DeleteVolume of the clone: %v", err)
	}
	if snaps, err := clsrbd.ListSnapshots(ctx, pool, clsrbd.HeaderOID(hdrID)); err != nil || len(snaps) != 1 || snaps[0].Namespace.Type != rbdnotify.SnapNamespaceUser {
		t.Errorf("the served source's snapshots after its clone was deleted: %v (%v), want only the CSI one", snaps, err)
	}

	// Bad input: each fails with its code and leaves nothing behind.
	other := map[string]string{volume.ParamPool: "other"}
	for k, v := range params {
		if k != volume.ParamPool {
			other[k] = v
		}
	}
	missingVol := vid
	missingVol.Image = "csi-vol-000000000000000000000000"
	snapSrc := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: sid}}}
	for _, tc := range []struct {
		name string
		req  *csi.CreateVolumeRequest
		code codes.Code
		want string
	}{
		{"smaller than the source", &csi.CreateVolumeRequest{Name: "bad-small", VolumeCapabilities: []*csi.VolumeCapability{ext4Cap},
			CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20, LimitBytes: 16 << 20}, VolumeContentSource: snapSrc}, codes.OutOfRange, "bytes"},
		{"missing snapshot", &csi.CreateVolumeRequest{Name: "bad-missing", VolumeCapabilities: []*csi.VolumeCapability{ext4Cap},
			VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: src.GetVolumeId() + "@csi-snap-000000000000000000000000"}}}},
			codes.NotFound, "does not exist"},
		{"missing volume", &csi.CreateVolumeRequest{Name: "bad-missing-vol", VolumeCapabilities: []*csi.VolumeCapability{ext4Cap},
			VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: missingVol.String()}}}},
			codes.NotFound, "does not exist"},
		{"another pool", &csi.CreateVolumeRequest{Name: "bad-pool", VolumeCapabilities: []*csi.VolumeCapability{ext4Cap},
			Parameters: other, VolumeContentSource: snapSrc}, codes.InvalidArgument, `pool "other"`}, // before the pool is opened: not created, not looked up
	} {
		if tc.req.Parameters == nil {
			tc.req.Parameters = params
		}
		tc.req.Secrets = secrets
		tc.req.Name = prefix + tc.req.Name
		_, err := ctrl.CreateVolume(ctx, tc.req)
		expectCode(t, tc.name, err, tc.code, tc.want)
		// Nothing left: no record, no image.
		img := volume.ImageNameFor(tc.req.Name)
		var op objstore.ReadOp
		op.Stat()
		if err := pool.Read(ctx, "csi.volume."+img, &op); !errors.Is(err, objstore.ErrNotFound) {
			t.Errorf("%s: volume record: %v, want none", tc.name, err)
		}
		if _, err := clsrbd.GetID(ctx, pool, clsrbd.IDOID(img)); !errors.Is(err, objstore.ErrNotFound) {
			t.Errorf("%s: image %s: %v, want none", tc.name, img, err)
		}
	}
	_, err = ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: prefix + "snap-1", SourceVolumeId: restored.GetVolumeId(), Secrets: secrets})
	expectCode(t, "same snapshot name, another source", err, codes.AlreadyExists, "already exists")
	unstageSource()
	// The source goes for the CO, its image stays (parked) for the
	// snapshot and the clones; a restore of the snapshot still works.
	if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: src.GetVolumeId(), Secrets: secrets}); err != nil {
		t.Fatalf("DeleteVolume of a volume with a snapshot and clones: %v", err)
	}
	if _, err := clsrbd.GetID(ctx, pool, clsrbd.IDOID(storage.ParkedName(hdrID))); err != nil {
		t.Errorf("the deleted source's image is not parked: %v", err)
	}
	if l, err := ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: sid}); err != nil || len(l.GetEntries()) != 1 {
		t.Errorf("ListSnapshots of the deleted volume's snapshot: %v, %v", l, err)
	}
	restored2, err := create("restore-2", snapSrc, 0)
	if err != nil {
		t.Fatalf("restore after the source volume was deleted: %v", err)
	}
	tgt, undo := stagePublish(t, node, restored2.GetVolumeId(), ext4Cap, restored2.GetVolumeContext(), secrets, dir, "restore-2")
	verifyItems(t, expandCase{name: "restore-2", fs: "ext4"}, tgt, beforeSnap)
	undo()
	deleteSnap()
	if _, err := ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: sid, Secrets: secrets}); err != nil {
		t.Errorf("DeleteSnapshot again: %v", err)
	}
}

// TestSnapshotUnresponsiveOwner: a volume whose exclusive lock is held by
// a client that does not answer (here: a lock without a watch, as a dead
// node leaves it) is not snapshotted: Unavailable naming the holder, and
// nothing is left behind (no snapshot, no record).
func TestSnapshotUnresponsiveOwner(t *testing.T) {
	d := serveLocal(t)
	b, ctrl := d.b, d.ctrl
	runSnapshotUnresponsiveOwner(t, ctrl, func(ctx context.Context) (objstore.Pool, error) { return b.Pool(ctx, "rbd") }, nil, nil, "")
}

// runSnapshotUnresponsiveOwner is TestSnapshotUnresponsiveOwner's body on
// any backend (CSI names start with prefix).
func runSnapshotUnresponsiveOwner(t *testing.T, ctrl csi.ControllerClient, openPool func(context.Context) (objstore.Pool, error), params, secrets map[string]string, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vol := createVolume(ctx, t, ctrl, &csi.CreateVolumeRequest{Name: prefix + "held", VolumeCapabilities: []*csi.VolumeCapability{ext4Cap},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}, Parameters: params, Secrets: secrets})
	vid, _ := volume.ParseVolumeID(vol.GetVolume().GetVolumeId())
	pool, err := openPool(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id, err := clsrbd.GetID(ctx, pool, clsrbd.IDOID(vid.Image))
	if err != nil {
		t.Fatal(err)
	}
	var op objstore.WriteOp
	clslock.Lock(&op, exclusivelock.LockName, clslock.LockExclusive, exclusivelock.CookiePrefix+"1234", exclusivelock.LockTag, "", 0, 0)
	if err := pool.Operate(ctx, clsrbd.HeaderOID(id), &op); err != nil {
		t.Fatal(err)
	}
	_, err = ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: prefix + "s", SourceVolumeId: vol.GetVolume().GetVolumeId(), Secrets: secrets})
	expectCode(t, "snapshot of a volume whose owner does not answer", err, codes.Unavailable, "held by", "did not answer")
	if snaps, err := clsrbd.ListSnapshots(ctx, pool, clsrbd.HeaderOID(id)); err != nil || len(snaps) != 0 {
		t.Errorf("snapshots left: %v (%v)", snaps, err)
	}
	var stat objstore.ReadOp
	stat.Stat()
	if err := pool.Read(ctx, "csi.snapshot."+volume.SnapNameFor(prefix+"s"), &stat); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("snapshot record left: %v", err)
	}
	list, err := ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: vol.GetVolume().GetVolumeId()})
	if err != nil || len(list.GetEntries()) != 0 {
		t.Errorf("ListSnapshots: %v, %v", list, err)
	}
	// Unheld, the controller snapshots it directly.
	op = objstore.WriteOp{}
	clslock.Unlock(&op, exclusivelock.LockName, exclusivelock.CookiePrefix+"1234")
	if err := pool.Operate(ctx, clsrbd.HeaderOID(id), &op); err != nil {
		t.Fatal(err)
	}
	s, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: prefix + "s", SourceVolumeId: vol.GetVolume().GetVolumeId(), Secrets: secrets})
	if err != nil || !strings.HasSuffix(s.GetSnapshot().GetSnapshotId(), "@"+volume.SnapNameFor(prefix+"s")) {
		t.Fatalf("CreateSnapshot of an unserved volume: %v, %v", s, err)
	}
	if _, err := ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: s.GetSnapshot().GetSnapshotId(), Secrets: secrets}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolume().GetVolumeId(), Secrets: secrets}); err != nil {
		t.Fatal(err)
	}
}

// checkFamilyGone fails if the image with id srcID is left (under its name
// or parked) once every volume and snapshot of its family was deleted.
func checkFamilyGone(t *testing.T, openPool func(context.Context) (objstore.Pool, error), srcID string) {
	t.Helper()
	ctx := context.Background()
	pool, err := openPool(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := clsrbd.GetID(ctx, pool, clsrbd.IDOID(storage.ParkedName(srcID))); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("the source image %s is still parked after its family was deleted: %v", srcID, err)
	}
	var op objstore.ReadOp
	op.Stat()
	if err := pool.Read(ctx, clsrbd.HeaderOID(srcID), &op); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("the source image's header is left: %v", err)
	}
}
