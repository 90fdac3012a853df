//go:build ceph && pacific

package driver_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/nodeserver"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
)

// drSites is the two-site rbd-mirror setup of hack/dr-up.sh (the recipe
// in /work/shared/recipes/rbd-mirror: two single-node clusters site-a and
// site-b, auth none, pool rbd mirrored both ways by one rbd-mirror daemon
// per site), named by CSI_RBDJ_DR_DIR. The tests stop and start site-b's
// daemon (pid file mirror/rbd-mirror.pid, the setup's mirror-setup.sh).
// make dr-drill brings it up, runs the tests and tears it down; by hand:
//
//	hack/dr-up.sh   # prints /var/tmp/csi-rbdj-dr
//	CSI_RBDJ_DR_DIR=/var/tmp/csi-rbdj-dr go test -tags ceph,pacific -run TestDR ./pkg/driver/
//	hack/dr-down.sh --wipe
type drSites struct {
	dir  string
	mons map[string]string // site -> mon_host
	cfg  string            // a config file with both sites as clusters "site-a" and "site-b"
	sec  map[string]string // the CSI secret of every request (auth none: any key)
}

func drSetup(t *testing.T) *drSites {
	t.Helper()
	dir := os.Getenv("CSI_RBDJ_DR_DIR")
	if dir == "" {
		t.Skip("CSI_RBDJ_DR_DIR names no two-site rbd-mirror setup (recipe: /work/shared/recipes/rbd-mirror)")
	}
	s := &drSites{dir: dir, mons: map[string]string{}}
	re := regexp.MustCompile(`(?m)^mon_host = (.*)$`)
	for _, site := range []string{"site-a", "site-b"} {
		b, err := os.ReadFile(filepath.Join(dir, site, site+".conf"))
		if err != nil {
			t.Fatal(err)
		}
		m := re.FindSubmatch(b)
		if m == nil {
			t.Fatalf("%s.conf has no mon_host", site)
		}
		s.mons[site] = string(m[1])
	}
	s.cfg = writeCephConfig(t, map[string][]string{"site-a": {s.mons["site-a"]}, "site-b": {s.mons["site-b"]}})
	s.sec = map[string]string{storage.SecretUserID: "admin", storage.SecretUserKey: wrongKey(t)}
	return s
}

// open opens a Ceph backend that reaches both sites.
func (s *drSites) open(t *testing.T) storage.Backend {
	t.Helper()
	return openCeph(t, s.cfg, "")
}

// drDriver is the CSI driver (controller and node) of a DR test, served in
// a directory of its own on a backend that reaches both sites.
type drDriver struct {
	ctrl    csi.ControllerClient
	node    csi.NodeClient
	backend storage.Backend // closed when the test ends
	dir     string
	staging string // dir/staging, created
}

// serve serves the driver on a new backend (s.open) in a new directory.
func (s *drSites) serve(t *testing.T, opts ...func(*nodeserver.Options)) drDriver {
	t.Helper()
	d := drDriver{backend: s.open(t), dir: t.TempDir()}
	d.ctrl, d.node, _ = serveDriver(t, d.dir, d.backend, opts...)
	d.staging = filepath.Join(d.dir, "staging")
	if err := os.Mkdir(d.staging, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// createVolume creates volume csiName of size bytes on site-a with
// capability c and params (the cluster id site-a added). It returns the
// volume, its image name and the id of its replica on site-b.
func (s *drSites) createVolume(t *testing.T, ctrl csi.ControllerClient, csiName string, size int64, c *csi.VolumeCapability, params map[string]string) (vol *csi.Volume, name, idB string) {
	t.Helper()
	p := map[string]string{volume.ParamClusterID: "site-a"}
	maps.Copy(p, params)
	r := createVolume(context.Background(), t, ctrl, &csi.CreateVolumeRequest{Name: csiName, VolumeCapabilities: []*csi.VolumeCapability{c},
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}, Secrets: s.sec, Parameters: p})
	return r.GetVolume(), volume.ImageNameFor(csiName), strings.Replace(r.GetVolume().GetVolumeId(), "/site-a/", "/site-b/", 1)
}

// stage stages volume id at staging on node with capability c and the
// volume context volCtx (may be nil).
func (s *drSites) stage(node csi.NodeClient, id, staging string, c *csi.VolumeCapability, volCtx map[string]string) error {
	_, err := node.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: c,
		VolumeContext: volCtx, Secrets: s.sec})
	return err
}

// unstage unstages volume id from staging on node; failing fails the test.
func (s *drSites) unstage(t *testing.T, node csi.NodeClient, id, staging string) {
	t.Helper()
	if _, err := node.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatalf("unstage %s: %v", id, err)
	}
}

