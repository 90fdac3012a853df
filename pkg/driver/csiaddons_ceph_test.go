//go:build ceph && pacific

package driver_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-addons/spec/lib/go/replication"
	"github.com/csi-rbdj/csi-rbdj/pkg/grpcserver/grpcservertest"
	"google.golang.org/grpc/codes"

	"github.com/csi-rbdj/csi-rbdj/pkg/csiaddons"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

// serveCSIAddons serves the csi-addons services for b on a unix socket in
// dir and returns a replication client of the spec.
func serveCSIAddons(t *testing.T, dir string, b storage.Backend) replication.ControllerClient {
	t.Helper()
	s, err := csiaddons.New(csiaddons.Options{Name: "rbdj.csi-rbdj.dev", Version: "test", Backend: b})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "csi-addons.sock"))
	if err != nil {
		t.Fatal(err)
	}
	return replication.NewControllerClient(grpcservertest.Serve(t, l, s.Serve))
}

// TestCephCSIAddonsReplication drives the csi-addons replication calls
// against the test cluster, in a pool of its own (one cluster, no peer, so
// no rbd-mirror replays anything: what is checked is the image's mirroring
// state each call leaves, as rbd info reports it, and each call's answer):
// enable refused while the pool does not mirror (FailedPrecondition with
// the command) and for snapshot mode (InvalidArgument), then enabled in
// journal mode, idempotently; no peer: GetVolumeReplicationInfo NotFound;
// promote of a primary OK, resync of a primary FailedPrecondition; demote
// refused while staged, then done (idempotent); a non-primary: resync
// not ready and nothing requested unless forced, forced: requested;
// promote back and the filesystem is there; disable, idempotent; unknown
// image NotFound; a cluster that does not answer Unavailable naming its
// monitors.
func TestCephCSIAddonsReplication(t *testing.T) {
	f := newCephFixture(t)
	ctx := context.Background()
	pool := f.mirrorPool(t)
	down := "127.0.0.1:3999" // nothing listens there
	cfg := writeCephConfig(t, map[string][]string{cephTestCluster: {cephtest.MonHost(t)}, "site-down": {down}})
	b, err := storage.OpenCeph(storage.CephOptions{ConfigFile: cfg, ConnectTimeout: 3 * time.Second, OpTimeout: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	dir := t.TempDir()
	ctrl, node, _ := serveDriver(t, dir, b)
	repl := serveCSIAddons(t, dir, b)
	sec := secrets(f.rw)
	staging := filepath.Join(dir, "staging")
	if err := os.Mkdir(staging, 0o755); err != nil {
		t.Fatal(err)
	}
	vol := createVolume(ctx, t, ctrl, &csi.CreateVolumeRequest{Name: "replicated", VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}, Parameters: map[string]string{volume.ParamPool: pool}, Secrets: sec})
	id := vol.GetVolume().GetVolumeId()
	name := volume.ImageNameFor("replicated")
	info := func() string { return f.rbd(t, "info", pool+"/"+name) }
	wantInfo := func(what string, want ...string) {
		t.Helper()
		in := info()
		for _, w := range want {
			if !strings.Contains(in, w) {
				t.Fatalf("%s: rbd info does not say %q:\n%s", what, w, in)
			}
		}
	}
	params := map[string]string{csiaddons.ParamMirroringMode: "journal"}

	_, err = repl.EnableVolumeReplication(ctx, &replication.EnableVolumeReplicationRequest{VolumeId: id, Parameters: params, Secrets: sec})
	wantStatus(t, "enable in a pool without mirroring", err, codes.FailedPrecondition, "rbd mirror pool enable "+pool+" image")
	f.rbd(t, "mirror", "pool", "enable", pool, "image")
	_, err = repl.EnableVolumeReplication(ctx, &replication.EnableVolumeReplicationRequest{VolumeId: id, Parameters: map[string]string{csiaddons.ParamMirroringMode: "snapshot"}, Secrets: sec})
	wantStatus(t, "enable in snapshot mode", err, codes.InvalidArgument, "only journal mirroring is supported")
	wantInfo("after the refused enables", "mirroring state: disabled")
	for range 2 {
		if _, err := repl.EnableVolumeReplication(ctx, &replication.EnableVolumeReplicationRequest{VolumeId: id, Parameters: params, Secrets: sec}); err != nil {
			t.Fatal(err)
		}
	}
	wantInfo("enabled", "mirroring state: enabled", "mirroring mode: journal", "mirroring primary: true")

	_, err = repl.GetVolumeReplicationInfo(ctx, &replication.GetVolumeReplicationInfoRequest{VolumeId: id, Secrets: sec})
	wantStatus(t, "info without a peer", err, codes.NotFound, "no rbd-mirror peer")
	if _, err := repl.PromoteVolume(ctx, &replication.PromoteVolumeRequest{VolumeId: id, Secrets: sec}); err != nil {
		t.Fatalf("promote of a primary: %v", err)
	}
	_, err = repl.ResyncVolume(ctx, &replication.ResyncVolumeRequest{VolumeId: id, Secrets: sec})
	wantStatus(t, "resync of a primary", err, codes.FailedPrecondition, "primary")

	stage := &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: rwo, Secrets: sec}
	if _, err := node.NodeStageVolume(ctx, stage); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(staging, "f"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = repl.DemoteVolume(ctx, &replication.DemoteVolumeRequest{VolumeId: id, Secrets: sec})
	wantStatus(t, "demote of a staged volume", err, codes.FailedPrecondition, "in use", "unstage")
	wantInfo("after the refused demote", "mirroring primary: true")
	if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := repl.DemoteVolume(ctx, &replication.DemoteVolumeRequest{VolumeId: id, Secrets: sec}); err != nil {
			t.Fatal(err)
		}
	}
	wantInfo("demoted", "mirroring primary: false")

	st, err := b.Storage(ctx, cephTestCluster, sec)
	if err != nil {
		t.Fatal(err)
	}
	p, err := st.Pool(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	resyncRequested := func() bool {
		t.Helper()
		r, err := storage.ResyncRequested(ctx, p, name)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r, err := repl.ResyncVolume(ctx, &replication.ResyncVolumeRequest{VolumeId: id, Secrets: sec})
	if err != nil || r.GetReady() {
		t.Fatalf("resync of a non-primary without rbd-mirror: %v, %v; want not ready", r, err)
	}
	if resyncRequested() {
		t.Fatal("an unforced resync of a replica without errors requested a resync")
	}
	r, err = repl.ResyncVolume(ctx, &replication.ResyncVolumeRequest{VolumeId: id, Force: true, Secrets: sec})
	if err != nil || r.GetReady() {
		t.Fatalf("forced resync: %v, %v; want not ready", r, err)
	}
	if !resyncRequested() {
		t.Fatal("the forced resync requested nothing (the journal's image client has no resync flag)")
	}
	_, err = repl.DisableVolumeReplication(ctx, &replication.DisableVolumeReplicationRequest{VolumeId: id, Secrets: sec})
	wantStatus(t, "disable on a non-primary without force", err, codes.FailedPrecondition, "non-primary")

	if _, err := repl.PromoteVolume(ctx, &replication.PromoteVolumeRequest{VolumeId: id, Secrets: sec}); err != nil {
		t.Fatalf("promote of the demoted image: %v", err)
	}
	wantInfo("promoted", "mirroring primary: true")
	if _, err := node.NodeStageVolume(ctx, stage); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(staging, "f")); err != nil || string(b) != "kept" {
		t.Fatalf("file after demote and promote: %q, %v", b, err)
	}
	_, err = repl.DisableVolumeReplication(ctx, &replication.DisableVolumeReplicationRequest{VolumeId: id, Secrets: sec})
	wantStatus(t, "disable of a staged volume", err, codes.FailedPrecondition, "in use", "unstage")
	if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}

	before, err := st.ImageInfo(ctx, p, name)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := repl.DisableVolumeReplication(ctx, &replication.DisableVolumeReplicationRequest{VolumeId: id, Secrets: sec}); err != nil {
			t.Fatal(err)
		}
	}
	wantInfo("disabled", "mirroring state: disabled", "journaling")
	after, err := st.ImageInfo(ctx, p, name)
	if err != nil {
		t.Fatal(err)
	}
	if after.JournalOrder != before.JournalOrder || after.JournalSplayWidth != before.JournalSplayWidth {
		t.Errorf("journal after disable: order %d splay %d, want %d and %d", after.JournalOrder, after.JournalSplayWidth, before.JournalOrder, before.JournalSplayWidth)
	}
	if meta := f.rbd(t, "image-meta", "list", pool+"/"+name); strings.Contains(meta, "conf_rbd_journal") {
		t.Errorf("the journal options stayed in the image metadata:\n%s", meta)
	}
	// Still a csi-rbdj volume with its filesystem.
	if _, err := node.NodeStageVolume(ctx, stage); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(staging, "f")); err != nil || string(b) != "kept" {
		t.Fatalf("file after disable: %q, %v", b, err)
	}
	if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}

	_, err = repl.PromoteVolume(ctx, &replication.PromoteVolumeRequest{VolumeId: volume.VolumeID{Backend: storage.BackendCeph, Cluster: cephTestCluster, Pool: pool, Image: "csi-vol-gone"}.String(), Secrets: sec})
	wantStatus(t, "promote of an unknown volume", err, codes.NotFound, "csi-vol-gone")
	start := time.Now()
	_, err = repl.PromoteVolume(ctx, &replication.PromoteVolumeRequest{VolumeId: volume.VolumeID{Backend: storage.BackendCeph, Cluster: "site-down", Pool: pool, Image: name}.String(), Force: true, Secrets: sec})
	wantStatus(t, "promote on a site that is down", err, codes.Unavailable, down)
	t.Logf("the down site answered Unavailable in %v", time.Since(start).Round(100*time.Millisecond))
}
