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
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-addons/spec/lib/go/replication"
	"google.golang.org/grpc/codes"

	"github.com/csi-rbdj/csi-rbdj/pkg/fsprobe"
	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
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
	kerneltest.RequireRoot(t)
	s.startMirror(t)
	for _, fsType := range []string{"ext4", "xfs"} {
		t.Run(fsType, func(t *testing.T) { drReadOnlyReplica(t, s, fsType) })
	}
}

func drReadOnlyReplica(t *testing.T, s *drSites, fsType string) {
	ctx := context.Background()
	sec := s.sec
	d := s.serve(t)
	addons := s.open(t)
	t.Cleanup(func() { _ = addons.Close() })
	repl := serveCSIAddons(t, d.dir, addons)
	stagingA, stagingB, stagingRW := filepath.Join(d.dir, "site-a"), filepath.Join(d.dir, "site-b"), filepath.Join(d.dir, "site-b-rw")
	for _, dir := range []string{stagingA, stagingB, stagingRW} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	rw := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, fsType)
	ro := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, fsType)

	vol, name, idB := s.createVolume(t, d.ctrl, uniqueName("dr-ro-"+fsType), 320<<20, rw, // xfs wants 300 MiB
		map[string]string{volume.ParamMirroring: "journal"})
	idA := vol.GetVolumeId()
	defer func() {
		if _, err := d.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: idA, Secrets: sec}); err != nil {
			t.Logf("delete the volume on site-a: %v", err)
		}
	}()
	stage := func(id, staging string, c *csi.VolumeCapability) error {
		return s.stage(d.node, id, staging, c, vol.GetVolumeContext())
	}
	if err := stage(idA, stagingA, rw); err != nil {
		t.Fatalf("stage on site-a: %v", err)
	}
	stagedA := true
	defer func() {
		if stagedA {
			s.unstage(t, d.node, idA, stagingA)
		}
	}()
	s.waitReplica(t, name)

	// The writer on site-a.
	w := startSyncedWriter(stagingA)
	stopWriter := func() {
		if err := w.stop(t); err != nil {
			t.Fatalf("writer on site-a: %v", err)
		}
	}
	defer stopWriter()
	time.Sleep(3 * time.Second)

	// Read-write on site-b: refused.
	err := stage(idB, stagingRW, rw)
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
	frozen := w.files(0)
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
	later := w.files(len(frozen))
	seenLater := len(later) - len(verifyFilesQuiet(stagingB, later))
	if err := os.WriteFile(filepath.Join(stagingB, "site-b-write"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write to the read-only replica: %v, want EROFS", err)
	}
	mnt := findmnt(t, "OPTIONS", stagingB)
	// ext4 shows its noload as norecovery.
	if !strings.Contains(","+mnt+",", ",ro,") || !strings.Contains(","+mnt+",", ",norecovery,") {
		t.Errorf("mount options of the read-only replica: %s, want ro and norecovery (ext4: noload)", mnt)
	}
	if l := s.mustRBD(t, "site-b", "lock", "ls", "rbd/"+name); l != lockB {
		t.Errorf("site-b's lock changed while staged read-only:\nbefore:\n%s\nwhile staged:\n%s", lockB, l)
	}
	t.Logf("%s: site-b replicated past site-a's freeze %v after it; staged read-only in %v while site-a writes: all %d files fsynced before the freeze intact (plus %d of the %d written since); write: EROFS; mount: %s; site-b's lock untouched (%s)",
		fsType, replicatedAfter.Round(100*time.Millisecond), stagedIn.Round(time.Millisecond), len(frozen), seenLater, len(later), mnt, strings.Join(strings.Fields(lockB), " "))
	s.unstage(t, d.node, idB, stagingB)
	if left := fsprobe.MountsUnder(stagingB); len(left) > 0 {
		t.Fatalf("the read-only unstage left mounts: %v", left)
	}

	// rbd-mirror was not disturbed: site-b equals site-a once it is unstaged.
	stopWriter()
	s.unstage(t, d.node, idA, stagingA)
	stagedA = false
	took := s.waitEqual(t, name, 3*time.Minute)
	if out := s.mustRBD(t, "site-b", "info", "rbd/"+name); !strings.Contains(out, "mirroring primary: false") {
		t.Fatalf("site-b is not non-primary any more:\n%s", out)
	}
	t.Logf("%s: site-b equals site-a %v after site-a's unstage; still non-primary", fsType, took.Round(100*time.Millisecond))
}
