//go:build ceph && pacific

package driver_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

// TestCephPoolScope: a cluster entry of --ceph-config with "pools" limits
// ListVolumes and ListSnapshots to those pools (a shared cluster's other
// pools, here the test pool other tests use, are not listed), while
// CreateVolume still works in any pool a StorageClass names.
func TestCephPoolScope(t *testing.T) {
	f := newCephFixture(t)
	ctx := context.Background()
	pool := uniqueName("csi-scope")
	if out, err := cephCLI(ctx, f.conf, "ceph", "osd", "pool", "create", pool, "8"); err != nil {
		t.Fatalf("create pool %s: %v\n%s", pool, err, out)
	}
	t.Cleanup(func() {
		if out, err := cephCLI(context.Background(), f.conf, "ceph", "osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it"); err != nil {
			t.Errorf("remove pool %s: %v\n%s", pool, err, out)
		}
	})
	f.rbd(t, "pool", "init", pool)

	conf := filepath.Join(t.TempDir(), "config.json")
	entry := fmt.Sprintf(`[{"clusterID": %q, "monitors": [%q], "pools": [%q, "gone-pool"]}]`, cephTestCluster, cephtest.MonHost(t), pool)
	if err := os.WriteFile(conf, []byte(entry), 0o644); err != nil {
		t.Fatal(err)
	}
	ctrl, _, _ := f.serve(t, conf, credentialsDir(t, f.rw))

	ids := map[string]string{} // pool → volume id
	snaps := map[string]string{}
	for _, pn := range []string{pool, cephtest.PoolName} {
		v, err := ctrl.CreateVolume(ctx, createReq(uniqueName("scope-"+pn), map[string]string{volume.ParamPool: pn}, secrets(f.rw)))
		if err != nil {
			t.Fatalf("CreateVolume in pool %s: %v", pn, err)
		}
		id := v.GetVolume().GetVolumeId()
		ids[pn] = id
		t.Cleanup(func() {
			if _, err := ctrl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id, Secrets: secrets(f.rw)}); err != nil {
				t.Errorf("DeleteVolume %s: %v", id, err)
			}
		})
		s, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: uniqueName("scope-snap"), SourceVolumeId: id, Secrets: secrets(f.rw)})
		if err != nil {
			t.Fatalf("CreateSnapshot of %s: %v", id, err)
		}
		sid := s.GetSnapshot().GetSnapshotId()
		snaps[pn] = sid
		t.Cleanup(func() {
			if _, err := ctrl.DeleteSnapshot(context.Background(), &csi.DeleteSnapshotRequest{SnapshotId: sid, Secrets: secrets(f.rw)}); err != nil {
				t.Errorf("DeleteSnapshot %s: %v", sid, err)
			}
		})
	}

	lv, err := ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, e := range lv.GetEntries() {
		listed[e.GetVolume().GetVolumeId()] = true
	}
	if !listed[ids[pool]] || listed[ids[cephtest.PoolName]] || len(listed) != 1 {
		t.Errorf("ListVolumes with pools [%s]: %v, want only %s", pool, listed, ids[pool])
	}
	ls, err := ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{Secrets: secrets(f.rw)})
	if err != nil {
		t.Fatal(err)
	}
	listed = map[string]bool{}
	for _, e := range ls.GetEntries() {
		listed[e.GetSnapshot().GetSnapshotId()] = true
	}
	if !listed[snaps[pool]] || listed[snaps[cephtest.PoolName]] || len(listed) != 1 {
		t.Errorf("ListSnapshots with pools [%s]: %v, want only %s", pool, listed, snaps[pool])
	}
}
