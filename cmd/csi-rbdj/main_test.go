package main

import (
	"bufio"
	"context"
	"crypto/rand"
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
	"github.com/csi-rbdj/csi-rbdj/pkg/atomicfile"
	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop"
	"github.com/csi-rbdj/csi-rbdj/pkg/driver"
	"github.com/csi-rbdj/csi-rbdj/pkg/fsprobe"
	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestMain lets the test binary act as the csi-rbdj command: the tests run
// the node plugin as a child process (`serve --mode node`) so that they can
// SIGKILL it.
func TestMain(m *testing.M) {
	if os.Getenv("CSI_RBDJ_TEST_AS_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// forEachFS runs f as a subtest for each filesystem the node plugin
// formats a volume with.
func forEachFS(t *testing.T, f func(t *testing.T, fs string)) {
	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) { f(t, fs) })
	}
}

// env is a controller in-process and a node plugin child process sharing a
// local cluster directory.
type env struct {
	t     *testing.T
	dir   string
	ctrl  csi.ControllerClient
	node  csi.NodeClient
	ident csi.IdentityClient
	child *child
	log   *os.File
	extra []string // more flags for the node plugin (holder_test.go)
}

func newEnv(t *testing.T) *env {
	kerneltest.RequireRoot(t)
	e := &env{t: t, dir: t.TempDir()}
	st, err := storage.OpenLocal(storage.LocalOptions{Dir: e.path("cluster"), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	d, err := driver.New(driver.Options{Mode: driver.ModeController, Backend: st})
	if err != nil {
		t.Fatal(err)
	}
	l, err := driver.Listen("unix://" + e.path("controller.sock"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Serve(context.Background(), l) }()
	cc := e.dial("controller.sock")
	e.ctrl = csi.NewControllerClient(cc)
	if e.log, err = os.Create(e.path("node.log")); err != nil {
		t.Fatal(err)
	}
	nc := e.dial("node.sock")
	e.node, e.ident = csi.NewNodeClient(nc), csi.NewIdentityClient(nc)
	t.Cleanup(func() {
		e.stopNode()
		cc.Close()
		nc.Close()
		d.Stop()
		<-done
		st.Close()
		e.cleanupMounts()
		if t.Failed() {
			b, _ := os.ReadFile(e.path("node.log"))
			t.Logf("node plugin log:\n%s", tail(string(b), 60))
		}
		e.log.Close()
	})
	return e
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (e *env) path(p ...string) string { return filepath.Join(append([]string{e.dir}, p...)...) }

func (e *env) dial(sock string) *grpc.ClientConn {
	c, err := dial(e.path(sock))
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// startNode starts the node plugin child and waits until Probe says ready.
func (e *env) startNode() {
	e.t.Helper()
	e.child = startChild(e.t, e.log, append([]string{"serve", "--mode", "node", "--endpoint", "unix://" + e.path("node.sock"),
		"--backend", "local", "--local-dir", e.path("cluster"), "--local-no-sync", "--state-dir", e.path("node-state"),
		"--node-id", "test-node", "--request-timeout", "20s", "-v", "2"}, e.extra...)...)
	e.child.waitReady(e.t, e.ident, func() string {
		b, _ := os.ReadFile(e.path("node.log"))
		return tail(string(b), 40)
	})
}

// killNode SIGKILLs the node plugin (the crash under test).
func (e *env) killNode() { e.child.kill() }

// stopNode stops the node plugin with SIGTERM (SIGKILL after a minute).
func (e *env) stopNode() { e.child.stop(time.Minute) }

// child is a child process running the test binary as csi-rbdj (TestMain).
type child struct {
	cmd    *exec.Cmd
	exited chan error // Wait's result
	done   bool       // it exited and was waited for
}

// startChild runs `csi-rbdj args...` with its output to out; the kernel
// SIGKILLs it if the test process dies.
func startChild(t *testing.T, out *os.File, args ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "CSI_RBDJ_TEST_AS_MAIN=1")
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, exited: make(chan error, 1)}
	go func() { c.exited <- cmd.Wait() }() // ends with the child, which kill and stop end
	return c
}

// waitReady waits (a minute at most) until Probe through ident says
// ready; it fails the test if the child exits first. logTail gives the
// end of the child's log for the failure.
func (c *child) waitReady(t *testing.T, ident csi.IdentityClient, logTail func() string) {
	t.Helper()
	err := probeUntilReady(context.Background(), ident, c.exited, time.Minute)
	if errors.Is(err, errPluginExited) {
		c.done = true
	}
	if err != nil {
		t.Fatalf("node plugin %v\n%s", err, logTail())
	}
}

// kill SIGKILLs the child and waits for it; nothing once it ended.
func (c *child) kill() {
	if c == nil || c.done {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.exited
	c.done = true
}

// stop SIGTERMs the child and waits for it, SIGKILLing it after grace;
// nothing once it ended.
func (c *child) stop(grace time.Duration) {
	if c == nil || c.done {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(grace):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
	c.done = true
}

// cleanupMounts removes whatever a failed test left: mounts under the
// directory (deepest first), then the devices' FUSE mounts and loop devices.
func (e *env) cleanupMounts() {
	ms := fsprobe.MountsUnder(e.dir)
	for i := len(ms) - 1; i >= 0; i-- {
		if !strings.Contains(ms[i], "/node-state/fuse/") {
			e.t.Logf("cleanup: unmounting leftover %s", ms[i])
			_ = unix.Unmount(ms[i], unix.MNT_DETACH)
		}
	}
	ents, _ := os.ReadDir(e.path("node-state", "fuse"))
	for _, ent := range ents {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := fuseloop.Cleanup(ctx, e.path("node-state", "fuse"), ent.Name()); err != nil {
			e.t.Logf("cleanup %s: %v", ent.Name(), err)
		}
		cancel()
	}
	if left := fsprobe.MountsUnder(e.dir); len(left) > 0 {
		e.t.Errorf("mounts left: %v", left)
	}
	if left := loopsUnder(e.dir); len(left) > 0 {
		e.t.Errorf("loop devices left: %v", left)
	}
}

func (e *env) must(err error) {
	e.t.Helper()
	if err != nil {
		e.t.Fatal(err)
	}
}

// blockCap is a single-node-writer Block capability.
var blockCap = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

// mountCap is a single-node-writer Mount capability with filesystem fs.
func mountCap(fs string) *csi.VolumeCapability {
	return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
}

// testVolume is a volume a test created through the controller and staged
// (and published) through the node plugin.
type testVolume struct {
	id, staging string
	vc          *csi.VolumeCapability
	vctx        map[string]string // the volume context CreateVolume returned
	targets     []string          // where it is published
}

// createStaged creates volume name (size bytes, params) and stages it at
// staging with vc, passing the volume context CreateVolume returned, as the
// CO does.
func (e *env) createStaged(ctx context.Context, name string, vc *csi.VolumeCapability, size int64, params map[string]string, staging string) *testVolume {
	e.t.Helper()
	vol, err := e.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{vc},
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}, Parameters: params})
	e.must(err)
	v := &testVolume{id: vol.GetVolume().GetVolumeId(), staging: staging, vc: vc, vctx: vol.GetVolume().GetVolumeContext()}
	e.must(os.MkdirAll(staging, 0o755))
	_, err = e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging, VolumeCapability: vc, VolumeContext: v.vctx})
	e.must(err)
	return v
}

