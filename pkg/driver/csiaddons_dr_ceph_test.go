//go:build ceph && pacific

package driver_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/csi-addons/spec/lib/go/replication"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/csi-rbdj/csi-rbdj/pkg/csiaddons"
)

// TestDRCSIAddons drives a failover and failback through the csi-addons
// replication API (a gRPC client of the spec, requests shaped as the
// csi-addons sidecar of kubernetes-csi-addons v0.13 sends them: the volume
// in replication_source, the secret's data) on the two-site setup (drSites; one rbd-mirror, site-a ->
// site-b):
//
//   - a volume created on site-a without mirroring, staged and written, is
//     mirrored by EnableVolumeReplication while still staged (rbd-mirror's
//     sync-point snapshot goes through the node's lock owner); site-b's
//     copy catches up while it is staged, and equals it once unstaged;
//   - GetVolumeReplicationInfo on site-a: no backlog, last sync now; with
//     rbd-mirror stopped and the volume written on site-a, a backlog and a
//     last sync time no later than the first unreplicated write; after
//     rbd-mirror returns, no backlog again;
//   - PromoteVolume on site-b without force while site-a is primary:
//     FailedPrecondition; planned failover: DemoteVolume site-a,
//     PromoteVolume site-b (once the demotion has replicated), the files
//     are on site-b;
//   - failback: DemoteVolume site-b, PromoteVolume site-a, the files are
//     on site-a; ResyncVolume on site-b until ready (site-b's promotion
//     made it diverge: rbd-mirror reports a split brain, the resync
//     re-creates it from site-a), then site-b equals site-a.
func TestDRCSIAddons(t *testing.T) {
	s := drSetup(t)
	s.startMirror(t)
	ctx := context.Background()
	sec := s.sec
	d := s.serve(t)
	repl := serveCSIAddons(t, d.dir, d.backend)
	vol, name, idB := s.createVolume(t, d.ctrl, uniqueName("dr-addons"), 32<<20, rwo, nil)
	idA := vol.GetVolumeId()
	staging := d.staging
	stage := func(id string) {
		t.Helper()
		if err := s.stage(d.node, id, staging, rwo, nil); err != nil {
			t.Fatalf("stage %s: %v", id, err)
		}
	}
	unstage := func(id string) {
		t.Helper()
		s.unstage(t, d.node, id, staging)
	}
	write := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			f, err := os.Create(filepath.Join(staging, "f"+strconv.Itoa(i)))
			if err == nil {
				_, err = f.WriteString("file " + strconv.Itoa(i))
			}
			if err == nil {
				err = f.Sync()
			}
			if err == nil {
				err = f.Close()
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	verify := func(site string, n int) {
		t.Helper()
		for i := range n {
			b, err := os.ReadFile(filepath.Join(staging, "f"+strconv.Itoa(i)))
			if err != nil || string(b) != "file "+strconv.Itoa(i) {
				t.Fatalf("file %d on %s: %q, %v", i, site, b, err)
			}
		}
	}
	stage(idA)
	write(0, 30)

	// Mirroring enabled while the volume is staged: rbd-mirror bootstraps
	// it through the node's lock owner (sync-point snapshot).
	params := map[string]string{csiaddons.ParamMirroringMode: "journal"}
	enabled := time.Now()
	for range 2 {
		if _, err := repl.EnableVolumeReplication(ctx, &replication.EnableVolumeReplicationRequest{ReplicationSource: volSrc(idA), Parameters: params, Secrets: sec}); err != nil {
			t.Fatal(err)
		}
	}

	// Replication info: poll until rbd-mirror has committed its position.
	infoA := func() (time.Time, metadata.MD, error) {
		var hdr metadata.MD
		r, err := repl.GetVolumeReplicationInfo(ctx, &replication.GetVolumeReplicationInfoRequest{ReplicationSource: volSrc(idA), Secrets: sec}, grpc.Header(&hdr))
		if err != nil {
			return time.Time{}, hdr, err
		}
		if r.GetLastSyncTime() == nil {
			return time.Time{}, hdr, nil
		}
		return r.GetLastSyncTime().AsTime(), hdr, nil
	}
	waitCaughtUp := func(what string) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			before := time.Now()
			last, hdr, err := infoA()
			if err == nil && strings.Join(hdr.Get(csiaddons.HeaderEntriesBehind), "") == "0" {
				if last.Before(before.Add(-time.Second)) || last.After(time.Now().Add(time.Second)) {
					t.Fatalf("%s: caught up but last_sync_time %v is not the time of the call (%v)", what, last, before)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: GetVolumeReplicationInfo never reported the peer caught up: %v %v, %v", what, last, hdr, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	waitCaughtUp("after the initial sync, the volume still staged")
	t.Logf("site-b caught up with the staged volume %v after EnableVolumeReplication", time.Since(enabled).Round(100*time.Millisecond))
	unstage(idA)
	s.waitEqual(t, name, 2*time.Minute)
	_, err := repl.GetVolumeReplicationInfo(ctx, &replication.GetVolumeReplicationInfoRequest{ReplicationSource: volSrc(idB), Secrets: sec})
	wantStatus(t, "replication info of the replica", err, codes.FailedPrecondition, "non-primary")

	// A backlog while rbd-mirror is away.
	s.stopMirror(t)
	stage(idA)
	firstWrite := time.Now()
	write(30, 40)
	last, hdr, err := infoA()
	if err != nil {
		t.Fatal(err)
	}
	behind, _ := strconv.Atoi(strings.Join(hdr.Get(csiaddons.HeaderEntriesBehind), ""))
	t.Logf("with rbd-mirror stopped: last sync %v (first unreplicated write at %v), %d entries, %s bytes behind", last, firstWrite, behind, hdr.Get(csiaddons.HeaderBytesBehind))
	if behind == 0 || last.IsZero() || last.After(firstWrite.Add(time.Second)) || last.Before(enabled) {
		t.Fatalf("with rbd-mirror stopped after writes at %v: last sync %v, %d entries behind; want a backlog and the time of the first of those writes", firstWrite, last, behind)
	}
	unstage(idA)
	s.startMirror(t)
	s.waitEqual(t, name, 2*time.Minute)
	waitCaughtUp("after rbd-mirror returned")

	// Planned failover.
	_, err = repl.PromoteVolume(ctx, &replication.PromoteVolumeRequest{ReplicationSource: volSrc(idB), Secrets: sec})
	wantStatus(t, "promote of site-b while site-a is primary", err, codes.FailedPrecondition, "other site still holds the primary")
	for range 2 {
		if _, err := repl.DemoteVolume(ctx, &replication.DemoteVolumeRequest{ReplicationSource: volSrc(idA), Secrets: sec}); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	retryFailedPrecondition(t, "promote of site-b after site-a's demotion", time.Minute, func() error {
		_, err := repl.PromoteVolume(ctx, &replication.PromoteVolumeRequest{ReplicationSource: volSrc(idB), Secrets: sec})
		return err
	})
	t.Logf("site-b promoted %v after site-a's demotion", time.Since(start).Round(100*time.Millisecond))
	_, err = repl.ResyncVolume(ctx, &replication.ResyncVolumeRequest{ReplicationSource: volSrc(idB), Secrets: sec})
	wantStatus(t, "resync of the promoted site-b", err, codes.FailedPrecondition, "primary")
	stage(idB)
	verify("site-b", 40)
	unstage(idB)

	// Failback.
	if _, err := repl.DemoteVolume(ctx, &replication.DemoteVolumeRequest{ReplicationSource: volSrc(idB), Secrets: sec}); err != nil {
		t.Fatal(err)
	}
	if _, err := repl.PromoteVolume(ctx, &replication.PromoteVolumeRequest{ReplicationSource: volSrc(idA), Secrets: sec}); err != nil {
		t.Fatal(err)
	}
	stage(idA)
	verify("site-a", 40)
	unstage(idA)
	idBefore := strings.TrimSpace(s.mustRBD(t, "site-b", "info", "--format", "json", "rbd/"+name))
	start = time.Now()
	for {
		r, err := repl.ResyncVolume(ctx, &replication.ResyncVolumeRequest{ReplicationSource: volSrc(idB), Secrets: sec})
		// While rbd-mirror re-creates the image (about 30 s) it is
		// missing: the server answers not ready, not NotFound. For a
		// moment the re-created image exists before rbd-mirror enables
		// mirroring on it: that answer is FailedPrecondition, which the
		// csi-addons controller retries like any error.
		if status.Code(err) == codes.FailedPrecondition && strings.Contains(err.Error(), "mirroring is not enabled") {
			t.Logf("resync of site-b %v after the first call: %v (image being re-created)", time.Since(start).Round(time.Millisecond), err)
			if time.Since(start) > 3*time.Minute {
				t.Fatalf("site-b still without mirroring 3 min after the first ResyncVolume: %v", err)
			}
			time.Sleep(time.Second)
			continue
		}
		if err != nil {
			t.Fatalf("resync of site-b: %v", err)
		}
		if r.GetReady() {
			break
		}
		if time.Since(start) > 3*time.Minute {
			t.Fatalf("site-b not ready 3 min after the first ResyncVolume (last: %v, %v)", r, err)
		}
		time.Sleep(time.Second)
	}
	t.Logf("site-b resynced (ready) %v after the first ResyncVolume", time.Since(start).Round(100*time.Millisecond))
	idAfter := strings.TrimSpace(s.mustRBD(t, "site-b", "info", "--format", "json", "rbd/"+name))
	t.Logf("site-b image before the resync: %s\nafter: %s", idBefore, idAfter)
	s.waitEqual(t, name, time.Minute)
}

// volSrc names a volume as the csi-addons sidecar (kubernetes-csi-addons
// v0.13) does: by replication_source only.
func volSrc(id string) *replication.ReplicationSource {
	return &replication.ReplicationSource{Type: &replication.ReplicationSource_Volume{Volume: &replication.ReplicationSource_VolumeSource{VolumeId: id}}}
}
