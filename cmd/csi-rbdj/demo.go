package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/atomicfile"
	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop"
	"github.com/csi-rbdj/csi-rbdj/pkg/driver"
	"github.com/csi-rbdj/csi-rbdj/pkg/fsprobe"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

// demo runs the driver's main job end to end on the local backend, the way
// kubelet and the external-provisioner would drive it, with the node plugin
// as a child process that is SIGKILLed while a filesystem is mounted on its
// device and then started again.
type demo struct {
	dir      string // everything lives here
	keep     bool
	fsType   string
	files    int
	fileSize int

	ctrl      *driver.Driver
	ctrlDone  chan error
	ctrlStore storage.Backend
	ctrlConn  *grpc.ClientConn
	nodeConn  *grpc.ClientConn
	node      *exec.Cmd
	nodeWait  chan error
	nodeLog   *os.File
	step      int

	// holder: run `csi-rbdj fuse-holder` next to the node plugin (the
	// default): the kill is then a pause, not an error.
	holder     bool
	holderCmd  *exec.Cmd
	holderWait chan error
	start      time.Time
}

func demoMain(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ExitOnError)
	d := &demo{}
	fs.StringVar(&d.dir, "dir", "", "work directory (default: a new temporary directory, removed at the end)")
	fs.BoolVar(&d.keep, "keep", false, "keep the work directory (logs, local cluster) at the end")
	fs.StringVar(&d.fsType, "fs", "ext4", "filesystem: ext4 or xfs (xfs needs a volume of at least 300 MiB)")
	fs.IntVar(&d.files, "files", 16, "files written before the crash")
	fs.BoolVar(&d.holder, "holder", true, "run a fuse-holder next to the node plugin, so the crash is a pause (false: the fallback, the pod sees EIO)")
	fs.IntVar(&d.fileSize, "file-size", 256<<10, "bytes per file")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("the demo needs root (loop devices, FUSE and mounts); run it as root")
	}
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			return fmt.Errorf("the demo needs %s: %w", dev, err)
		}
	}
	if !volume.IsSupportedFsType(d.fsType) {
		return fmt.Errorf("--fs %q: want ext4 or xfs", d.fsType)
	}
	if d.dir == "" {
		dir, err := os.MkdirTemp("", "csi-rbdj-demo-")
		if err != nil {
			return err
		}
		d.dir = dir
	} else if err := os.MkdirAll(d.dir, 0o755); err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()
	err := d.run(ctx)
	cleanupErr := d.cleanup()
	if err != nil {
		fmt.Printf("demo: FAILED: %v\n", err)
		fmt.Printf("demo: logs: %s\n", d.dir)
		return err
	}
	return cleanupErr
}

func signalContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	ch := make(chan os.Signal, 1)
	sigCtx, sigCancel := context.WithCancel(ctx)
	go func() { // owned by the returned cancel
		select {
		case <-ch:
			sigCancel()
		case <-sigCtx.Done():
		}
	}()
	signalNotify(ch)
	return sigCtx, func() { sigCancel(); cancel(); signalStop(ch) }
}

func (d *demo) path(p ...string) string { return filepath.Join(append([]string{d.dir}, p...)...) }