// publish publishes v at target (read-only if ro).
func (e *env) publish(ctx context.Context, v *testVolume, target string, ro bool) {
	e.t.Helper()
	_, err := e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging, TargetPath: target,
		VolumeCapability: v.vc, VolumeContext: v.vctx, Readonly: ro})
	e.must(err)
	v.targets = append(v.targets, target)
}

// createPublished creates and stages a volume (createStaged, staged at
// e.path("staging")) and publishes it at target.
func (e *env) createPublished(ctx context.Context, name string, vc *csi.VolumeCapability, size int64, params map[string]string, target string) *testVolume {
	e.t.Helper()
	v := e.createStaged(ctx, name, vc, size, params, e.path("staging"))
	e.publish(ctx, v, target, false)
	return v
}

// unstage unpublishes v from its targets and unstages it.
func (e *env) unstage(ctx context.Context, v *testVolume) {
	e.t.Helper()
	for _, target := range v.targets {
		_, err := e.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: target})
		e.must(err)
	}
	v.targets = nil
	_, err := e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging})
	e.must(err)
}

// deleteVolume deletes v through the controller.
func (e *env) deleteVolume(ctx context.Context, v *testVolume) {
	e.t.Helper()
	_, err := e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id})
	e.must(err)
}

// teardown unpublishes, unstages and deletes v, then checks that the
// kernel released the test's loop devices.
func (e *env) teardown(ctx context.Context, v *testVolume) {
	e.t.Helper()
	e.unstage(ctx, v)
	e.deleteVolume(ctx, v)
	waitNoLoops(e.t, e.dir)
}

