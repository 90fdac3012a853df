//go:build ceph && pacific

package driver_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-addons/spec/lib/go/replication"
	"google.golang.org/grpc/codes"

	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

// TestDRReadOnlyReplica is issue 16 item 5 on the two-site setup
// (drSites): while site-a serves a mirrored volume and a writer creates
// and fsyncs files on it,
//
//   - a read-write NodeStage of site-b's non-primary replica is refused
//     (FailedPrecondition naming the state and the promote command);
//   - DemoteVolume of the served primary is refused (FailedPrecondition:
//     unstage first), and so is a demote with the rbd CLI behind csi-rbdj's
//     back (the serving node refuses librbd's lock request): site-a stays
//     primary, site-b non-primary, the writer keeps going — no split brain;
//   - once site-a's filesystem was frozen (fsfreeze: its journal is
//     checkpointed) and rbd-mirror replicated past that point, a read-only
//     NodeStage (SINGLE_NODE_READER_ONLY) of the replica on site-b serves
//     it without its lock (site-b's lock stays rbd-mirror's): every file
//     fsynced before the freeze is read intact, a write fails with EROFS,
//     the unstage leaves nothing behind;
//   - rbd-mirror was not disturbed: once site-a is unstaged, site-b
//     equals it, still non-primary.
//
// For ext4 (mounted ro,noload) and xfs (ro,norecovery).
func TestDRReadOnlyReplica(t *testing.T) {
	s := drSetup(t)
	requireRoot(t)
	s.startMirror(t)
	cfg := writeCephConfig(t, map[string][]string{"site-a": {s.mons["site-a"]}, "site-b": {s.mons["site-b"]}})
	sec := map[string]string{storage.SecretUserID: "admin", storage.SecretUserKey: wrongKey(t)} // auth none: any key
	for _, fsType := range []string{"ext4", "xfs"} {
		t.Run(fsType, func(t *testing.T) { drReadOnlyReplica(t, s, cfg, sec, fsType) })
	}
}