// do runs and prints one step with its duration.
func (d *demo) do(what string, f func() (string, error)) error {
	d.step++
	t := time.Now()
	detail, err := f()
	dur := time.Since(t)
	status := "ok"
	if err != nil {
		status = "FAILED"
	}
	line := fmt.Sprintf("demo: [%2d] %-52s %-6s %9s", d.step, what, status, dur.Round(time.Millisecond))
	if detail != "" {
		line += "  " + detail
	}
	fmt.Println(line)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func (d *demo) run(ctx context.Context) error {
	d.start = time.Now()
	fmt.Printf("demo: work directory %s (local cluster in cluster/, node plugin log in node.log)\n", d.dir)
	for _, p := range []string{"staging", "pods"} {
		if err := os.MkdirAll(d.path(p), 0o755); err != nil {
			return err
		}
	}
	var (
		volID   string
		staging = d.path("staging")
		target  = d.path("pods", "demo-pod", "volume")
		sums    = map[string][32]byte{}
		oldFd   *os.File
		file0   []byte // file-000's content (the pod fd writes into it)
		volCap  = &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: d.fsType}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		}
	)
	defer func() {
		if oldFd != nil {
			oldFd.Close()
		}
	}()
	if err := d.do("start controller (in-process)", d.startController); err != nil {
		return err
	}
	if d.holder {
		if err := d.do("start fuse-holder (child process)", d.startHolder); err != nil {
			return err
		}
	}
	if err := d.do("start node plugin (child process)", func() (string, error) { return d.startNode(ctx) }); err != nil {
		return err
	}
	ctrl := csi.NewControllerClient(d.ctrlConn)
	node := csi.NewNodeClient(d.nodeConn)

	size := int64(256 << 20)
	if d.fsType == "xfs" {
		size = 320 << 20
	}
	if err := d.do("CreateVolume", func() (string, error) {
		r, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
			Name:               "demo-volume",
			CapacityRange:      &csi.CapacityRange{RequiredBytes: size},
			VolumeCapabilities: []*csi.VolumeCapability{volCap},
			Parameters:         map[string]string{volume.ParamFsType: d.fsType, volume.ParamAckPolicy: volume.DefaultAckPolicy},
		})
		if err != nil {
			return "", err
		}
		volID = r.GetVolume().GetVolumeId()
		return fmt.Sprintf("%s, %d MiB", volID, r.GetVolume().GetCapacityBytes()>>20), nil
	}); err != nil {
		return err
	}
	volCtx := map[string]string{volume.CtxFsType: d.fsType, volume.CtxAckPolicy: volume.DefaultAckPolicy}
	stage := func() (string, error) {
		_, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: volID, StagingTargetPath: staging, VolumeCapability: volCap, VolumeContext: volCtx})
		if err != nil {
			return "", err
		}
		return "mounted " + mountSource(staging) + " at staging/", nil
	}
	publish := func() (string, error) {
		_, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: volID, StagingTargetPath: staging, TargetPath: target, VolumeCapability: volCap, VolumeContext: volCtx})
		if err != nil {
			return "", err
		}
		return "bind mount at pods/demo-pod/volume", nil
	}
	if err := d.do("NodeStageVolume ("+d.fsType+": lock, replay, serve, mkfs, mount)", stage); err != nil {
		return err
	}
	if err := d.do("NodePublishVolume", publish); err != nil {
		return err
	}
	if err := d.do(fmt.Sprintf("write %d files of %d KiB (fsync each)", d.files, d.fileSize>>10), func() (string, error) {
		for i := 0; i < d.files; i++ {
			b := make([]byte, d.fileSize)
			if _, err := rand.Read(b); err != nil {
				return "", err
			}
			name := fmt.Sprintf("file-%03d", i)
			if err := fsprobe.WriteSync(filepath.Join(target, name), b); err != nil {
				return "", err
			}
			sums[name] = sha256.Sum256(b)
			if i == 0 {
				file0 = b
			}
		}
		if err := atomicfile.SyncDir(target); err != nil {
			return "", err
		}
		f, err := os.OpenFile(filepath.Join(target, "file-000"), os.O_RDWR, 0)
		if err != nil {
			return "", err
		}
		oldFd = f
		return "and kept file-000 open (the 'pod' fd)", nil
	}); err != nil {
		return err
	}
	devBefore := mountSource(staging)
	var pid int
	if err := d.do("crash: SIGKILL the node plugin", func() (string, error) {
		pid = d.node.Process.Pid
		if err := d.node.Process.Signal(syscall.SIGKILL); err != nil {
			return "", err
		}
		<-d.nodeWait
		d.node = nil
		if d.holder {
			return fmt.Sprintf("pid %d killed; the holder keeps its FUSE connection", pid), nil
		}
		return fmt.Sprintf("pid %d killed; its FUSE server is gone", pid), nil
	}); err != nil {
		return err
	}
	// With a holder, the 'pod' writes through its old fd during the gap:
	// the write waits for the next plugin.
	var gapWrite chan error
	gapStart := time.Now()
	if err := d.do("during the gap (what a pod sees)", func() (string, error) {
		if !d.holder {
			return gapReport(target), nil
		}
		copy(file0, bytes.Repeat([]byte("g"), 4096))
		sums["file-000"] = sha256.Sum256(file0)
		gapWrite = make(chan error, 1)
		go func() { // ends when the write does (the next plugin serves it)
			_, err := oldFd.WriteAt(bytes.Repeat([]byte("g"), 4096), 0)
			if err == nil {
				err = oldFd.Sync()
			}
			gapWrite <- err
		}()
		select {
		case err := <-gapWrite:
			gapWrite = nil
			return "write+fsync through the pod fd finished during the gap: " + errString(err), nil
		case <-time.After(300 * time.Millisecond):
			return "write+fsync through the pod fd waits (no error) for the next plugin", nil
		}
	}); err != nil {
		return err
	}
	restartWhat := "restart node plugin: re-serve, replay, remount"
	if d.holder {
		restartWhat = "restart node plugin: replay, adopt held connection"
	}
	if err := d.do(restartWhat, func() (string, error) {
		s, err := d.startNode(ctx)
		if n := lastReplayed(d.path("node.log")); n != "" {
			s += ", replayed " + n + " journal entries"
		}
		if err == nil && gapWrite != nil {
			select {
			case werr := <-gapWrite:
				if werr != nil {
					return s, fmt.Errorf("the pod's write during the gap failed: %w", werr)
				}
				s += fmt.Sprintf("; the pod's gap write completed after %v", time.Since(gapStart).Round(time.Millisecond))
			case <-time.After(30 * time.Second):
				return s, errors.New("the pod's write during the gap did not complete 30s after the restart")
			}
		}
		return s, err
	}); err != nil {
		return err
	}
	if err := d.do("verify files at the publish path", func() (string, error) {
		for name, sum := range sums {
			b, err := os.ReadFile(filepath.Join(target, name))
			if err != nil {
				return "", err
			}
			if sha256.Sum256(b) != sum {
				return "", fmt.Errorf("%s: content differs from what was written", name)
			}
		}
		if dev := mountSource(staging); d.holder && dev != devBefore {
			return "", fmt.Errorf("staging mounted from %s, was %s before the crash: not adopted", dev, devBefore)
		}
		return fmt.Sprintf("%d files, sha256 match; mounted from %s (before the crash: %s)", len(sums), mountSource(staging), devBefore), nil
	}); err != nil {
		return err
	}
	if err := d.do("the fd opened before the crash", func() (string, error) {
		buf := make([]byte, 4096)
		_, cached := oldFd.ReadAt(buf, 0)
		// Drop the file's clean pages: a read must now reach the device
		// the old mount sits on (the dead one).
		_ = unix.Fadvise(int(oldFd.Fd()), 0, 0, unix.FADV_DONTNEED)
		_, uncached := oldFd.ReadAt(buf, int64(d.fileSize/2))
		f, oerr := os.Open(filepath.Join(target, "file-000"))
		if oerr == nil {
			_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
			_, oerr = f.ReadAt(buf, int64(d.fileSize/2))
			f.Close()
		}
		if !d.holder {
			return fmt.Sprintf("old fd: cached read %s, uncached read %s; new open+read: %s", errString(cached), errString(uncached), errString(oerr)), nil
		}
		// Adopted: the pod's fd keeps working, reads and writes.
		if uncached != nil {
			return "", fmt.Errorf("uncached read through the pre-crash fd: %w", uncached)
		}
		want := bytes.Repeat([]byte("p"), 4096)
		_, werr := oldFd.WriteAt(want, int64(d.fileSize/4))
		if werr == nil {
			werr = oldFd.Sync()
		}
		if werr != nil {
			return "", fmt.Errorf("write+fsync through the pre-crash fd: %w", werr)
		}
		_ = unix.Fadvise(int(oldFd.Fd()), 0, 0, unix.FADV_DONTNEED)
		if _, err := oldFd.ReadAt(buf, int64(d.fileSize/4)); err != nil || !bytes.Equal(buf, want) {
			return "", fmt.Errorf("read back through the pre-crash fd: %v", err)
		}
		copy(file0[d.fileSize/4:], want)
		sums["file-000"] = sha256.Sum256(file0)
		return fmt.Sprintf("old fd: uncached read works, write+fsync+read back works; new open+read: %s", errString(oerr)), nil
	}); err != nil {
		return err
	}
	if err := d.do("write after the restart (fsync)", func() (string, error) {
		return "", fsprobe.WriteSync(filepath.Join(target, "after-restart"), []byte("written by the pod after the node plugin came back\n"))
	}); err != nil {
		return err
	}
	if err := d.do("NodeStage + NodePublish again (idempotent)", func() (string, error) {
		if _, err := stage(); err != nil {
			return "", err
		}
		_, err := publish()
		return "", err
	}); err != nil {
		return err
	}
	if err := d.do("NodeGetVolumeStats", func() (string, error) {
		r, err := node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: volID, VolumePath: target})
		if err != nil {
			return "", err
		}
		if r.GetVolumeCondition().GetAbnormal() {
			return "", fmt.Errorf("volume condition abnormal: %s", r.GetVolumeCondition().GetMessage())
		}
		var used int64
		for _, u := range r.GetUsage() {
			if u.GetUnit() == csi.VolumeUsage_BYTES {
				used = u.GetUsed()
			}
		}
		return fmt.Sprintf("used %d MiB; condition: %s", used>>20, r.GetVolumeCondition().GetMessage()), nil
	}); err != nil {
		return err
	}
	oldFd.Close()
	oldFd = nil
	if err := d.do("NodeUnpublishVolume", func() (string, error) {
		_, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: volID, TargetPath: target})
		return "", err
	}); err != nil {
		return err
	}
	if err := d.do("NodeUnstageVolume (unmount, detach, commit)", func() (string, error) {
		_, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: volID, StagingTargetPath: staging})
		return "", err
	}); err != nil {
		return err
	}
	if err := d.do("DeleteVolume", func() (string, error) {
		_, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: volID})
		return "", err
	}); err != nil {
		return err
	}
	if err := d.do("stop node plugin and controller", func() (string, error) {
		return "", d.stopAll()
	}); err != nil {
		return err
	}
	if err := d.do("check nothing is left mounted or attached", func() (string, error) {
		return "no mounts, loop devices or FUSE connections left", d.checkClean()
	}); err != nil {
		return err
	}
	how := "journal replayed"
	if d.holder {
		how = "journal replayed, held connection adopted (the pod fd kept working)"
	}
	fmt.Printf("demo: OK — volume created, staged (%s), published, written, node plugin SIGKILLed and restarted, %s, %d files verified, cleaned up in %s\n",
		d.fsType, how, len(sums), time.Since(d.start).Round(time.Millisecond))
	return nil
}