// TestRestartFilesystem stages and publishes a filesystem volume (at a
// read-write and a read-only target), writes files, SIGKILLs the node
// plugin, starts it again and checks that the files are readable at the
// publish paths, what a file descriptor opened before the kill sees, and
// that the volume unstages and deletes cleanly.
func TestRestartFilesystem(t *testing.T) {
	forEachFS(t, testRestartFilesystem)
}

func testRestartFilesystem(t *testing.T, fs string) {
	e := newEnv(t)
	e.startNode()
	ctx := context.Background()
	vc := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs, MountFlags: []string{"noatime"}}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER}}
	staging, rw, ro := e.path("staging"), e.path("pods", "a", "vol"), e.path("pods", "b", "vol")
	v := e.createStaged(ctx, "restart-"+fs, vc, 320<<20, map[string]string{"ackPolicy": "journaled"}, staging)
	id := v.id
	if opts := mountOptions(staging); !strings.Contains(opts, "noatime") {
		t.Errorf("mount flags not honoured: staging mounted with %q", opts)
	}
	e.publish(ctx, v, rw, false)
	e.publish(ctx, v, ro, true)
	want := map[string][]byte{}
	for i := range 8 {
		b := make([]byte, 64<<10+i*4096)
		rand.Read(b)
		name := fmt.Sprintf("f%d", i)
		e.must(fsprobe.WriteSync(filepath.Join(rw, name), b))
		want[name] = b
	}
	e.must(atomicfile.SyncDir(rw))
	oldFd, err := os.Open(filepath.Join(rw, "f0"))
	e.must(err)
	defer oldFd.Close()
	oldDev := mountSource(staging)

	// DeleteVolume while staged is refused.
	_, err = e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "unstage it first") {
		t.Errorf("DeleteVolume of a staged volume: %v, want FailedPrecondition", err)
	}

	e.killNode()
	// The gap: a new file cannot be made durable.
	if err := fsprobe.WriteSync(filepath.Join(rw, "gap"), []byte("lost")); err == nil {
		t.Errorf("fsync during the gap succeeded")
	} else {
		t.Logf("during the gap: create+write+fsync: %v", err)
	}
	start := time.Now()
	e.startNode()
	t.Logf("re-served in %v", time.Since(start))

	newDev := mountSource(staging)
	if newDev == oldDev || newDev == "?" {
		t.Errorf("staging still mounted from %s (was %s)", newDev, oldDev)
	}
	for _, dir := range []string{rw, ro, staging} {
		for name, b := range want {
			got, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatalf("after restart, read %s: %v", filepath.Join(dir, name), err)
			}
			if string(got) != string(b) {
				t.Fatalf("after restart, %s differs", filepath.Join(dir, name))
			}
		}
	}
	if _, err := os.Stat(filepath.Join(rw, "gap")); err == nil {
		t.Logf("the file created during the gap exists after the restart")
	}
	if err := fsprobe.WriteSync(filepath.Join(ro, "x"), []byte("x")); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write at the read-only target after restart: %v, want EROFS", err)
	}
	e.must(fsprobe.WriteSync(filepath.Join(rw, "after"), []byte("after restart")))

	// The descriptor opened before the kill still points at the old, dead
	// filesystem: cached pages read, anything else fails.
	buf := make([]byte, 4096)
	_, cachedErr := oldFd.ReadAt(buf, 0)
	_ = unix.Fadvise(int(oldFd.Fd()), 0, 0, unix.FADV_DONTNEED)
	_, uncachedErr := oldFd.ReadAt(buf, 32<<10)
	t.Logf("fd opened before the kill: cached read: %v; uncached read: %v", cachedErr, uncachedErr)
	if uncachedErr == nil {
		t.Errorf("an uncached read through the pre-crash fd succeeded; the old filesystem should be dead")
	}
	oldFd.Close()

	st, err := e.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: rw})
	e.must(err)
	if st.GetVolumeCondition().GetAbnormal() || len(st.GetUsage()) != 2 {
		t.Errorf("stats after restart: %v", st)
	}
	e.teardown(ctx, v)
	for _, p := range []string{rw, ro} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("target %s not removed: %v", p, err)
		}
	}
}

