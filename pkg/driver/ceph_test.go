//go:build ceph && pacific

package driver_test

// The driver on a real Ceph cluster (hack/ceph-up.sh's): csi-sanity with
// the ceph backend, librbd's crashed journal replayed by NodeStageVolume,
// and the error of each bad input.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/testproc"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestCephSanity runs csi-test's sanity suite against the driver with the
// ceph backend (mode all, in-process, real staging), for the mount and the
// block access types. Requests carry the secrets of a cephx user with
// `profile rbd` (sanity's secrets file); the default credentials are a
// read-only user's, which serve only ListVolumes, GetCapacity and Probe:
// had the driver used them where a request has secrets, creating a volume
// would fail.
func TestCephSanity(t *testing.T) {
	kerneltest.RequireRoot(t)
	newCephFixture(t) // no cluster: skip (or fail) here, not in the children
	runSanityChildren(t, "TestCephSanityChild")
}

// TestCephSanityChild is the child process of TestCephSanity.
func TestCephSanityChild(t *testing.T) {
	at := testproc.ChildEnv(t, "CSI_RBDJ_SANITY_ACCESS_TYPE", "child process of TestCephSanity")
	f := newCephFixture(t)
	dir := t.TempDir()
	cfg := sanityConfig(t, dir, openCeph(t, f.configFile, credentialsDir(t, f.ro)), at)
	cfg.TestVolumeParameters = map[string]string{
		volume.ParamClusterID: cephTestCluster, volume.ParamPool: cephtest.PoolName,
		volume.ParamJournalSplayWidth: "2", volume.ParamJournalOrder: "20",
		volume.ParamAckPolicy: "journaled",
	}
	if at == "block" {
		cfg.TestVolumeParameters[volume.ParamAckPolicy] = "applied"
	}
	var yaml strings.Builder
	for _, k := range []string{"CreateVolumeSecret", "DeleteVolumeSecret", "NodeStageVolumeSecret", "ControllerValidateVolumeCapabilitiesSecret", "ControllerExpandVolumeSecret", "CreateSnapshotSecret", "DeleteSnapshotSecret", "ListSnapshotsSecret"} {
		fmt.Fprintf(&yaml, "%s:\n  %s: %q\n  %s: %q\n", k, storage.SecretUserID, f.rw.User, storage.SecretUserKey, f.rw.Key)
	}
	cfg.SecretsFile = filepath.Join(dir, "secrets.yaml")
	if err := os.WriteFile(cfg.SecretsFile, []byte(yaml.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	sanity.Test(t, cfg)
}

// librbdWrite is one write of TestCephLibrbdCrashWriter.
type librbdWrite struct {
	off  int64
	data []byte
}

// librbdWrites are the writes librbd makes before it crashes: aligned and
// unaligned, one larger than librbd's 16 KiB event payload (two journal
// events), a flush between them (librbdCrashFlushAfter).
func librbdWrites() []librbdWrite {
	rng := rand.New(rand.NewPCG(5, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	return []librbdWrite{
		{0, bytes.Repeat([]byte{0x11}, 4096)},
		{1<<20 + 512, random(3000)},
		{8 << 20, random(20480)},
		{16 << 20, bytes.Repeat([]byte{0x44}, 512)},
		{24<<20 - 4096, random(8192)},
	}
}

const librbdCrashFlushAfter = 2 // writes before the flush

// TestCephLibrbdCrashWriter is the child of TestCephStageReplaysLibrbdCrash:
// librbd opens the image, writes librbdWrites and exits without closing it
// (a crash, as far as the journal is concerned: its commit position never
// moves, so every entry stays to be replayed).
func TestCephLibrbdCrashWriter(t *testing.T) {
	name := testproc.ChildEnv(t, "CSI_RBDJ_LIBRBD_CRASH_IMAGE", "child process of TestCephStageReplaysLibrbdCrash")
	img, pool := cephtest.OpenUncached(t, name) // the crash loses no acked write
	for i, w := range librbdWrites() {
		if i == librbdCrashFlushAfter {
			if err := img.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := img.WriteAt(w.data, w.off); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Println("WRITTEN", pool.Client().Addr)
	os.Exit(0) // without closing the image
}

// TestCephStageReplaysLibrbdCrash (Ceph → ours): librbd writes known data
// to a journaled image and its process exits without closing it, leaving
// the entries in the journal uncommitted; NodeStageVolume of a static
// volume id for that image (Block) takes the dead writer's lock (fencing
// it), replays the journal, and the published device reads back what
// librbd wrote. After NodeUnstageVolume the journal's commit position (as
// `rbd journal status` shows it) covers our epoch and `rbd export` has the
// data.
func TestCephStageReplaysLibrbdCrash(t *testing.T) {
	kerneltest.RequireRoot(t)
	f := newCephFixture(t)
	ctx := context.Background()
	name := uniqueName("csirbdj-librbd-crash")
	const size = 32 << 20
	f.createImage(t, name, "layering,exclusive-lock,journaling", size>>20)

	out, err := testproc.Command("^TestCephLibrbdCrashWriter$", "CSI_RBDJ_LIBRBD_CRASH_IMAGE="+name).CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("WRITTEN ")) {
		t.Fatalf("librbd writer: %v\n%s", err, out)
	}
	addr := strings.TrimSpace(strings.SplitN(string(out[bytes.Index(out, []byte("WRITTEN "))+8:]), "\n", 2)[0])
	t.Cleanup(func() { _, _ = cephCLI(ctx, f.conf, "ceph", "osd", "blocklist", "rm", addr) })
	entries, errs, inspect := f.journalInspect(t, name)
	t.Logf("librbd (%s) exited without closing the image; rbd journal inspect: %s", addr, lastLine(inspect))
	if errs != 0 || entries < len(librbdWrites()) {
		t.Fatalf("librbd left %d journal entries (%d errors), want at least %d:\n%s", entries, errs, len(librbdWrites()), inspect)
	}

	_, node, dir := serveCeph(t, f.configFile, "")
	id := staticVolumeID(name)
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")
	if err := os.Mkdir(staging, 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		VolumeCapability: blockCap, Secrets: secrets(f.rw)}); err != nil {
		t.Fatal(err)
	}
	t.Logf("NodeStageVolume (fence the dead librbd client, break its lock, replay) took %v", time.Since(start).Round(time.Millisecond))
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: blockCap}); err != nil {
		t.Fatal(err)
	}
	dev, err := os.OpenFile(target, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range librbdWrites() {
		lo, hi := w.off&^4095, (w.off+int64(len(w.data))+4095)&^4095
		buf := alignedBytes(int(hi - lo))
		if _, err := dev.ReadAt(buf, lo); err != nil {
			dev.Close()
			t.Fatalf("read the device at %d: %v", lo, err)
		}
		if got := buf[w.off-lo : w.off-lo+int64(len(w.data))]; !bytes.Equal(got, w.data) {
			dev.Close()
			t.Fatalf("device at %d: librbd's write not replayed (got %x..., want %x...)", w.off, got[:8], w.data[:8])
		}
	}
	dev.Close()
	t.Logf("the device reads back all %d writes librbd journaled before it crashed", len(librbdWrites()))

	if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	t.Logf("after unstage, rbd journal status:\n%s", f.rbd(t, "journal", "status", "--pool", cephtest.PoolName, "--image", name))
	want := make([]byte, size)
	for _, w := range librbdWrites() {
		copy(want[w.off:], w.data)
	}
	got := f.export(t, name)
	if !bytes.Equal(got, want) {
		t.Fatalf("rbd export differs from librbd's writes (%d vs %d bytes)", len(got), len(want))
	}
}

// export returns the content of image name (rbd export).
func (f *cephFixture) export(t *testing.T, name string) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "export")
	f.rbd(t, "export", "--no-progress", cephtest.PoolName+"/"+name, p)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// alignedBytes returns n bytes aligned for O_DIRECT.
func alignedBytes(n int) []byte {
	b := make([]byte, n+4096)
	off := (4096 - int(uintptr(unsafe.Pointer(&b[0]))&4095)) & 4095
	return b[off : off+n]
}

// --- Bad input: one test per case, each checking the code and that the
// message says what to fix (and never carries a key).

// wantStatus is expectCode returning the message.
func wantStatus(t *testing.T, what string, err error, code codes.Code, want ...string) string {
	t.Helper()
	expectCode(t, what, err, code, want...)
	return status.Convert(err).Message()
}

// serveCeph serves the driver on the Ceph backend with configFile and the
// default credentials in credsDir ("": none), in a new directory it returns.
func serveCeph(t *testing.T, configFile, credsDir string) (csi.ControllerClient, csi.NodeClient, string) {
	dir := t.TempDir()
	ctrl, node, _ := serveDriver(t, dir, openCeph(t, configFile, credsDir))
	return ctrl, node, dir
}

// serveCephAsRoot starts a test that stages volumes on the test cluster:
// it needs root, and serves the driver on the cluster (serveCeph, no default
// credentials).
func serveCephAsRoot(t *testing.T) (*cephFixture, csi.ControllerClient, csi.NodeClient, string) {
	t.Helper()
	kerneltest.RequireRoot(t)
	f := newCephFixture(t)
	ctrl, node, dir := serveCeph(t, f.configFile, "")
	return f, ctrl, node, dir
}

// serve serves the driver on the test cluster (serveCeph) and returns a
// staging directory in its directory.
func (f *cephFixture) serve(t *testing.T, configFile, credsDir string) (csi.ControllerClient, csi.NodeClient, string) {
	ctrl, node, dir := serveCeph(t, configFile, credsDir)
	staging := filepath.Join(dir, "staging")
	if err := os.Mkdir(staging, 0o755); err != nil {
		t.Fatal(err)
	}
	return ctrl, node, staging
}

func createReq(name string, params map[string]string, sec map[string]string) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{blockCap},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}, Parameters: params, Secrets: sec}
}