func drReadOnlyReplica(t *testing.T, s *drSites, cfg string, sec map[string]string, fsType string) {
	ctx := context.Background()
	b, err := storage.OpenCeph(storage.CephOptions{ConfigFile: cfg, ConnectTimeout: 5 * time.Second, OpTimeout: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctrl, node, _ := serveDriver(t, dir, b)
	addons, err := storage.OpenCeph(storage.CephOptions{ConfigFile: cfg, ConnectTimeout: 5 * time.Second, OpTimeout: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = addons.Close() })
	repl := serveCSIAddons(t, dir, addons)
	stagingA, stagingB, stagingRW := filepath.Join(dir, "site-a"), filepath.Join(dir, "site-b"), filepath.Join(dir, "site-b-rw")
	for _, d := range []string{stagingA, stagingB, stagingRW} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	rw := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, fsType)
	ro := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, fsType)

	csiName := uniqueName("dr-ro-" + fsType)
	vol, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: csiName, VolumeCapabilities: []*csi.VolumeCapability{rw},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 320 << 20}, Secrets: sec, // xfs wants 300 MiB
		Parameters: map[string]string{volume.ParamClusterID: "site-a", volume.ParamMirroring: "journal"}})
	if err != nil {
		t.Fatal(err)
	}
	name := volume.ImageNameFor(csiName)
	idA := vol.GetVolume().GetVolumeId()
	idB := strings.Replace(idA, "/site-a/", "/site-b/", 1)
	defer func() {
		if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: idA, Secrets: sec}); err != nil {
			t.Logf("delete the volume on site-a: %v", err)
		}
	}()
	stage := func(id, staging string, c *csi.VolumeCapability) error {
		_, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: c,
			VolumeContext: vol.GetVolume().GetVolumeContext(), Secrets: sec})
		return err
	}
	unstage := func(id, staging string) {
		t.Helper()
		if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			t.Fatalf("unstage %s: %v", id, err)
		}
	}
	if err := stage(idA, stagingA, rw); err != nil {
		t.Fatalf("stage on site-a: %v", err)
	}
	stagedA := true
	defer func() {
		if stagedA {
			unstage(idA, stagingA)
		}
	}()
	retry(t, "replica on site-b", 2*time.Minute, func() error {
		out, err := s.rbd(ctx, "site-b", "info", "rbd/"+name)
		if err != nil || !strings.Contains(out, "mirroring primary: false") {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})

	// The writer on site-a.
	var (
		mu    sync.Mutex
		acked []int
		werr  error
		stopW = make(chan struct{})
		wdone = make(chan struct{})
	)
	go func() {
		defer close(wdone)
		for n := 0; ; n++ {
			select {
			case <-stopW:
				return
			default:
			}
			if err := writeSynced(stagingA, n); err != nil {
				mu.Lock()
				werr = err
				mu.Unlock()
				return
			}
			mu.Lock()
			acked = append(acked, n)
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}()
	stopWriter := func() {
		select {
		case <-stopW:
		default:
			close(stopW)
		}
		<-wdone
		mu.Lock()
		defer mu.Unlock()
		if werr != nil {
			t.Fatalf("writer on site-a: %v", werr)
		}
	}
	defer stopWriter()
	time.Sleep(3 * time.Second)

	// Read-write on site-b: refused.
	err = stage(idB, stagingRW, rw)
	wantStatus(t, "read-write NodeStage of the non-primary replica", err, codes.FailedPrecondition,
		"non-primary", `primary site "site-a"`, "rbd mirror image promote rbd/"+name, "read-only staging")

	// Demote of the served primary: refused, through csi-addons and behind its back.
	_, err = repl.DemoteVolume(ctx, &replication.DemoteVolumeRequest{ReplicationSource: volSrc(idA), Secrets: sec})
	wantStatus(t, "DemoteVolume of the served primary", err, codes.FailedPrecondition, "in use", "unstage", "stop the workload")
	if out, err := s.rbd(ctx, "site-a", "mirror", "image", "demote", "rbd/"+name); err == nil {
		t.Errorf("rbd mirror image demote of the served primary succeeded:\n%s", out)
	} else {
		t.Logf("rbd mirror image demote of the served primary (behind csi-addons' back) fails: %v: %s", err, strings.TrimSpace(out))
	}
	if out := s.mustRBD(t, "site-a", "info", "rbd/"+name); !strings.Contains(out, "mirroring primary: true") {
		t.Fatalf("site-a is no longer primary after the refused demotes:\n%s", out)
	}
	if out := s.mustRBD(t, "site-b", "info", "rbd/"+name); !strings.Contains(out, "mirroring primary: false") {
		t.Fatalf("site-b became primary:\n%s", out)
	}

	// A consistent point on site-a: fsfreeze checkpoints the filesystem's
	// journal, so what was fsynced before it is in place, readable without
	// journal recovery.
	mu.Lock()
	frozen := append([]int(nil), acked...)
	mu.Unlock()
	if out, err := exec.Command("fsfreeze", "-f", stagingA).CombinedOutput(); err != nil {
		t.Fatalf("fsfreeze -f: %v %s", err, out)
	}
	frozenAt := time.Now()
	if out, err := exec.Command("fsfreeze", "-u", stagingA).CombinedOutput(); err != nil {
		t.Fatalf("fsfreeze -u: %v %s", err, out)
	}
	retry(t, "site-b replicated past the freeze", 2*time.Minute, func() error {
		r, err := repl.GetVolumeReplicationInfo(ctx, &replication.GetVolumeReplicationInfoRequest{ReplicationSource: volSrc(idA), Secrets: sec})
		if err != nil {
			return err
		}
		if r.GetLastSyncTime() == nil || !r.GetLastSyncTime().AsTime().After(frozenAt) {
			return fmt.Errorf("last sync %v, freeze at %v", r.GetLastSyncTime().AsTime(), frozenAt)
		}
		return nil
	})
	replicatedAfter := time.Since(frozenAt)
	lockB := s.mustRBD(t, "site-b", "lock", "ls", "rbd/"+name)

	// Read-only on site-b while site-a writes.
	start := time.Now()
	if err := stage(idB, stagingB, ro); err != nil {
		t.Fatalf("read-only NodeStage of the non-primary replica: %v", err)
	}
	stagedIn := time.Since(start)
	if lost := verifyFiles(t, stagingB, frozen); len(lost) > 0 {
		t.Fatalf("%d of the %d files fsynced before the freeze are missing or wrong on the read-only replica: %v", len(lost), len(frozen), lost)
	}
	mu.Lock()
	later := slicesFrom(acked, len(frozen))
	mu.Unlock()
	seenLater := len(later) - len(verifyFilesQuiet(stagingB, later))
	if err := os.WriteFile(filepath.Join(stagingB, "site-b-write"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write to the read-only replica: %v, want EROFS", err)
	}
	mnt := mountOptionsAt(t, stagingB)
	// ext4 shows its noload as norecovery.
	if !strings.Contains(","+mnt+",", ",ro,") || !strings.Contains(","+mnt+",", ",norecovery,") {
		t.Errorf("mount options of the read-only replica: %s, want ro and norecovery (ext4: noload)", mnt)
	}
	if l := s.mustRBD(t, "site-b", "lock", "ls", "rbd/"+name); l != lockB {
		t.Errorf("site-b's lock changed while staged read-only:\nbefore:\n%s\nwhile staged:\n%s", lockB, l)
	}
	t.Logf("%s: site-b replicated past site-a's freeze %v after it; staged read-only in %v while site-a writes: all %d files fsynced before the freeze intact (plus %d of the %d written since); write: EROFS; mount: %s; site-b's lock untouched (%s)",
		fsType, replicatedAfter.Round(100*time.Millisecond), stagedIn.Round(time.Millisecond), len(frozen), seenLater, len(later), mnt, strings.Join(strings.Fields(lockB), " "))
	unstage(idB, stagingB)
	if left := mountsUnder(stagingB); len(left) > 0 {
		t.Fatalf("the read-only unstage left mounts: %v", left)
	}

	// rbd-mirror was not disturbed: site-b equals site-a once it is unstaged.
	stopWriter()
	unstage(idA, stagingA)
	stagedA = false
	took := s.waitEqual(t, name, 3*time.Minute)
	if out := s.mustRBD(t, "site-b", "info", "rbd/"+name); !strings.Contains(out, "mirroring primary: false") {
		t.Fatalf("site-b is not non-primary any more:\n%s", out)
	}
	t.Logf("%s: site-b equals site-a %v after site-a's unstage; still non-primary", fsType, took.Round(100*time.Millisecond))
}

// slicesFrom is s[i:], or nil past its end.
func slicesFrom(s []int, i int) []int {
	if i >= len(s) {
		return nil
	}
	return append([]int(nil), s[i:]...)
}

// mountOptionsAt is the VFS and superblock options of the mount at mnt.
func mountOptionsAt(t *testing.T, mnt string) string {
	t.Helper()
	out, err := exec.Command("findmnt", "-n", "-o", "OPTIONS", "--mountpoint", mnt).CombinedOutput()
	if err != nil {
		t.Fatalf("findmnt %s: %v %s", mnt, err, out)
	}
	return strings.TrimSpace(string(out))
}