func (d *demo) startController() (string, error) {
	st, err := storage.OpenLocal(storage.LocalOptions{Dir: d.path("cluster")})
	if err != nil {
		return "", err
	}
	d.ctrlStore = st
	logf, err := os.Create(d.path("controller.log"))
	if err != nil {
		return "", err
	}
	logToFile(logf)
	drv, err := driver.New(driver.Options{Mode: driver.ModeController, Backend: st, Version: version})
	if err != nil {
		return "", err
	}
	l, err := driver.Listen("unix://" + d.path("controller.sock"))
	if err != nil {
		return "", err
	}
	d.ctrl = drv
	d.ctrlDone = make(chan error, 1)
	go func() { d.ctrlDone <- drv.Serve(context.Background(), l) }() // owned by demo: stopAll waits
	conn, err := dial(d.path("controller.sock"))
	if err != nil {
		return "", err
	}
	d.ctrlConn = conn
	return "unix://" + d.path("controller.sock"), nil
}

// startNode starts `csi-rbdj serve --mode node` and waits until it is ready
// (its staged volumes re-served).
func (d *demo) startNode(ctx context.Context) (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	sock := d.path("node.sock")
	if d.nodeLog == nil {
		if d.nodeLog, err = os.Create(d.path("node.log")); err != nil {
			return "", err
		}
	}
	cmd := exec.Command(exe, "serve", "--mode", "node", "--endpoint", "unix://"+sock,
		"--backend", "local", "--local-dir", d.path("cluster"), "--state-dir", d.path("node-state"),
		"--node-id", "demo-node", "--request-timeout", "30s", "-v", "2")
	if d.holder {
		cmd.Args = append(cmd.Args, "--fuse-holder-socket", d.holderSocket())
	}
	cmd.Stdout, cmd.Stderr = d.nodeLog, d.nodeLog
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	d.node = cmd
	d.nodeWait = make(chan error, 1)
	go func() { d.nodeWait <- cmd.Wait() }() // owned by demo: stopAll/cleanup consume it
	if d.nodeConn == nil {
		if d.nodeConn, err = dial(sock); err != nil {
			return "", err
		}
	}
	err = probeUntilReady(ctx, csi.NewIdentityClient(d.nodeConn), d.nodeWait, 2*time.Minute)
	switch {
	case errors.Is(err, errPluginExited):
		d.node = nil
		return "", fmt.Errorf("node plugin %w (see %s)", err, d.path("node.log"))
	case errors.Is(err, errNotReady):
		return "", fmt.Errorf("node plugin %w (see %s)", err, d.path("node.log"))
	case err != nil:
		return "", err
	}
	return fmt.Sprintf("pid %d, ready", cmd.Process.Pid), nil
}

