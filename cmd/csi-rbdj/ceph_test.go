//go:build ceph && pacific

package main

// The node plugin (`csi-rbdj serve --mode node --backend ceph`, this test
// binary run as the command) on the test cluster of hack/ceph-up.sh, and
// Ceph's own tools on the journals it writes:
//
//   - TestCephOursToLibrbd: our entries, left uncommitted by a SIGKILL, are
//     what `rbd journal inspect` lists, and librbd replays them;
//   - TestCephJournalExportImport: `rbd journal export` of our journal,
//     `rbd journal import` into another image, our replay of that one;
//   - TestCephRestartReserves: the commit position `rbd journal status`
//     shows stays current, and a restarted plugin re-serves a staged volume
//     with its default credentials.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop"
	"github.com/csi-rbdj/csi-rbdj/pkg/fsprobe"
	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"golang.org/x/sys/unix"
)

const (
	cephCluster = "ceph-test"
	cephUser    = "csi-rbdj-rw" // profile rbd, as a deployment's secrets
	imageSize   = 32 << 20
)

// cephEnv is the test cluster, a --ceph-config file for it and the
// credentials of a profile-rbd user, as a Secret and as a mounted Secret.
type cephEnv struct {
	t          *testing.T
	dir        string
	conf       string // the cluster's ceph.conf (client.admin)
	configFile string // --ceph-config
	credsDir   string // --ceph-credentials-dir
	secrets    map[string]string
}

