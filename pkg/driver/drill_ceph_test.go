//go:build ceph && pacific

package driver_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-addons/spec/lib/go/replication"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-rbdj/csi-rbdj/pkg/driver"
	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"github.com/csi-rbdj/csi-rbdj/pkg/testproc"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

// drillAck is one file the drill's writer created and fsynced on site-a.
type drillAck struct {
	n   int
	at  time.Time // fsync (and the directory's fsync) returned
	rep time.Time // first replication poll that showed it replicated
}

// TestDRDrill is issue 16's disaster-recovery drill (make dr-drill), on
// the two-site setup of hack/dr-up.sh (drSites; rbd-mirror both ways):
//
//  1. a volume is created through CSI on site-a with `mirroring: journal`
//     while site-b's rbd-mirror is stopped, staged (ext4) by site-a's node
//     plugin, a separate process, and a writer creates and fsyncs files
//     continuously; only then does rbd-mirror start, so its bootstrap (a
//     sync-point snapshot through our lock owner) happens on a served
//     volume;
//  2. while the volume is still staged, site-b's copy catches up: the
//     csi-addons GetVolumeReplicationInfo on site-a (rbd-mirror's commit
//     position in the primary's journal) is polled, and the time from each
//     file's fsync to the first poll that shows it replicated is the lag;
//  3. site-a's node plugin is killed with SIGKILL (site-a lost, not
//     demoted; site-b's rbd-mirror stops at the same moment, so site-b has
//     only what was replicated while site-a lived);
//  4. PromoteVolume(force) on site-b, NodeStage there: every file fsynced
//     before the last observed replicated point is intact, the filesystem
//     is site-a's (same UUID: not reformatted), e2fsck -fn is clean; more
//     files are written on site-b;
//  5. failback: site-a returns, DemoteVolume + ResyncVolume there until
//     ready (site-a's rbd-mirror re-copies site-b's primary), then
//     DemoteVolume on site-b and PromoteVolume on site-a (once the
//     demotion replicated), NodeStage on site-a: the files of both sites
//     are there; site-b replays site-a again and equals it.
func TestDRDrill(t *testing.T) {
	s := drSetup(t)
	kerneltest.RequireRoot(t)
	ctx := context.Background()
	sec := s.sec
	dir := t.TempDir()
	drillStart := time.Now()
	phase := func(what string) { t.Logf("[drill +%v] %s", time.Since(drillStart).Round(100*time.Millisecond), what) }

	// The controller, site-b's node plugin and the csi-addons server in
	// this process; site-a's node plugin in a child (killed below).
	sockB, stopB := serveNode(t, s.open(t), dir, "site-b-node", driver.ModeAll)
	connB := dial(t, sockB)
	ctrl, nodeB := csi.NewControllerClient(connB), csi.NewNodeClient(connB)
	addons := s.open(t)
	t.Cleanup(func() { _ = addons.Close() })
	repl := serveCSIAddons(t, dir, addons)

	cmd := testproc.Command("^TestTakeoverNodeChild$", "CSI_RBDJ_TAKEOVER_DIR="+dir, "CSI_RBDJ_TAKEOVER_BACKEND=ceph", "CSI_RBDJ_TAKEOVER_CEPH_CONFIG="+s.cfg)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var nodeAStopped bool
	t.Cleanup(func() {
		// Whatever happened: site-a's node gone, its leftovers cleared,
		// both rbd-mirror daemons running again for the next test.
		in.Close()
		if !nodeAStopped {
			_ = unix.Kill(cmd.Process.Pid, unix.SIGKILL)
		}
		cleanupNode(t, filepath.Join(dir, "site-a-staging"), filepath.Join(dir, "n1"))
		stopB()
		cleanupNode(t, dir, filepath.Join(dir, "site-b-node"))
		s.startMirror(t)
	})
	child := testproc.Start(t, cmd)
	line, err := bufio.NewReader(child.Stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "READY ") {
		t.Fatalf("site-a node plugin: %q %v", line, err)
	}
	nodeA := csi.NewNodeClient(dial(t, strings.TrimSpace(strings.TrimPrefix(line, "READY "))))

	stagingA, stagingB := filepath.Join(dir, "site-a-staging"), filepath.Join(dir, "site-b-staging")
	for _, d := range []string{stagingA, stagingB} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	block := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}, AccessMode: rwo.AccessMode}

	// 1. Create on site-a (rbd-mirror for site-b stopped), stage, write.
	s.startMirror(t) // site-a's daemon must run (a test before may have stopped site-b's)
	s.stopMirror(t)
	vol, name, idB := s.createVolume(t, ctrl, uniqueName("drill"), 64<<20, rwo, map[string]string{volume.ParamMirroring: "journal"})
	idA := vol.GetVolumeId()
	if err := s.stage(nodeA, idA, stagingA, rwo, nil); err != nil {
		t.Fatalf("stage on site-a: %v", err)
	}
	uuidA := fsUUID(t, stagingA)
	phase(fmt.Sprintf("volume %s created with mirroring: journal and staged (ext4 %s) by site-a's node plugin (pid %d)", name, uuidA, cmd.Process.Pid))

	wstart := time.Now()
	w := startSyncedWriter(stagingA) // a file every ~20 ms, each fsynced with its directory
	defer func() { _ = w.stop(t) }()
	time.Sleep(3 * time.Second)
	s.startMirror(t)
	mirrorStart := time.Now()
	phase("rbd-mirror started while the volume is staged and written")

	// 2. Site-b catches up while staged: poll the replication info.
	var (
		lastPoint   time.Time // files fsynced before it are replicated
		firstSynced time.Duration
		lags        []time.Duration // per file: fsync -> first poll showing it replicated
		steadyLags  []time.Duration // the same for the files written after the first catch-up
		pollLags    []time.Duration // per poll: age of the oldest unreplicated write
		polls       int
	)
	measureUntil := time.Now().Add(2 * time.Minute)
	for time.Now().Before(measureUntil) {
		r, err := repl.GetVolumeReplicationInfo(ctx, &replication.GetVolumeReplicationInfoRequest{ReplicationSource: volSrc(idA), Secrets: sec})
		now := time.Now()
		if err != nil || r.GetLastSyncTime() == nil { // rbd-mirror not registered yet
			if err != nil && status.Code(err) != codes.NotFound {
				t.Logf("replication info: %v", err)
			}
			time.Sleep(250 * time.Millisecond)
			continue
		}
		point := r.GetLastSyncTime().AsTime()
		if firstSynced > 0 {
			polls++
			pollLags = append(pollLags, now.Sub(point))
		}
		lastPoint = point
		var n int
		var e error
		w.locked(func(acks []drillAck, err error) {
			for i := range acks {
				if acks[i].rep.IsZero() && acks[i].at.Before(point) {
					acks[i].rep = now
					lags = append(lags, now.Sub(acks[i].at))
					if firstSynced == 0 {
						firstSynced = now.Sub(mirrorStart)
					} else if acks[i].at.After(mirrorStart.Add(firstSynced)) {
						steadyLags = append(steadyLags, now.Sub(acks[i].at))
					}
				}
			}
			n, e = len(acks), err
		})
		if e != nil {
			t.Fatalf("writer on site-a: %v", e)
		}
		// Enough once the copy has caught up and kept up for 20 s.
		if firstSynced > 0 && now.Sub(mirrorStart) > firstSynced+20*time.Second && n > 0 {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if firstSynced == 0 {
		t.Fatalf("site-b never caught up with the staged volume in 2 min (the bootstrap of a served volume failed?); rbd-mirror log: %s/mirror/rbd-mirror.b.log", s.dir)
	}
	phase(fmt.Sprintf("site-b holds site-a's writes %v after rbd-mirror started (bootstrap of the served volume); then, while staged and written: "+
		"replication lag (age of the oldest write not yet replicated, at each of %d polls): %s; per file, fsync -> first poll showing it replicated: %s (all files, bootstrap included: %s)",
		firstSynced.Round(100*time.Millisecond), polls, durStats(pollLags), durStats(steadyLags), durStats(lags)))
	if snaps := s.mustRBD(t, "site-a", "snap", "ls", "--all", "rbd/"+name); strings.TrimSpace(snaps) != "" {
		t.Logf("site-a snapshots while replicating (rbd-mirror's sync point should be gone):\n%s", snaps)
	}

	// 3. Site-a lost: SIGKILL its node plugin and cut the link at once.
	s.stopMirror(t)
	child.Kill()
	nodeAStopped = true
	killed := time.Now()
	_ = w.stop(t) // its writes fail with the node gone
	var must, after []int
	var nAcked int
	w.locked(func(acks []drillAck, _ error) {
		for _, a := range acks {
			if a.at.Before(lastPoint) {
				must = append(must, a.n)
			} else {
				after = append(after, a.n)
			}
		}
		nAcked = len(acks)
	})
	phase(fmt.Sprintf("site-a's node plugin killed (SIGKILL) with %d files fsynced in %v; %d of them before the last observed replicated point (%v before the kill), %d after",
		nAcked, killed.Sub(wstart).Round(100*time.Millisecond), len(must), killed.Sub(lastPoint).Round(10*time.Millisecond), len(after)))
	if len(must) == 0 {
		t.Fatal("no file was observed replicated before the kill")
	}
	// Its dead mount and device go (the node is gone; so is its writer).
	cleanupNode(t, stagingA, filepath.Join(dir, "n1"))

	// 4. Failover: force-promote site-b, stage there.
	failover := time.Now()
	_, err = repl.PromoteVolume(ctx, &replication.PromoteVolumeRequest{ReplicationSource: volSrc(idB), Secrets: sec})
	wantStatus(t, "PromoteVolume of site-b without force while site-a's copy is primary", err, codes.FailedPrecondition, "force")
	if _, err := repl.PromoteVolume(ctx, &replication.PromoteVolumeRequest{ReplicationSource: volSrc(idB), Force: true, Secrets: sec}); err != nil {
		t.Fatalf("PromoteVolume(force) on site-b: %v", err)
	}
	if err := s.stage(nodeB, idB, stagingB, rwo, nil); err != nil {
		t.Fatalf("NodeStage of the promoted replica on site-b: %v", err)
	}
	phase(fmt.Sprintf("site-b promoted (force) and staged %v after the kill (%v for promote + stage)", time.Since(killed).Round(100*time.Millisecond), time.Since(failover).Round(100*time.Millisecond)))
	if u := fsUUID(t, stagingB); u != uuidA {
		t.Fatalf("site-b's filesystem UUID %s is not site-a's %s: the replica was reformatted", u, uuidA)
	}
	lost := verifyFiles(t, stagingB, must)
	if len(lost) > 0 {
		t.Fatalf("%d files fsynced before the last replicated point are missing or wrong on site-b: %v", len(lost), lost)
	}
	extra := len(after) - len(verifyFilesQuiet(stagingB, after))
	phase(fmt.Sprintf("site-b: all %d files fsynced before the last replicated point intact, plus %d of the %d fsynced after it; same filesystem (UUID %s)", len(must), extra, len(after), uuidA))
	s.unstage(t, nodeB, idB, stagingB)
	if err := s.stage(nodeB, idB, stagingB, block, nil); err != nil {
		t.Fatal(err)
	}
	fsckClean(t, filepath.Join(dir, "site-b-node"))
	s.unstage(t, nodeB, idB, stagingB)
	if err := s.stage(nodeB, idB, stagingB, rwo, nil); err != nil {
		t.Fatal(err)
	}
	siteB := make([]int, 20)
	for i := range siteB {
		siteB[i] = 1_000_000 + i
		if err := writeSynced(stagingB, siteB[i]); err != nil {
			t.Fatalf("write on site-b: %v", err)
		}
	}
	s.unstage(t, nodeB, idB, stagingB)
	phase("site-b: e2fsck -fn clean; 20 more files written there")

	// 5. Failback. Site-a returns: its copy (still primary, diverged) is
	// demoted, then resynced from site-b by site-a's rbd-mirror.
	s.startMirror(t)
	failback := time.Now()
	retryFailedPrecondition(t, "DemoteVolume on site-a (the dead node's watch expires first)", 3*time.Minute, func() error {
		_, err := repl.DemoteVolume(ctx, &replication.DemoteVolumeRequest{ReplicationSource: volSrc(idA), Secrets: sec})
		return err
	})
	phase(fmt.Sprintf("site-a demoted %v after it returned", time.Since(failback).Round(100*time.Millisecond)))
	retry(t, "ResyncVolume on site-a until ready", 5*time.Minute, func() error {
		r, err := repl.ResyncVolume(ctx, &replication.ResyncVolumeRequest{ReplicationSource: volSrc(idA), Secrets: sec})
		if err != nil {
			t.Fatalf("ResyncVolume on site-a: %v", err)
		}
		if !r.GetReady() {
			return fmt.Errorf("not ready")
		}
		return nil
	})
	phase(fmt.Sprintf("site-a resynced from site-b (ready) %v after it returned", time.Since(failback).Round(100*time.Millisecond)))
	if _, err := repl.DemoteVolume(ctx, &replication.DemoteVolumeRequest{ReplicationSource: volSrc(idB), Secrets: sec}); err != nil {
		t.Fatalf("DemoteVolume on site-b: %v", err)
	}
	retryFailedPrecondition(t, "PromoteVolume on site-a once site-b's demotion replicated", 2*time.Minute, func() error {
		_, err := repl.PromoteVolume(ctx, &replication.PromoteVolumeRequest{ReplicationSource: volSrc(idA), Secrets: sec})
		return err
	})
	sockA, stopA := serveNode(t, s.open(t), dir, "site-a-node2", driver.ModeNode)
	defer func() { stopA(); cleanupNode(t, stagingA, filepath.Join(dir, "site-a-node2")) }()
	nodeA2 := csi.NewNodeClient(dial(t, sockA))
	if err := s.stage(nodeA2, idA, stagingA, rwo, nil); err != nil {
		t.Fatalf("NodeStage on site-a after the failback: %v", err)
	}
	if u := fsUUID(t, stagingA); u != uuidA {
		t.Fatalf("site-a's filesystem UUID %s after the failback is not %s", u, uuidA)
	}
	if lost := verifyFiles(t, stagingA, append(slices.Clone(must), siteB...)); len(lost) > 0 {
		t.Fatalf("after the failback %d files are missing or wrong on site-a: %v", len(lost), lost)
	}
	s.unstage(t, nodeA2, idA, stagingA)
	phase(fmt.Sprintf("failback done %v after site-a returned: site-a primary again, staged, its %d files and site-b's 20 intact",
		time.Since(failback).Round(100*time.Millisecond), len(must)))
	took := s.waitEqual(t, name, 3*time.Minute)
	phase(fmt.Sprintf("site-b replays site-a again: equal %v later", took.Round(100*time.Millisecond)))
	if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: idA, Secrets: sec}); err != nil {
		t.Logf("delete the drill's volume on site-a: %v", err)
	}
}