var (
	errPluginExited = errors.New("exited")
	errNotReady     = errors.New("not ready")
)

// probeUntilReady calls Probe through ident until the plugin says it is
// ready, for at most timeout: errNotReady then. If exited delivers first
// (the plugin's process ended), the error is errPluginExited with the
// process's.
func probeUntilReady(ctx context.Context, ident csi.IdentityClient, exited <-chan error, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		r, err := ident.Probe(pctx, &csi.ProbeRequest{})
		cancel()
		if err == nil && r.GetReady().GetValue() {
			return nil
		}
		select {
		case werr := <-exited:
			return fmt.Errorf("%w: %v", errPluginExited, werr)
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %v (last probe: %v)", errNotReady, timeout, err)
		}
	}
}

func dial(sock string) (*grpc.ClientConn, error) {
	bo := backoff.DefaultConfig
	bo.BaseDelay, bo.MaxDelay = 20*time.Millisecond, 200*time.Millisecond
	return grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: time.Second}))
}

func (d *demo) stopNode() error {
	if d.node == nil {
		return nil
	}
	_ = d.node.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.nodeWait:
		d.node = nil
		return err
	case <-time.After(90 * time.Second):
		_ = d.node.Process.Kill()
		<-d.nodeWait
		d.node = nil
		return errors.New("node plugin did not stop within 90s; killed")
	}
}