// TestCephErrorWrongPool: a StorageClass naming a pool the cluster does not
// have fails CreateVolume with InvalidArgument naming the pool and how to
// create it; a volume id in a missing pool is NotFound at NodeStage.
func TestCephErrorWrongPool(t *testing.T) {
	f := newCephFixture(t)
	ctrl, node, staging := f.serve(t, f.configFile, "")
	_, err := ctrl.CreateVolume(context.Background(), createReq("wrong-pool", map[string]string{volume.ParamPool: "no-such-pool"}, secrets(f.rw)))
	wantStatus(t, "CreateVolume in pool no-such-pool", err, codes.InvalidArgument, `"pool"`, `pool "no-such-pool"`, "ceph osd pool create no-such-pool")
	id := volume.VolumeID{Backend: storage.BackendCeph, Cluster: cephTestCluster, Pool: "no-such-pool", Image: "img"}.String()
	_, err = node.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		VolumeCapability: blockCap, Secrets: secrets(f.rw)})
	wantStatus(t, "NodeStageVolume in pool no-such-pool", err, codes.NotFound, `pool "no-such-pool"`)
}

// TestCephErrorJournalingOff: a StorageClass asking for a volume without
// journaling (imageFeatures without it, or journaling: "false") is refused
// with InvalidArgument: journaling is always on.
func TestCephErrorJournalingOff(t *testing.T) {
	f := newCephFixture(t)
	ctrl, _, _ := f.serve(t, f.configFile, "")
	for _, p := range []map[string]string{
		{volume.ParamImageFeatures: "layering,exclusive-lock"},
		{volume.ParamImageFeatures: "layering"},
		{volume.ParamJournaling: "false"},
	} {
		_, err := ctrl.CreateVolume(context.Background(), createReq("no-journal", p, secrets(f.rw)))
		wantStatus(t, fmt.Sprintf("CreateVolume with %v", p), err, codes.InvalidArgument, "journaling is always on")
	}
}