// waitReplica waits (2 min) until rbd-mirror has created site-b's
// non-primary replica of image name.
func (s *drSites) waitReplica(t *testing.T, name string) {
	t.Helper()
	retry(t, "replica on site-b", 2*time.Minute, func() error {
		out, err := s.rbd(context.Background(), "site-b", "info", "rbd/"+name)
		if err != nil || !strings.Contains(out, "mirroring primary: false") {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
}

// rbd runs the rbd CLI on a site.
func (s *drSites) rbd(ctx context.Context, site string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "rbd", append([]string{"--cluster", site}, args...)...)
	cmd.Env = append(os.Environ(), "CEPH_CONF="+filepath.Join(s.dir, "conf", "$cluster.conf"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (s *drSites) mustRBD(t *testing.T, site string, args ...string) string {
	t.Helper()
	out, err := s.rbd(context.Background(), site, args...)
	if err != nil {
		t.Fatalf("rbd --cluster %s %s: %v\n%s", site, strings.Join(args, " "), err, out)
	}
	return out
}

// stopMirror stops site-b's rbd-mirror daemon of the setup (by its pid
// file): SIGTERM, so that it releases its leader lock (a SIGKILLed daemon's
// lock holds a restarted one off for ~30-45 s: heartbeats), then SIGKILL
// if it has not exited in 30 s.
func (s *drSites) stopMirror(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, "mirror", "rbd-mirror.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		if err == syscall.ESRCH { // stopped already
			return
		}
		t.Fatalf("stop rbd-mirror %d: %v", pid, err)
	}
	for deadline := time.Now().Add(30 * time.Second); processRunning(pid); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Logf("rbd-mirror %d did not exit 30 s after SIGTERM: SIGKILL", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
			break
		}
	}
}

// processRunning: pid exists and is not a zombie (the daemon is not our
// child: init reaps it).
func processRunning(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || len(b) < i+3 || b[i+2] != 'Z'
}

// exportSum returns the md5 of rbd export of image name on a site.
func (s *drSites) exportSum(ctx context.Context, site, name string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", `rbd --cluster "$1" export --no-progress "rbd/$2" - | md5sum`, "sh", site, name)
	cmd.Env = append(os.Environ(), "CEPH_CONF="+filepath.Join(s.dir, "conf", "$cluster.conf"))
	out, err := cmd.CombinedOutput()
	return strings.Fields(string(out) + " x")[0], err
}

// TestDRFailoverSynced: a mirrored volume written on site-a and unstaged
// replicates to site-b (TestDRDrill does it while staged); after site-a is lost and the replica force-promoted,
// NodeStageVolume on site-b replays its journal, mounts the replicated
// filesystem (no format) and every file is there. Runs before
// TestDRNeverSyncedReplica, which stops rbd-mirror.
func TestDRFailoverSynced(t *testing.T) {
	s := drSetup(t)
	s.startMirror(t)
	d := s.serve(t)
	vol, name, idB := s.createVolume(t, d.ctrl, uniqueName("dr-sync"), 32<<20, rwo, map[string]string{volume.ParamMirroring: "journal"})
	idA := vol.GetVolumeId()
	stage := func(id string) {
		t.Helper()
		if err := s.stage(d.node, id, d.staging, rwo, nil); err != nil {
			t.Fatalf("stage %s: %v", id, err)
		}
	}
	stage(idA)
	for i := range 50 {
		if err := os.WriteFile(filepath.Join(d.staging, "f"+strconv.Itoa(i)), []byte("file "+strconv.Itoa(i)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s.unstage(t, d.node, idA, d.staging)

	took := s.waitEqual(t, name, 2*time.Minute)
	t.Logf("site-b equals site-a %v after the unstage", took.Round(100*time.Millisecond))

	s.mustRBD(t, "site-b", "mirror", "image", "promote", "--force", "rbd/"+name)
	// No retry: right after the promotion, the rbd-mirror replayer may
	// still hold the image's lock and refuse it (EROFS) until it notices;
	// NodeStage waits that out (nodeserver's lockRefusedWait).
	start := time.Now()
	stage(idB)
	t.Logf("staged the promoted replica in %v", time.Since(start).Round(100*time.Millisecond))
	for i := range 50 {
		b, err := os.ReadFile(filepath.Join(d.staging, "f"+strconv.Itoa(i)))
		if err != nil || string(b) != "file "+strconv.Itoa(i) {
			t.Fatalf("file %d on the promoted replica: %q, %v", i, b, err)
		}
	}
	s.unstage(t, d.node, idB, d.staging)
}

// startMirror (re)starts the setup's rbd-mirror daemon with its own script.
func (s *drSites) startMirror(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(s.dir, "mirror-setup.sh"))
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "MIRROR_DIR="+s.dir, "RBD_MIRROR_ARGS=--rbd-mirror-journal-poll-age 0.5")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("start rbd-mirror: %v\n%s", err, out)
	}
}

// waitEqual waits until site-b's copy of image name equals site-a's.
func (s *drSites) waitEqual(t *testing.T, name string, timeout time.Duration) time.Duration {
	t.Helper()
	ctx := context.Background()
	start := time.Now()
	sumA, err := s.exportSum(ctx, "site-a", name)
	if err != nil {
		t.Fatal(err)
	}
	for {
		sumB, err := s.exportSum(ctx, "site-b", name)
		if err == nil && sumB == sumA {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("site-b's %s did not equal site-a's in %v (%s vs %s, %v)", name, timeout, sumB, sumA, err)
		}
		time.Sleep(time.Second)
	}
}

// TestDRLaggyReplicator is issue 16's laggy-client check with real
// rbd-mirror: with rbd-mirror stopped, writes on site-a beyond
// journalMaxConcurrentObjectSets (2) disconnect rbd-mirror's journal client
// and the journal is trimmed past it (the node plugin logs it and records a
// Warning event ReplicatorDisconnected on the volume's PersistentVolume,
// named by the volume context); when rbd-mirror returns, the replica
// needs a resync (it is not silently caught up from a trimmed journal);
// after `rbd mirror image resync` site-b equals site-a.
func TestDRLaggyReplicator(t *testing.T) {
	s := drSetup(t)
	ctx := context.Background()
	events := &drEvents{}
	d := s.serve(t, func(o *nodeserver.Options) { o.Events = events })
	s.startMirror(t)
	block := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}, AccessMode: rwo.AccessMode}
	csiName := uniqueName("dr-laggy")
	vol, name, _ := s.createVolume(t, d.ctrl, csiName, 16<<20, block, map[string]string{volume.ParamMirroring: "journal",
		volume.ParamJournalOrder: "16", volume.ParamJournalMaxConcurrentObjectSets: "2",
		volume.CtxPVName: "pv-" + csiName}) // as the external-provisioner with --extra-create-metadata
	if pv := vol.GetVolumeContext()[volume.CtxPVName]; pv != "pv-"+csiName {
		t.Fatalf("volume context names PV %q, want pv-%s (CreateVolume echoes the provisioner's parameter)", pv, csiName)
	}
	id := vol.GetVolumeId()
	s.waitReplica(t, name)
	s.waitEqual(t, name, 2*time.Minute) // bootstrapped and replaying
	status := func() string { return s.mustRBD(t, "site-a", "journal", "status", "--pool", "rbd", "--image", name) }
	if st := status(); strings.Count(st, "state=connected") != 2 {
		t.Fatalf("want the image client and rbd-mirror's connected:\n%s", st)
	}

	s.stopMirror(t)
	if err := s.stage(d.node, id, d.staging, block, vol.GetVolumeContext()); err != nil {
		t.Fatal(err)
	}
	dev := ""
	for _, l := range loopsUnder(d.dir) {
		dev = "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(l)))
	}
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for i := range 64 { // 4 MiB in 64 KiB journal objects: dozens of sets
		for j := range buf {
			buf[j] = byte(i + j)
		}
		if _, err := f.WriteAt(buf, int64(i)*int64(len(buf))); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	s.unstage(t, d.node, id, d.staging)
	st := status()
	t.Logf("site-a journal after the writes:\n%s", st)
	if !strings.Contains(st, "state=disconnected") {
		t.Fatalf("rbd-mirror's client is not disconnected:\n%s", st)
	}
	if strings.Contains(st, "minimum_set: 0\n") {
		t.Fatalf("the journal was not trimmed past the disconnected client:\n%s", st)
	}
	evs := events.list()
	if len(evs) != 1 || evs[0].pv != "pv-"+csiName || evs[0].typ != "Warning" || evs[0].reason != nodeserver.ReasonReplicatorDisconnected {
		t.Fatalf("events recorded by the node plugin: %+v, want one Warning %s on pv-%s", evs, nodeserver.ReasonReplicatorDisconnected, csiName)
	}
	t.Logf("event on PersistentVolume %s: %s %s: %s", evs[0].pv, evs[0].typ, evs[0].reason, evs[0].msg)

	// rbd-mirror returns: its replica needs a resync; after it, it equals.
	s.startMirror(t)
	time.Sleep(5 * time.Second)
	if sumA, _ := s.exportSum(ctx, "site-a", name); true {
		if sumB, _ := s.exportSum(ctx, "site-b", name); sumB == sumA {
			t.Fatalf("site-b caught up from a journal that was trimmed past it: the disconnect did not take")
		}
	}
	s.mustRBD(t, "site-b", "mirror", "image", "resync", "rbd/"+name)
	took := s.waitEqual(t, name, 3*time.Minute)
	t.Logf("site-b equals site-a %v after the resync request", took.Round(100*time.Millisecond))
}

// TestDRNeverSyncedReplica is the failover of issue 16 with real rbd-mirror:
// a volume created on site-a with mirroring: journal is bootstrapped to
// site-b while still unformatted (its format marker is copied there, under
// site-a's image id); the replica is not staged on site-b while it is
// non-primary (its journal's tag owner is site-a's mirror uuid); rbd-mirror
// is stopped, the volume formatted and written on site-a, site-a lost and
// the replica force-promoted: NodeStageVolume on site-b refuses the blank
// replica instead of formatting it, and a brand-new volume on site-b
// still gets its filesystem.
func TestDRNeverSyncedReplica(t *testing.T) {
	s := drSetup(t)
	s.startMirror(t)
	ctx := context.Background()
	a, b := s.serve(t), s.serve(t)

	vol, name, idB := s.createVolume(t, a.ctrl, uniqueName("dr"), 64<<20, rwo, map[string]string{volume.ParamMirroring: "journal"})
	idA := vol.GetVolumeId()

	// rbd-mirror bootstraps the replica on site-b (non-primary).
	s.waitReplica(t, name)
	// rbd-mirror copied the format marker (the primary's image id): the
	// reason it holds an image id, not "true".
	// rbd-mirror creates the replica first and copies the metadata in a
	// later step of its bootstrap: wait for it.
	var metaB string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		metaB = s.mustRBD(t, "site-b", "image-meta", "list", "rbd/"+name)
		if strings.Contains(metaB, storage.MetaFormatBlank) || time.Now().After(deadline) {
			break
		}
	}
	t.Logf("site-b replica metadata:\n%s", metaB)
	if !strings.Contains(metaB, storage.MetaFormatBlank) {
		t.Errorf("rbd-mirror did not copy the format marker to the replica in 30 s (the id binding is then untested)")
	}

	// Non-primary: not staged.
	err := s.stage(b.node, idB, b.staging, rwo, nil)
	wantStatus(t, "NodeStage of the non-primary replica", err, codes.FailedPrecondition, "non-primary", "rbd mirror image promote rbd/"+name)

	// The replica never syncs what follows.
	s.stopMirror(t)
	if err := s.stage(a.node, idA, a.staging, rwo, nil); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if err := os.WriteFile(filepath.Join(a.staging, "f"+strconv.Itoa(i)), []byte("acknowledged"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s.unstage(t, a.node, idA, a.staging)

	// Site-a lost: force-promote the replica and stage it on site-b.
	s.mustRBD(t, "site-b", "mirror", "image", "promote", "--force", "rbd/"+name)
	err = s.stage(b.node, idB, b.staging, rwo, nil)
	wantStatus(t, "NodeStage of the promoted, never-synced replica", err, codes.FailedPrecondition, "reads as blank",
		"rbd image-meta set rbd/"+name+" csi-rbdj.format-blank true")
	if du := s.mustRBD(t, "site-b", "du", "rbd/"+name); !strings.Contains(du, " 0 B") {
		t.Errorf("the refused stage wrote to the replica:\n%s", du)
	}

	// A brand-new volume on site-b still gets its filesystem.
	newVol, err := b.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: uniqueName("dr-new"), VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}, Secrets: s.sec, Parameters: map[string]string{volume.ParamClusterID: "site-b"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.stage(b.node, newVol.GetVolume().GetVolumeId(), b.staging, rwo, nil); err != nil {
		t.Fatalf("stage a brand-new volume on site-b: %v", err)
	}
	s.unstage(t, b.node, newVol.GetVolume().GetVolumeId(), b.staging)
}

// drEvents records the node plugin's Kubernetes events (the recorder the
// plugin gets from pkg/k8sevents in a pod).
type drEvents struct {
	mu  sync.Mutex
	evs []drEvent
}

type drEvent struct{ pv, typ, reason, msg string }

func (e *drEvents) PersistentVolumeEvent(pv, typ, reason, msg string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.evs = append(e.evs, drEvent{pv, typ, reason, msg})
}

func (e *drEvents) list() []drEvent {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]drEvent(nil), e.evs...)
}