func (d *demo) stopAll() error {
	var errs []error
	if err := d.stopNode(); err != nil {
		errs = append(errs, err)
	}
	if err := d.stopHolder(); err != nil {
		errs = append(errs, err)
	}
	if d.nodeConn != nil {
		d.nodeConn.Close()
		d.nodeConn = nil
	}
	if d.ctrlConn != nil {
		d.ctrlConn.Close()
		d.ctrlConn = nil
	}
	if d.ctrl != nil {
		d.ctrl.Stop()
		if err := <-d.ctrlDone; err != nil {
			errs = append(errs, err)
		}
		d.ctrl = nil
	}
	if d.ctrlStore != nil {
		if err := d.ctrlStore.Close(); err != nil {
			errs = append(errs, err)
		}
		d.ctrlStore = nil
	}
	return errors.Join(errs...)
}

// checkClean verifies no mount, loop device or FUSE mount under the work
// directory is left.
func (d *demo) checkClean() error {
	var left []string
	for _, m := range fsprobe.MountsUnder(d.dir) {
		left = append(left, "mount "+m)
	}
	for _, l := range loopsUnder(d.dir) {
		left = append(left, "loop "+l)
	}
	if len(left) > 0 {
		return fmt.Errorf("left behind: %s", strings.Join(left, "; "))
	}
	return nil
}