// TestCephErrorUnreachableMonitors: a cluster whose monitors do not answer
// fails CreateVolume and NodeStageVolume with Unavailable naming the
// monitors, after the connect timeout.
func TestCephErrorUnreachableMonitors(t *testing.T) {
	f := newCephFixture(t)
	// Nothing listens on port 9 of the loopback address.
	conf := writeCephConfig(t, map[string][]string{"unreachable": {"127.0.0.1:9"}})
	ctrl, node, staging := f.serve(t, conf, "")
	start := time.Now()
	_, err := ctrl.CreateVolume(context.Background(), createReq("unreachable", map[string]string{volume.ParamClusterID: "unreachable"}, secrets(f.rw)))
	wantStatus(t, "CreateVolume on unreachable monitors", err, codes.Unavailable, `"unreachable"`, "127.0.0.1:9", "monitors unreachable", "client."+cephUserRW)
	t.Logf("failed after %v (connect timeout 5s)", time.Since(start).Round(time.Millisecond))
	id := volume.VolumeID{Backend: storage.BackendCeph, Cluster: "unreachable", Pool: "rbd", Image: "img"}.String()
	_, err = node.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		VolumeCapability: blockCap, Secrets: secrets(f.rw)})
	wantStatus(t, "NodeStageVolume on unreachable monitors", err, codes.Unavailable, "127.0.0.1:9")
}