// syncedWriter creates the files dir/f0, f1, ... (writeSynced) one every
// ~20 ms until it is stopped or a write fails, and records when each was
// acknowledged.
type syncedWriter struct {
	mu    sync.Mutex
	acks  []drillAck
	err   error // the failed write's
	stopC chan struct{}
	done  chan struct{}
}

func startSyncedWriter(dir string) *syncedWriter {
	w := &syncedWriter{stopC: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for n := 0; ; n++ {
			select {
			case <-w.stopC:
				return
			default:
			}
			err := writeSynced(dir, n)
			w.mu.Lock()
			if err != nil {
				w.err = err
			} else {
				w.acks = append(w.acks, drillAck{n: n, at: time.Now()})
			}
			w.mu.Unlock()
			if err != nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return w
}

// locked calls f with the files acknowledged so far and the write error,
// holding the writer's lock (f may update the records' rep).
func (w *syncedWriter) locked(f func(acks []drillAck, err error)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f(w.acks, w.err)
}

// files is the numbers of the acknowledged files from the from-th on.
func (w *syncedWriter) files(from int) []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	var ns []int
	for _, a := range w.acks[min(from, len(w.acks)):] {
		ns = append(ns, a.n)
	}
	return ns
}

// stop stops the writer, waits for it (a minute at most) and returns the
// error of its failed write, if one failed. It may be called again.
func (w *syncedWriter) stop(t *testing.T) error {
	t.Helper()
	select {
	case <-w.stopC:
	default:
		close(w.stopC)
	}
	select {
	case <-w.done:
	case <-time.After(time.Minute):
		t.Errorf("the writer did not stop in a minute")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// writeSynced creates dir/f<n> with its content and fsyncs it and dir.
func writeSynced(dir string, n int) error {
	f, err := os.Create(filepath.Join(dir, "f"+strconv.Itoa(n)))
	if err != nil {
		return err
	}
	_, err = f.WriteString(drillContent(n))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func drillContent(n int) string {
	return strings.Repeat(fmt.Sprintf("file %d of the drill\n", n), 1+n%50)
}

// verifyFiles returns the files of ns missing or wrong under dir (logged).
func verifyFiles(t *testing.T, dir string, ns []int) []int {
	t.Helper()
	bad := verifyFilesQuiet(dir, ns)
	for _, n := range bad[:min(len(bad), 5)] {
		b, err := os.ReadFile(filepath.Join(dir, "f"+strconv.Itoa(n)))
		t.Logf("f%d: %d bytes, %v", n, len(b), err)
	}
	return bad
}

func verifyFilesQuiet(dir string, ns []int) []int {
	var bad []int
	for _, n := range ns {
		b, err := os.ReadFile(filepath.Join(dir, "f"+strconv.Itoa(n)))
		if err != nil || string(b) != drillContent(n) {
			bad = append(bad, n)
		}
	}
	return bad
}

// fsUUID is the UUID of the filesystem mounted at mnt.
func fsUUID(t *testing.T, mnt string) string {
	t.Helper()
	out, err := exec.Command("findmnt", "-n", "-o", "UUID", "--mountpoint", mnt).CombinedOutput()
	u := strings.TrimSpace(string(out))
	if err != nil || u == "" {
		// findmnt reads udev's database, which may lack loop devices.
		src := findmnt(t, "SOURCE", mnt)
		out, err = exec.Command("blkid", "-p", "-s", "UUID", "-o", "value", src).CombinedOutput()
		u = strings.TrimSpace(string(out))
		if err != nil || u == "" {
			t.Fatalf("blkid of %s: %v %s", src, err, out)
		}
	}
	return u
}

// fsckClean runs e2fsck -fn on the loop device of the volume a node with
// state in stateDir serves staged as a Block volume (its only one).
func fsckClean(t *testing.T, stateDir string) {
	t.Helper()
	loops := loopsUnder(stateDir)
	if len(loops) != 1 {
		t.Fatalf("want one loop device served from %s, have %v", stateDir, loops)
	}
	dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(loops[0])))
	out, err := exec.Command("e2fsck", "-fn", dev).CombinedOutput()
	if err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", dev, err, out)
	}
	t.Logf("e2fsck -fn %s: clean\n%s", dev, out)
}

// retry calls f until it returns nil, every second, for at most timeout.
func retry(t *testing.T, what string, timeout time.Duration, f func() error) {
	t.Helper()
	start := time.Now()
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s: still failing after %v: %v", what, timeout, err)
		}
		time.Sleep(time.Second)
	}
}

// retryFailedPrecondition calls f, every second for at most timeout, while
// it fails with FailedPrecondition (a state that has yet to replicate or
// expire); any other error fails the test.
func retryFailedPrecondition(t *testing.T, what string, timeout time.Duration, f func() error) {
	t.Helper()
	retry(t, what, timeout, func() error {
		err := f()
		if err != nil && status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("%s: %v", what, err)
		}
		return err
	})
}

// durStats is "median M, p90 P, max X (n)" of ds.
func durStats(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	r := func(d time.Duration) time.Duration { return d.Round(10 * time.Millisecond) }
	return fmt.Sprintf("median %v, p90 %v, max %v (n=%d)", r(s[len(s)/2]), r(s[len(s)*9/10]), r(s[len(s)-1]), len(s))
}