// cleanup removes everything the demo made, also after a failure: kills the
// node plugin, unmounts, detaches, removes the work directory.
func (d *demo) cleanup() error {
	_ = d.stopAll()
	if d.node != nil {
		_ = d.node.Process.Kill()
		<-d.nodeWait
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Publish and staging mounts first (deepest first), then the devices.
	ms := fsprobe.MountsUnder(d.dir)
	for i := len(ms) - 1; i >= 0; i-- {
		if !strings.Contains(ms[i], "/node-state/fuse/") {
			_ = unix.Unmount(ms[i], unix.MNT_DETACH)
		}
	}
	if ents, err := os.ReadDir(d.path("node-state", "fuse")); err == nil {
		for _, e := range ents {
			if err := fuseloop.Cleanup(ctx, d.path("node-state", "fuse"), e.Name()); err != nil {
				fmt.Printf("demo: cleanup %s: %v\n", e.Name(), err)
			}
		}
	}
	if d.nodeLog != nil {
		d.nodeLog.Close()
	}
	if err := d.checkClean(); err != nil {
		return fmt.Errorf("cleanup incomplete (work directory %s kept): %w", d.dir, err)
	}
	if d.keep {
		fmt.Printf("demo: kept %s\n", d.dir)
		return nil
	}
	return os.RemoveAll(d.dir)
}

// loopsUnder lists loop devices whose backing file is under dir.
func loopsUnder(dir string) []string {
	ms, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []string
	for _, m := range ms {
		b, err := os.ReadFile(m)
		if err != nil {
			continue
		}
		if bf := strings.TrimSpace(string(b)); strings.HasPrefix(bf, dir+"/") {
			out = append(out, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(m)))+" ("+bf+")")
		}
	}
	return out
}

// mountSource returns the device mounted at path (the top of the stack).
func mountSource(path string) string {
	ms := fsprobe.MountsAt(path)
	if len(ms) == 0 {
		return "?"
	}
	return ms[len(ms)-1].Source
}

// gapReport tries what a pod would do while the node plugin is down.
func gapReport(target string) string {
	var parts []string
	_, err := os.ReadFile(filepath.Join(target, "file-001"))
	parts = append(parts, "read of a cached file: "+errString(err))
	err = fsprobe.WriteSync(filepath.Join(target, "during-gap"), bytes.Repeat([]byte("x"), 8192))
	parts = append(parts, "create+write+fsync: "+errString(err))
	_, err = os.ReadDir(target)
	parts = append(parts, "readdir: "+errString(err))
	return strings.Join(parts, "; ")
}

func errString(err error) string {
	switch {
	case err == nil:
		return "works"
	case errors.Is(err, syscall.EIO):
		return "EIO"
	case errors.Is(err, syscall.EROFS):
		return "EROFS"
	case errors.Is(err, syscall.ENOTCONN):
		return "ENOTCONN"
	case errors.Is(err, io.EOF):
		return "EOF"
	}
	return err.Error()
}

// lastReplayed returns the replayedEntries of the last device start the
// node plugin logged.
func lastReplayed(logPath string) string {
	b, err := os.ReadFile(logPath)
	if err != nil {
		return ""
	}
	n := ""
	for _, line := range strings.Split(string(b), "\n") {
		if i := strings.Index(line, "replayedEntries="); i >= 0 && strings.Contains(line, "Journaled device started") {
			n = strings.Fields(line[i+len("replayedEntries="):])[0]
		}
	}
	return n
}

func (d *demo) holderSocket() string { return d.path("holder", "holder.sock") }

// startHolder starts `csi-rbdj fuse-holder`, which keeps the node plugin's
// FUSE connections open across its crashes.
func (d *demo) startHolder() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	logf, err := os.Create(d.path("holder.log"))
	if err != nil {
		return "", err
	}
	cmd := exec.Command(exe, "fuse-holder", "--socket", d.holderSocket(), "-v", "2")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	logf.Close() // the child has its own copy
	if err != nil {
		return "", err
	}
	d.holderCmd = cmd
	d.holderWait = make(chan error, 1)
	go func() { d.holderWait <- cmd.Wait() }() // owned by demo: stopHolder consumes it
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(d.holderSocket()); err == nil {
			return fmt.Sprintf("pid %d, socket holder/holder.sock", cmd.Process.Pid), nil
		}
		if time.Now().After(deadline) {
			return "", errors.New("fuse-holder did not create its socket within 30s")
		}
	}
}

// stopHolder stops the holder (after the node plugin: the volumes are
// unstaged by then, it holds nothing).
func (d *demo) stopHolder() error {
	if d.holderCmd == nil {
		return nil
	}
	_ = d.holderCmd.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case err = <-d.holderWait:
	case <-time.After(30 * time.Second):
		_ = d.holderCmd.Process.Kill()
		<-d.holderWait
		err = errors.New("fuse-holder did not stop within 30s; killed")
	}
	d.holderCmd = nil
	return err
}