// TestCephErrorWrongKey: a key the cluster does not accept (well-formed but
// wrong, or not a cephx key at all) fails with Unauthenticated naming the
// user, never the key.
func TestCephErrorWrongKey(t *testing.T) {
	f := newCephFixture(t)
	ctrl, node, staging := f.serve(t, f.configFile, "")
	for _, key := range []string{wrongKey(t), "not-a-key"} {
		sec := map[string]string{storage.SecretUserID: cephUserRW, storage.SecretUserKey: key}
		_, err := ctrl.CreateVolume(context.Background(), createReq("wrong-key", nil, sec))
		msg := wantStatus(t, "CreateVolume with a wrong key", err, codes.Unauthenticated, "client."+cephUserRW, "userKey")
		if strings.Contains(msg, key) {
			t.Errorf("the error carries the key: %s", msg)
		}
		_, err = node.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: staticVolumeID("img"), StagingTargetPath: staging,
			VolumeCapability: blockCap, Secrets: sec})
		if msg := wantStatus(t, "NodeStageVolume with a wrong key", err, codes.Unauthenticated, "client."+cephUserRW); strings.Contains(msg, key) {
			t.Errorf("the error carries the key: %s", msg)
		}
	}
}

// TestCephErrorMissingSecrets: without secrets (and without default
// credentials) CreateVolume and NodeStageVolume fail with InvalidArgument
// naming the StorageClass parameters that supply them; ListVolumes, which
// has no secrets, names --ceph-credentials-dir.
func TestCephErrorMissingSecrets(t *testing.T) {
	f := newCephFixture(t)
	ctrl, node, staging := f.serve(t, f.configFile, "")
	_, err := ctrl.CreateVolume(context.Background(), createReq("no-secrets", nil, nil))
	wantStatus(t, "CreateVolume without secrets", err, codes.InvalidArgument,
		"csi.storage.k8s.io/provisioner-secret-name", "csi.storage.k8s.io/provisioner-secret-namespace", "userID", "userKey")
	_, err = node.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: staticVolumeID("img"), StagingTargetPath: staging,
		VolumeCapability: blockCap})
	wantStatus(t, "NodeStageVolume without secrets", err, codes.InvalidArgument, "csi.storage.k8s.io/node-stage-secret-name")
	_, err = ctrl.CreateVolume(context.Background(), createReq("half-secrets", nil, map[string]string{storage.SecretUserID: cephUserRW}))
	wantStatus(t, "CreateVolume with userID only", err, codes.InvalidArgument, `no "userKey"`)
	_, err = ctrl.ListVolumes(context.Background(), &csi.ListVolumesRequest{})
	wantStatus(t, "ListVolumes without default credentials", err, codes.FailedPrecondition, "--ceph-credentials-dir")
}

// TestCephErrorUnknownCluster: a clusterID the --ceph-config file does not
// list is InvalidArgument (StorageClass) naming the known ones.
func TestCephErrorUnknownCluster(t *testing.T) {
	f := newCephFixture(t)
	ctrl, _, _ := f.serve(t, f.configFile, "")
	_, err := ctrl.CreateVolume(context.Background(), createReq("unknown-cluster", map[string]string{volume.ParamClusterID: "nope"}, secrets(f.rw)))
	wantStatus(t, "CreateVolume in cluster nope", err, codes.InvalidArgument, `"clusterID"`, `"nope"`, cephTestCluster)
}