func newCephEnv(t *testing.T) *cephEnv {
	kerneltest.RequireRoot(t)
	e := &cephEnv{t: t, dir: t.TempDir(), conf: cephtest.Conf(t)}
	key, err := e.cli("ceph", "auth", "get-or-create-key", "client."+cephUser, "mon", "profile rbd", "osd", "profile rbd")
	if err != nil {
		t.Fatalf("create client.%s: %v", cephUser, err)
	}
	e.secrets = map[string]string{storage.SecretUserID: cephUser, storage.SecretUserKey: strings.TrimSpace(key)}
	e.configFile = filepath.Join(e.dir, "config.json")
	cfg := fmt.Sprintf(`[{"clusterID": %q, "monitors": [%q]}]`, cephCluster, cephtest.MonHost(t))
	if err := os.WriteFile(e.configFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	e.credsDir = filepath.Join(e.dir, "credentials")
	if err := os.Mkdir(e.credsDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for k, v := range e.secrets {
		if err := os.WriteFile(filepath.Join(e.credsDir, k), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// cli runs a Ceph tool on the test cluster; the error carries its output.
func (e *cephEnv) cli(tool string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool, append([]string{"-c", e.conf}, args...)...)
	cmd.Env = append(os.Environ(), "CEPH_ARGS=--admin-socket=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w\n%s%s", tool, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

func (e *cephEnv) rbd(args ...string) string {
	e.t.Helper()
	out, err := e.cli("rbd", args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// createImage creates a journaled image of imageSize with librbd (the rbd
// CLI) and removes it at the end.
func (e *cephEnv) createImage(prefix string) string {
	e.t.Helper()
	name := fmt.Sprintf("%s-%x", prefix, time.Now().UnixNano())
	e.rbd("create", "--size", strconv.Itoa(imageSize>>20)+"M", "--image-feature", "layering,exclusive-lock,journaling", cephtest.PoolName+"/"+name)
	e.t.Cleanup(func() {
		deadline := time.Now().Add(90 * time.Second) // a dead client's watch lasts 30 s
		for {
			_, err := e.cli("rbd", "rm", "--no-progress", cephtest.PoolName+"/"+name)
			if err == nil || strings.Contains(err.Error(), "No such file") {
				return
			}
			if time.Now().After(deadline) {
				e.t.Errorf("remove image %s: %v", name, err)
				return
			}
			time.Sleep(time.Second)
		}
	})
	return name
}

func volumeID(image string) string {
	return volume.VolumeID{Backend: storage.BackendCeph, Cluster: cephCluster, Pool: cephtest.PoolName, Image: image}.String()
}

// plugin is a node plugin child process.
type plugin struct {
	e        *cephEnv
	stateDir string
	child    *child
	node     csi.NodeClient
	log      string
}

// startPlugin starts `serve --mode node --backend ceph` with its state in
// dir/<name> and extra flags, and waits until Probe says ready.
func (e *cephEnv) startPlugin(name string, extra ...string) *plugin {
	e.t.Helper()
	p := &plugin{e: e, stateDir: filepath.Join(e.dir, name), log: filepath.Join(e.dir, name+".log")}
	sock := filepath.Join(e.dir, name+".sock")
	args := append([]string{"serve", "--mode", "node", "--endpoint", "unix://" + sock, "--backend", "ceph",
		"--ceph-config", e.configFile, "--state-dir", p.stateDir, "--node-id", "ceph-test-node", "--request-timeout", "30s", "-v", "2"}, extra...)
	logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	defer logf.Close()
	p.child = startChild(e.t, logf, args...)
	e.t.Cleanup(func() { p.stop() })
	conn, err := dial(sock)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	p.node = csi.NewNodeClient(conn)
	p.child.waitReady(e.t, csi.NewIdentityClient(conn), p.logTail)
	return p
}

func (p *plugin) logTail() string {
	b, _ := os.ReadFile(p.log)
	return tail(string(b), 40)
}

// kill SIGKILLs the plugin: the crash under test.
func (p *plugin) kill() { p.child.kill() }

// stop ends the plugin (SIGTERM, then SIGKILL) and removes what it left
// staged: mounts under the test directory, its FUSE mounts and loop devices.
func (p *plugin) stop() {
	p.child.stop(time.Minute)
	ms := fsprobe.MountsUnder(p.e.dir)
	for i := len(ms) - 1; i >= 0; i-- {
		if !strings.Contains(ms[i], "/fuse/") {
			_ = unix.Unmount(ms[i], unix.MNT_DETACH)
		}
	}
	fuseDir := filepath.Join(p.stateDir, "fuse")
	ents, _ := os.ReadDir(fuseDir)
	for _, ent := range ents {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := fuseloop.Cleanup(ctx, fuseDir, ent.Name()); err != nil {
			p.e.t.Logf("cleanup %s: %v", ent.Name(), err)
		}
		cancel()
	}
	if p.e.t.Failed() {
		p.e.t.Logf("node plugin log (%s):\n%s", p.stateDir, p.logTail())
	}
}

// stage stages image as a Block volume (with the secrets) and publishes it
// at a target file; it returns the target.
func (p *plugin) stage(image string) string {
	p.e.t.Helper()
	return p.stageWith(image, nil)
}

// stageWith is stage with a volume context for NodeStageVolume and
// NodePublishVolume.
func (p *plugin) stageWith(image string, vctx map[string]string) string {
	t := p.e.t
	t.Helper()
	ctx := context.Background()
	staging, target := filepath.Join(p.e.dir, "staging-"+image), filepath.Join(p.e.dir, "target-"+image)
	if err := os.MkdirAll(staging, 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := p.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: volumeID(image), StagingTargetPath: staging,
		VolumeCapability: blockCap, Secrets: p.e.secrets, VolumeContext: vctx}); err != nil {
		t.Fatalf("NodeStageVolume %s: %v", image, err)
	}
	t.Logf("NodeStageVolume %s: %v", image, time.Since(start).Round(time.Millisecond))
	if _, err := p.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: volumeID(image), StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: blockCap, VolumeContext: vctx}); err != nil {
		t.Fatalf("NodePublishVolume %s: %v", image, err)
	}
	return target
}

func (p *plugin) unstage(image string) {
	t := p.e.t
	t.Helper()
	ctx := context.Background()
	if _, err := p.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: volumeID(image), TargetPath: filepath.Join(p.e.dir, "target-"+image)}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: volumeID(image), StagingTargetPath: filepath.Join(p.e.dir, "staging-"+image)}); err != nil {
		t.Fatal(err)
	}
}

// write is one write through the device.
type write struct {
	off  int64
	data []byte
}

// testWrites are 4 KiB-aligned writes (O_DIRECT) past the first 64 KiB
// (where `rbd bench` writes): small, large (more than one journal event),
// and one overwriting part of an earlier one (journal order must win).
func testWrites(seed uint64) []write {
	rng := rand.New(rand.NewPCG(seed, 7))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	return []write{
		{1 << 20, random(16 << 10)},
		{3<<20 + 4096, random(64 << 10)},
		{7 << 20, random(300 << 10)},
		{1<<20 + 8192, random(4096)}, // overwrites part of the first
		{imageSize - 8192, random(8192)},
	}
}

// content is an image of imageSize after ws.
func content(ws []write) []byte {
	b := make([]byte, imageSize)
	for _, w := range ws {
		copy(b[w.off:], w.data)
	}
	return b
}

// writeDevice writes ws through the published device with O_DIRECT, then
// fsyncs: every write is acknowledged and durable (in the journal).
func writeDevice(t *testing.T, path string, ws []write) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, w := range ws {
		buf := kerneltest.AlignedBuf(len(w.data))
		copy(buf, w.data)
		if _, err := f.WriteAt(buf, w.off); err != nil {
			t.Fatalf("write at %d: %v", w.off, err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// export returns the image's content as `rbd export` writes it.
func (e *cephEnv) export(image string) []byte {
	e.t.Helper()
	p := filepath.Join(e.t.TempDir(), "export")
	e.rbd("export", "--no-progress", cephtest.PoolName+"/"+image, p)
	b, err := os.ReadFile(p)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// firstDiff describes where a and b first differ ("" if equal).
func firstDiff(a, b []byte) string {
	if bytes.Equal(a, b) {
		return ""
	}
	if len(a) != len(b) {
		return fmt.Sprintf("sizes %d and %d", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			return fmt.Sprintf("first difference at byte %d (%#x vs %#x)", i, a[i], b[i])
		}
	}
	return ""
}

// journalEvent is an entry of `rbd journal inspect --verbose`.
type journalEvent struct {
	Tag    int
	Type   string `json:"event_type"`
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
}

var (
	inspectEntry   = regexp.MustCompile(`(?m)^Entry: tag_id=(\d+), commit_tid=\d+\n(\{[^}]*\})`)
	inspectSummary = regexp.MustCompile(`(\d+) entries inspected, (\d+) errors`)
)

// inspect runs `rbd journal inspect --verbose`: the entries past the
// commit position, and the number of errors it reports.
func (e *cephEnv) inspect(image string) ([]journalEvent, int, string) {
	e.t.Helper()
	out := e.rbd("journal", "inspect", "--verbose", "--pool", cephtest.PoolName, "--image", image)
	m := inspectSummary.FindStringSubmatch(out)
	if m == nil {
		e.t.Fatalf("rbd journal inspect printed no summary:\n%s", out)
	}
	n, _ := strconv.Atoi(m[1])
	errs, _ := strconv.Atoi(m[2])
	var evs []journalEvent
	for _, em := range inspectEntry.FindAllStringSubmatch(out, -1) {
		var ev journalEvent
		if err := json.Unmarshal([]byte(em[2]), &ev); err != nil {
			e.t.Fatalf("entry %q: %v", em[2], err)
		}
		ev.Tag, _ = strconv.Atoi(em[1])
		evs = append(evs, ev)
	}
	if len(evs) != n {
		e.t.Fatalf("parsed %d of %d entries of rbd journal inspect:\n%s", len(evs), n, out)
	}
	return evs, errs, out
}

// journaled checks that the AioWrite events cover every byte of ws.
func journaled(t *testing.T, evs []journalEvent, ws []write) {
	t.Helper()
	for _, w := range ws {
		for off := w.off; off < w.off+int64(len(w.data)); off += 512 {
			covered := false
			for _, ev := range evs {
				if ev.Type == "AioWrite" && ev.Offset <= off && off < ev.Offset+ev.Length {
					covered = true
					break
				}
			}
			if !covered {
				t.Fatalf("no AioWrite entry covers byte %d of the write at %d (+%d)", off, w.off, len(w.data))
			}
		}
	}
}

func summarize(evs []journalEvent) string {
	count := map[string]int{}
	tags := map[int]bool{}
	for _, ev := range evs {
		count[ev.Type]++
		tags[ev.Tag] = true
	}
	return fmt.Sprintf("%v in tags %v", count, keys(tags))
}

func keys(m map[int]bool) []int {
	var ks []int
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// stageWriteKill stages image on a plugin that keeps its commit position in
// memory for an hour (--journal-commit-age 1h: it moves only at open), writes
// ws through the device (fsync), and SIGKILLs the plugin: the journal holds
// every write past the commit position.
// It returns the dead plugin's client address (from its staging record).
func (e *cephEnv) stageWriteKill(image string, ws []write) string {
	e.t.Helper()
	p := e.startPlugin("node-"+image, "--journal-commit-age", "1h")
	target := p.stage(image)
	writeDevice(e.t, target, ws)
	p.kill()
	e.t.Logf("wrote %d extents through the device, fsync, SIGKILL the node plugin", len(ws))
	recs, _ := filepath.Glob(filepath.Join(p.stateDir, "volumes", "*.json"))
	var rec struct{ Owner string }
	if len(recs) == 1 {
		if b, err := os.ReadFile(recs[0]); err == nil {
			_ = json.Unmarshal(b, &rec)
		}
	}
	if rec.Owner == "" {
		e.t.Fatalf("no staging record with the owner's address in %s", p.stateDir)
	}
	return rec.Owner
}

// fence blocklists a dead client (as an operator fencing a dead node
// would), which drops its watches at once instead of after the OSD's 30 s
// timeout; the entry is removed at the end of the test.
func (e *cephEnv) fence(addr string) {
	e.t.Helper()
	if _, err := e.cli("ceph", "osd", "blocklist", "add", addr); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _, _ = e.cli("ceph", "osd", "blocklist", "rm", addr) })
}

// TestCephOursToLibrbd (ours → Ceph): data written through our journaled
// device, then the node plugin SIGKILLed before its commit position moved.
// `rbd journal inspect --verbose` lists our entries with 0 errors. To see
// librbd's replay at work, the image's data objects are then removed (as
// if the crash had come between journal and image writes); librbd opens
// the image for write (`rbd bench`), breaking the dead plugin's lock and
// replaying our journal, and `rbd export` equals what we wrote.
func TestCephOursToLibrbd(t *testing.T) {
	e := newCephEnv(t)
	image := e.createImage("csirbdj-ours-to-librbd")
	ws := testWrites(1)
	e.stageWriteKill(image, ws)

	evs, errs, out := e.inspect(image)
	t.Logf("rbd journal inspect --verbose: %d entries, %d errors: %s", len(evs), errs, summarize(evs))
	if errs != 0 || len(evs) == 0 {
		t.Fatalf("rbd journal inspect: %d entries, %d errors:\n%s", len(evs), errs, out)
	}
	journaled(t, evs, ws)

	var info struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(e.rbd("info", "--format", "json", cephtest.PoolName+"/"+image)), &info); err != nil || info.ID == "" {
		t.Fatalf("rbd info: %v", err)
	}
	objs, err := e.cli("rados", "-p", cephtest.PoolName, "ls")
	if err != nil {
		t.Fatal(err)
	}
	var removed int
	for _, o := range strings.Fields(objs) {
		if strings.HasPrefix(o, "rbd_data."+info.ID+".") {
			if _, err := e.cli("rados", "-p", cephtest.PoolName, "rm", o); err != nil {
				t.Fatal(err)
			}
			removed++
		}
	}
	if got := e.export(image); !bytes.Equal(got, make([]byte, imageSize)) {
		t.Fatalf("after removing %d data objects the image is not blank", removed)
	}
	t.Logf("removed the image's %d data objects: only the journal has the data now", removed)

	start := time.Now()
	bench := e.rbd("bench", "--io-type", "write", "--io-size", "4096", "--io-total", "4096", "--io-pattern", "seq", cephtest.PoolName+"/"+image)
	t.Logf("rbd bench --io-type write (librbd: break the dead plugin's lock, replay, write) took %v: %s", time.Since(start).Round(time.Millisecond), lastLine(bench))

	got := e.export(image)
	want := content(ws)
	copy(want[:4096], got[:4096]) // what rbd bench wrote
	if d := firstDiff(got, want); d != "" {
		t.Fatalf("rbd export after librbd's replay differs from what we wrote: %s", d)
	}
	t.Logf("rbd export equals the %d writes: librbd replayed our journal", len(ws))
	if evs, _, _ := e.inspect(image); len(evs) != 0 {
		t.Errorf("after librbd's replay and close, rbd journal inspect still lists %d entries", len(evs))
	}
	t.Logf("rbd journal status after librbd:\n%s", e.rbd("journal", "status", "--pool", cephtest.PoolName, "--image", image))
}

// TestCephJournalExportImport: `rbd journal export` of a journal we wrote
// (left uncommitted by a SIGKILL), `rbd journal import` into another image,
// and our replay of that image (NodeStageVolume) gives the same content.
func TestCephJournalExportImport(t *testing.T) {
	e := newCephEnv(t)
	src := e.createImage("csirbdj-export-src")
	ws := testWrites(2)
	e.fence(e.stageWriteKill(src, ws))

	file := filepath.Join(e.dir, "journal.export")
	out := e.rbd("journal", "export", "--pool", cephtest.PoolName, "--image", src, "--path", file)
	t.Logf("rbd journal export: %s", lastLine(out))
	dst := e.createImage("csirbdj-import-dst")
	out = e.rbd("journal", "import", "--dest-pool", cephtest.PoolName, "--dest", dst, "--path", file)
	t.Logf("rbd journal import: %s", lastLine(out))
	evs, errs, _ := e.inspect(dst)
	t.Logf("the imported journal: %d entries, %d errors: %s", len(evs), errs, summarize(evs))
	journaled(t, evs, ws)

	p := e.startPlugin("node-import")
	target := p.stage(dst)
	if d := firstDiff(kerneltest.ReadDirect(t, target, 0, imageSize), content(ws)); d != "" {
		t.Fatalf("our replay of the imported journal: the device differs from what was written to %s: %s", src, d)
	}
	p.unstage(dst)
	if d := firstDiff(e.export(dst), content(ws)); d != "" {
		t.Fatalf("rbd export of %s after our replay: %s", dst, d)
	}
	t.Logf("NodeStageVolume of %s replayed the imported journal: device and rbd export equal the %d writes made to %s", dst, len(ws), src)
}

// TestCephRestartReserves: while the volume is staged the commit position
// `rbd journal status` shows follows the writes (nothing left for `rbd
// journal inspect` after the commit age); after a SIGKILL the restarted
// plugin re-serves the volume with its default credentials (the request's
// secrets are not stored anywhere), and after NodeUnstageVolume the journal
// is fully committed.
func TestCephRestartReserves(t *testing.T) {
	e := newCephEnv(t)
	image := e.createImage("csirbdj-restart")
	p := e.startPlugin("node", "--ceph-credentials-dir", e.credsDir)
	target := p.stage(image)
	ws := testWrites(3)
	writeDevice(t, target, ws)

	deadline := time.Now().Add(10 * time.Second) // commit age 1 s
	for {
		evs, _, _ := e.inspect(image)
		if len(evs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after the writes, %d entries are still past the commit position", len(evs))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("while staged, the commit position caught up with the writes:\n%s", e.rbd("journal", "status", "--pool", cephtest.PoolName, "--image", image))

	// No staging record holds a key.
	recs, _ := filepath.Glob(filepath.Join(p.stateDir, "volumes", "*.json"))
	for _, r := range recs {
		if b, _ := os.ReadFile(r); bytes.Contains(b, []byte(e.secrets[storage.SecretUserKey])) {
			t.Errorf("staging record %s holds the key", r)
		}
	}

	p.kill()
	start := time.Now()
	p = e.startPlugin("node", "--ceph-credentials-dir", e.credsDir)
	t.Logf("restarted plugin ready (volume re-served with the default credentials) after %v", time.Since(start).Round(time.Millisecond))
	if d := firstDiff(kerneltest.ReadDirect(t, target, 0, imageSize), content(ws)); d != "" {
		t.Fatalf("after the restart the device differs: %s", d)
	}
	more := []write{{5 << 20, bytes.Repeat([]byte{0x5a}, 8192)}}
	writeDevice(t, target, more)
	p.unstage(image)
	if evs, _, out := e.inspect(image); len(evs) != 0 {
		t.Fatalf("after unstage %d entries are past the commit position:\n%s", len(evs), out)
	}
	if d := firstDiff(e.export(image), content(append(ws, more...))); d != "" {
		t.Fatalf("rbd export after unstage: %s", d)
	}
	t.Logf("after unstage: journal fully committed, rbd export equals every write:\n%s", e.rbd("journal", "status", "--pool", cephtest.PoolName, "--image", image))
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