// TestRestartBlock does the same for a Block volume: data written to the
// published device node survives the kill and is read back through the
// re-bound target.
func TestRestartBlock(t *testing.T) {
	e := newEnv(t)
	e.startNode()
	ctx := context.Background()
	target := e.path("pods", "a", "dev")
	v := e.createPublished(ctx, "restart-block", blockCap, 16<<20, nil, target)
	data := make([]byte, 1<<20)
	rand.Read(data)
	f, err := os.OpenFile(target, os.O_RDWR, 0)
	e.must(err)
	_, err = f.WriteAt(data, 3<<20)
	e.must(err)
	e.must(f.Sync())
	f.Close()

	e.killNode()
	e.startNode()

	f, err = os.OpenFile(target, os.O_RDONLY|syscall.O_DIRECT, 0)
	e.must(err)
	got := kerneltest.AlignedBuf(len(data))
	_, err = f.ReadAt(got, 3<<20)
	f.Close()
	e.must(err)
	if string(got) != string(data) {
		t.Fatal("block data differs after the restart")
	}
	// A graceful stop while the volume is staged (a DaemonSet rollout):
	// the plugin drains and exits promptly, the next one re-serves.
	start := time.Now()
	e.stopNode()
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("SIGTERM with a staged volume took %v", d)
	}
	e.startNode()
	f, err = os.OpenFile(target, os.O_RDONLY|syscall.O_DIRECT, 0)
	e.must(err)
	_, err = f.ReadAt(got, 3<<20)
	f.Close()
	e.must(err)
	if string(got) != string(data) {
		t.Fatal("block data differs after a graceful restart")
	}
	st, err := e.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.id, VolumePath: target})
	e.must(err)
	if u := st.GetUsage(); len(u) != 1 || u[0].GetTotal() != 16<<20 || st.GetVolumeCondition().GetAbnormal() {
		t.Errorf("block stats: %v", st)
	}
	e.teardown(ctx, v)
}

// waitNoLoops waits for the kernel to release loop devices of dir (a
// detach the kernel deferred completes when the last opener closes).
func waitNoLoops(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(loopsUnder(dir)) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if left := loopsUnder(dir); len(left) > 0 {
		t.Errorf("loop devices left: %v", left)
	}
}

func mountOptions(path string) string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	opts := ""
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 5 && fields[4] == path {
			opts = fields[5]
		}
	}
	return opts
}