// TestCephErrorNotJournaled: a pre-provisioned image (static PV) without the
// journaling feature fails NodeStageVolume with FailedPrecondition naming
// the image and the command that enables journaling; after running that
// command the same NodeStageVolume succeeds.
func TestCephErrorNotJournaled(t *testing.T) {
	kerneltest.RequireRoot(t)
	f := newCephFixture(t)
	_, node, staging := f.serve(t, f.configFile, "")
	name := uniqueName("csirbdj-static-plain")
	f.createImage(t, name, "layering", 16)
	req := &csi.NodeStageVolumeRequest{VolumeId: staticVolumeID(name), StagingTargetPath: staging, VolumeCapability: blockCap, Secrets: secrets(f.rw)}
	_, err := node.NodeStageVolume(context.Background(), req)
	enable := fmt.Sprintf("rbd feature enable rbd/%s exclusive-lock journaling", name)
	wantStatus(t, "NodeStageVolume of an image without journaling", err, codes.FailedPrecondition, "rbd/"+name, "does not have the journaling feature", enable)

	// Follow the advice.
	f.rbd(t, strings.Fields(strings.TrimPrefix(enable, "rbd "))...)
	if _, err := node.NodeStageVolume(context.Background(), req); err != nil {
		t.Fatalf("NodeStageVolume after %q: %v", enable, err)
	}
	if _, err := node.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: req.VolumeId, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
}

// TestCephFencedConnectionReplaced: when the cluster fences this node's
// Ceph client (its address blocklisted, as a node taking a volume over
// does to an unresponsive owner), the volumes it served fail, and the
// cached connection is dropped: the next NodeStageVolume with the same
// credentials connects anew and works (at once: a stage that finds its
// connection fenced retries on a new one itself).
func TestCephFencedConnectionReplaced(t *testing.T) {
	f, _, node, dir := serveCephAsRoot(t)
	ctx := context.Background()
	a, b := uniqueName("csirbdj-fenced-a"), uniqueName("csirbdj-fenced-b")
	f.createImage(t, a, "layering,exclusive-lock,journaling", 16)
	f.createImage(t, b, "layering,exclusive-lock,journaling", 16)
	stage := func(name string) (string, error) {
		staging, target := filepath.Join(dir, "staging-"+name), filepath.Join(dir, "target-"+name)
		if err := os.MkdirAll(staging, 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: staticVolumeID(name), StagingTargetPath: staging,
			VolumeCapability: blockCap, Secrets: secrets(f.rw)}); err != nil {
			return "", err
		}
		_, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: staticVolumeID(name), StagingTargetPath: staging,
			TargetPath: target, VolumeCapability: blockCap})
		return target, err
	}
	unstage := func(name string) {
		if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: staticVolumeID(name), TargetPath: filepath.Join(dir, "target-"+name)}); err != nil {
			t.Fatal(err)
		}
		if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: staticVolumeID(name), StagingTargetPath: filepath.Join(dir, "staging-"+name)}); err != nil {
			t.Fatal(err)
		}
	}
	writeBlock := func(target string) error {
		dev, err := os.OpenFile(target, os.O_RDWR|syscall.O_DIRECT, 0)
		if err != nil {
			return err
		}
		defer dev.Close()
		buf := alignedBytes(4096)
		copy(buf, "fenced?")
		if _, err := dev.WriteAt(buf, 1<<20); err != nil {
			return err
		}
		return dev.Sync()
	}

	ta, err := stage(a)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeBlock(ta); err != nil {
		t.Fatal(err)
	}
	recs, _ := filepath.Glob(filepath.Join(dir, "node", "volumes", "*.json"))
	var rec struct{ Owner string }
	if len(recs) != 1 {
		t.Fatalf("staging records: %v", recs)
	}
	if raw, err := os.ReadFile(recs[0]); err != nil || json.Unmarshal(raw, &rec) != nil || rec.Owner == "" {
		t.Fatalf("staging record %s: %v", recs[0], err)
	}
	if out, err := cephCLI(ctx, f.conf, "ceph", "osd", "blocklist", "add", rec.Owner); err != nil {
		t.Fatalf("blocklist %s: %v\n%s", rec.Owner, err, out)
	}
	t.Cleanup(func() { _, _ = cephCLI(ctx, f.conf, "ceph", "osd", "blocklist", "rm", rec.Owner) })
	err = writeBlock(ta)
	t.Logf("write after the node's client %s was blocklisted: %v", rec.Owner, err)
	if err == nil {
		t.Fatal("a fenced client's write succeeded")
	}

	start := time.Now()
	tb, err := stage(b)
	if err != nil {
		t.Fatalf("NodeStageVolume of another volume after the fence: %v", err)
	}
	t.Logf("NodeStageVolume of another volume after the fence: ok after %v (on a new connection)", time.Since(start).Round(time.Millisecond))
	if err := writeBlock(tb); err != nil {
		t.Fatalf("write through the volume staged on the new connection: %v", err)
	}
	unstage(b)
	unstage(a)
}
