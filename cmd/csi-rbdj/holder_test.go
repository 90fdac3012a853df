package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/fsprobe"
	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
)

// startHolder runs `csi-rbdj fuse-holder` as a child process and points
// the node plugin at it. It is stopped before the environment's cleanup.
func (e *env) startHolder() *holderProc {
	e.t.Helper()
	h := startHolderChild(e.t, e.dir)
	if len(e.extra) == 0 {
		e.extra = append(e.extra, "--fuse-holder-socket", h.sock)
	}
	return h
}

// startHolderChild runs `csi-rbdj fuse-holder` with its socket in
// dir/holder; the test's cleanup stops it.
func startHolderChild(t *testing.T, dir string) *holderProc {
	t.Helper()
	sock := filepath.Join(dir, "holder", "holder.sock")
	_ = os.Remove(sock)
	log, err := os.OpenFile(filepath.Join(dir, "holder.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	h := &holderProc{child: startChild(t, log, "fuse-holder", "--socket", sock, "-v", "2"), sock: sock}
	t.Cleanup(func() {
		h.stop(30 * time.Second)
		log.Close()
	})
	for deadline := time.Now().Add(30 * time.Second); ; {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("fuse-holder did not create its socket")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return h
}

// holderProc is a running fuse-holder child.
type holderProc struct {
	*child
	sock string
}

// mountIDs returns the mountinfo mount ids and sources stacked at path.
func mountIDs(path string) []string {
	ms := fsprobe.MountsAt(path)
	ids := make([]string, 0, len(ms))
	for _, m := range ms {
		ids = append(ids, fmt.Sprintf("%d(%d:%d)", m.ID, m.Major, m.Minor))
	}
	return ids
}

// holderKills is how many times the handover tests SIGKILL the plugin
// (CSI_RBDJ_HOLDER_KILLS raises it).
func holderKills(t *testing.T) (kills, terms int) {
	kills, terms = 20, 5
	if v := os.Getenv("CSI_RBDJ_HOLDER_KILLS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			t.Fatalf("CSI_RBDJ_HOLDER_KILLS=%q", v)
		}
		kills = n
	}
	return kills, terms
}

// newWorkload returns a workload to run.
func newWorkload() *workload {
	return &workload{stop: make(chan struct{}), done: make(chan struct{})}
}

// run runs step(0), step(1), ... in a goroutine until finish (or until
// stop is closed).
func (w *workload) run(step func(i uint64)) {
	go func() { // owned by the workload: finish ends it
		defer close(w.done)
		for i := uint64(0); ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			step(i)
		}
	}()
}

// workload is a writer that keeps going while the plugin is killed.
type workload struct {
	mu       sync.Mutex
	errs     []error
	ops      int
	maxPause time.Duration
	stop     chan struct{}
	done     chan struct{}
}

func (w *workload) op(d time.Duration, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ops++
	if d > w.maxPause {
		w.maxPause = d
	}
	if err != nil && len(w.errs) < 20 {
		w.errs = append(w.errs, err)
	}
}

// takeMax returns the longest operation so far and starts over.
func (w *workload) takeMax() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.maxPause
	w.maxPause = 0
	return m
}

func (w *workload) finish(t *testing.T) (ops int, maxPause time.Duration) {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, err := range w.errs {
		t.Errorf("writer: %v", err)
	}
	return w.ops, w.maxPause
}

// restarts SIGKILLs the plugin kills times at random moments and restarts
// it, then stops it with SIGTERM terms times and restarts it.
func (e *env) restarts(t *testing.T, kills, terms int, w *workload) (longestStart time.Duration) {
	var killMax, termMax time.Duration
	defer func() {
		t.Logf("longest writer operation: %v across the SIGKILL restarts, %v across the SIGTERM restarts",
			killMax.Round(time.Millisecond), termMax.Round(time.Millisecond))
	}()
	for i := range kills + terms {
		if i == kills {
			time.Sleep(200 * time.Millisecond) // let an operation spanning the last kill end
			killMax = max(killMax, w.takeMax())
		}
		time.Sleep(time.Duration(20+mrand.IntN(300)) * time.Millisecond)
		if i < kills {
			e.killNode()
		} else {
			e.stopNode()
		}
		start := time.Now()
		e.startNode()
		if d := time.Since(start); d > longestStart {
			longestStart = d
		}
	}
	time.Sleep(200 * time.Millisecond)
	if terms > 0 {
		termMax = w.takeMax()
	} else {
		killMax = max(killMax, w.takeMax())
	}
	// Every restart must have adopted the volumes, not re-served them.
	b, err := os.ReadFile(e.path("node.log"))
	e.must(err)
	if n, re := strings.Count(string(b), "Volume adopted after restart"), strings.Count(string(b), "Volume re-served after restart"); n != kills+terms || re != 0 {
		t.Errorf("%d restarts: %d adoptions, %d fallback re-serves", kills+terms, n, re)
	} else {
		t.Logf("%d restarts, %d adoptions, resent requests: %d", kills+terms, n, strings.Count(string(b), "resent=")-strings.Count(string(b), "resent=0"))
	}
	return longestStart
}

// TestRestartWithHolderFilesystem: with a fuse-holder, a writer keeps
// creating, fsyncing and re-reading files at the publish path while the
// node plugin is SIGKILLed and restarted (and stopped with SIGTERM): it
// sees no error, no file is lost, the loop device and the mounts are the
// same objects at the end, and the filesystem checks clean.
func TestRestartWithHolderFilesystem(t *testing.T) {
	for _, tc := range []struct{ fs, ackPolicy string }{{"ext4", ""}, {"xfs", ""}, {"ext4", "writeback"}} {
		name := tc.fs
		if tc.ackPolicy != "" {
			name += "/" + tc.ackPolicy // with the write-back ring
		}
		t.Run(name, func(t *testing.T) { testRestartWithHolderFilesystem(t, tc.fs, tc.ackPolicy) })
	}
}

func testRestartWithHolderFilesystem(t *testing.T, fs, ackPolicy string) {
	e := newEnv(t)
	e.startHolder()
	e.startNode()
	kills, terms := holderKills(t)
	ctx := context.Background()
	var params map[string]string
	if ackPolicy != "" {
		params = map[string]string{"ackPolicy": ackPolicy}
	}
	staging, target := e.path("staging"), e.path("pods", "a", "vol")
	v := e.createPublished(ctx, "holder-"+fs, mountCap(fs), 320<<20, params, target)
	dev, stagingIDs, targetIDs := mountSource(staging), mountIDs(staging), mountIDs(target)

	// The writer: create, write, fsync a file; re-read it and an older one.
	files := map[string][]byte{}
	var names []string
	w := newWorkload()
	w.run(func(i uint64) {
		b := make([]byte, 4096+mrand.IntN(60<<10))
		rand.Read(b)
		name := fmt.Sprintf("f%05d", i)
		start := time.Now()
		err := fsprobe.WriteSync(filepath.Join(target, name), b)
		if err == nil {
			var got []byte
			if got, err = os.ReadFile(filepath.Join(target, name)); err == nil && !bytes.Equal(got, b) {
				err = fmt.Errorf("%s reads back different data", name)
			}
		}
		if err == nil && len(names) > 0 {
			old := names[mrand.IntN(len(names))]
			if got, rerr := os.ReadFile(filepath.Join(target, old)); rerr != nil {
				err = rerr
			} else if !bytes.Equal(got, files[old]) {
				err = fmt.Errorf("%s reads back different data", old)
			}
		}
		w.op(time.Since(start), err)
		if err == nil {
			files[name] = b
			names = append(names, name)
		}
	})
	longestStart := e.restarts(t, kills, terms, w)
	ops, maxPause := w.finish(t)
	t.Logf("%s: %d SIGKILL + %d SIGTERM restarts; writer: %d ops (files kept: %d), longest op after the last restart %v; longest plugin start %v",
		fs, kills, terms, ops, len(files), maxPause.Round(time.Millisecond), longestStart.Round(time.Millisecond))

	if got := mountSource(staging); got != dev {
		t.Errorf("staging mounted from %s at the end, %s at the start", got, dev)
	}
	if got := mountIDs(staging); strings.Join(got, ",") != strings.Join(stagingIDs, ",") {
		t.Errorf("staging mount ids %v at the end, %v at the start", got, stagingIDs)
	}
	if got := mountIDs(target); strings.Join(got, ",") != strings.Join(targetIDs, ",") {
		t.Errorf("publish mount ids %v at the end, %v at the start", got, targetIDs)
	}
	t.Logf("same device %s, staging mount %v, publish mount %v", dev, stagingIDs, targetIDs)
	for name, b := range files {
		got, err := os.ReadFile(filepath.Join(target, name))
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("file %s lost or changed: %v", name, err)
		}
	}
	e.unstage(ctx, v)
	e.checkFilesystem(v.id, fs)
	e.deleteVolume(ctx, v)
	waitNoLoops(t, e.dir)
}

// checkFilesystem stages volume id as a Block volume and checks its
// filesystem read-only (e2fsck -fn, xfs_repair -n).
func (e *env) checkFilesystem(id, fs string) {
	t := e.t
	ctx := context.Background()
	target := e.path("check", "dev")
	v := &testVolume{id: id, staging: e.path("check-staging"), vc: blockCap}
	e.must(os.MkdirAll(v.staging, 0o755))
	_, err := e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: v.staging, VolumeCapability: blockCap})
	e.must(err)
	e.publish(ctx, v, target, false)
	var cmd *exec.Cmd
	if fs == "xfs" {
		cmd = exec.Command("xfs_repair", "-n", target)
	} else {
		cmd = exec.Command("e2fsck", "-fn", target)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("%v: %v\n%s", cmd.Args, err, out)
	} else {
		t.Logf("%v: clean", cmd.Args)
	}
	e.unstage(ctx, v)
}

// TestRestartWithHolderBlock: the same for a Block volume with a raw-device
// writer (O_DIRECT, each block stamped with its number and a generation).
func TestRestartWithHolderBlock(t *testing.T) { testRestartWithHolderBlock(t, "") }

// TestRestartWithHolderWriteBackKills: a Block volume with ackPolicy
// writeback, a fuse-holder and write-back rings; a raw writer (one fd,
// O_DIRECT, one 64 KiB write at a time, an fsync only every 50 writes)
// keeps overwriting random blocks while the plugin is SIGKILLed
// holderKills() times at random moments (then stopped with SIGTERM):
// every restart adopts the connection, the writer sees no error, and at
// the end every block holds the last generation acknowledged for it —
// not one acknowledged write is lost, flushed or not: what the dead
// plugins had acknowledged but not made durable was re-journaled from the
// rings. The local backend syncs here (no --local-no-sync), so that
// appends take long enough for kills to find writes not yet durable.
func TestRestartWithHolderWriteBackKills(t *testing.T) { testRestartWithHolderBlock(t, "writeback") }

func testRestartWithHolderBlock(t *testing.T, ackPolicy string) {
	e := newEnv(t)
	e.startHolder()
	name, size, params, w := "holder-block", int64(64<<20), map[string]string(nil), &blockWriter{syncEvery: 1, verify: true}
	if ackPolicy == "writeback" {
		e.extra = append(e.extra, "--local-no-sync=false")
		name, size, params, w = "holder-writeback-kills", 32<<20, map[string]string{"ackPolicy": ackPolicy}, &blockWriter{syncEvery: 50}
	}
	e.startNode()
	kills, terms := holderKills(t)
	ctx := context.Background()
	target := e.path("pods", "a", "dev")
	v := e.createPublished(ctx, name, blockCap, size, params, target)
	targetIDs := mountIDs(target)
	var st0 syscall.Stat_t
	e.must(syscall.Stat(target, &st0))

	// One fd, opened before the first kill, used throughout (the pod's).
	f, err := os.OpenFile(target, os.O_RDWR|syscall.O_DIRECT, 0)
	e.must(err)
	defer f.Close()
	w.start(f, size)
	longestStart := e.restarts(t, kills, terms, w.workload)
	ops, maxPause := w.finish(t)
	b, err := os.ReadFile(e.path("node.log"))
	e.must(err)
	rejournals := strings.Count(string(b), "Re-journaled the write-back requests a dead predecessor acknowledged")
	t.Logf("block (ackPolicy %q): %d SIGKILL + %d SIGTERM restarts; writer: %d ops (%d acknowledged), longest op after the last restart %v; longest plugin start %v; %d restarts re-journaled acknowledged writes from the ring",
		ackPolicy, kills, terms, ops, w.acked, maxPause.Round(time.Millisecond), longestStart.Round(time.Millisecond), rejournals)
	if ackPolicy == "writeback" && kills >= 10 && rejournals == 0 {
		t.Errorf("no kill found an acknowledged write that was not durable yet: the ring was never exercised")
	}
	w.checkAcknowledged(t)
	checkSameTarget(t, target, st0, targetIDs)
	f.Close()
	e.teardown(ctx, v)
}

// stampBlock fills b with the block number and a generation, every 16
// bytes.
func stampBlock(b []byte, blk, gen uint64) {
	for off := 0; off < len(b); off += 16 {
		binary.LittleEndian.PutUint64(b[off:], blk)
		binary.LittleEndian.PutUint64(b[off+8:], gen)
	}
}

// blockWriterBS is the size of a blockWriter's writes.
const blockWriterBS = 64 << 10

// blockWriter is a raw-device writer that keeps going while the plugin is
// restarted: through one fd (the pod's, O_DIRECT) it overwrites random
// 64 KiB blocks, each stamped with its number and a new generation, and
// records the generation acknowledged for each block.
type blockWriter struct {
	*workload
	syncEvery uint64 // fsync after every syncEvery-th write (1: every write)
	verify    bool   // after each acknowledged write, re-read a random block and check its generation

	f     *os.File
	gens  []uint64 // acknowledged generation per block (under workload.mu)
	acked int      // acknowledged writes (under workload.mu)
}

// start runs the writer over the first size bytes of f until finish.
func (w *blockWriter) start(f *os.File, size int64) {
	w.f, w.gens = f, make([]uint64, size/blockWriterBS)
	const bs = blockWriterBS
	buf, rbuf := kerneltest.AlignedBuf(bs), kerneltest.AlignedBuf(bs)
	w.workload = newWorkload()
	w.run(func(i uint64) {
		gen := i + 1
		blk := uint64(mrand.IntN(len(w.gens)))
		stampBlock(buf, blk, gen)
		start := time.Now()
		_, err := f.WriteAt(buf, int64(blk)*bs)
		if err == nil && gen%w.syncEvery == 0 {
			err = f.Sync()
		}
		if err == nil {
			w.mu.Lock()
			w.gens[blk] = gen
			w.acked++
			w.mu.Unlock()
		}
		if err == nil && w.verify {
			old := uint64(mrand.IntN(len(w.gens)))
			if _, err = f.ReadAt(rbuf, int64(old)*bs); err == nil && w.gens[old] != 0 {
				stampBlock(buf, old, w.gens[old])
				if !bytes.Equal(rbuf, buf) {
					err = fmt.Errorf("block %d: want generation %d, read %d", old, w.gens[old], binary.LittleEndian.Uint64(rbuf[8:]))
				}
			}
		}
		w.op(time.Since(start), err)
	})
}

// checkAcknowledged reads every block back (after finish) and fails the
// test if one does not hold the last generation acknowledged for it.
func (w *blockWriter) checkAcknowledged(t *testing.T) {
	t.Helper()
	buf, rbuf := kerneltest.AlignedBuf(blockWriterBS), kerneltest.AlignedBuf(blockWriterBS)
	for blk, gen := range w.gens {
		if gen == 0 {
			continue
		}
		if _, err := w.f.ReadAt(rbuf, int64(blk)*blockWriterBS); err != nil {
			t.Fatal(err)
		}
		stampBlock(buf, uint64(blk), gen)
		if !bytes.Equal(rbuf, buf) {
			t.Fatalf("block %d lost its acknowledged generation %d (holds %d)", blk, gen, binary.LittleEndian.Uint64(rbuf[8:]))
		}
	}
}

// checkSameTarget fails the test unless target is still the device st0
// describes, published by the mounts ids: the restarts adopted the
// connection instead of re-serving the volume.
func checkSameTarget(t *testing.T, target string, st0 syscall.Stat_t, ids []string) {
	t.Helper()
	var st1 syscall.Stat_t
	if err := syscall.Stat(target, &st1); err != nil || st1.Rdev != st0.Rdev {
		t.Errorf("target is device %d at the end, %d at the start (%v)", st1.Rdev, st0.Rdev, err)
	}
	if got := mountIDs(target); strings.Join(got, ",") != strings.Join(ids, ",") {
		t.Errorf("publish mount ids %v at the end, %v at the start", got, ids)
	}
	t.Logf("same device %d:%d, publish mount %v", st0.Rdev>>8, st0.Rdev&0xff, ids)
}

// TestFallbackNeverBareTarget: without a holder, a restart re-serves the
// volume on a new loop device (the fallback). A writer that keeps creating
// and fsyncing files at the publish path meanwhile gets errors during the
// gap, but never writes into the host directory beneath the target: every
// file it made durable is on the volume afterwards, the host directory is
// empty, and unpublish and unstage succeed.
func TestFallbackNeverBareTarget(t *testing.T) {
	forEachFS(t, testFallbackNeverBareTarget)
}

func testFallbackNeverBareTarget(t *testing.T, fs string) {
	e := newEnv(t)
	e.startNode()
	ctx := context.Background()
	target := e.path("pods", "a", "vol")
	e.must(os.MkdirAll(target, 0o750)) // as the kubelet does
	host, err := os.Open(target)       // the host directory, beneath every mount
	e.must(err)
	defer host.Close()
	v := e.createPublished(ctx, "fallback-"+fs, mountCap(fs), 320<<20, nil, target)

	var durable []string
	var failed int
	w := newWorkload()
	w.run(func(i uint64) {
		name := fmt.Sprintf("f%05d", i)
		if err := fsprobe.WriteSync(filepath.Join(target, name), []byte(name)); err != nil {
			failed++
			time.Sleep(time.Millisecond)
			return
		}
		durable = append(durable, name)
	})
	for range 3 {
		time.Sleep(time.Duration(100+mrand.IntN(200)) * time.Millisecond)
		e.killNode()
		time.Sleep(100 * time.Millisecond) // the gap: the writer runs into the dead mount
		e.startNode()
	}
	time.Sleep(200 * time.Millisecond)
	close(w.stop)
	<-w.done
	t.Logf("%s: writer made %d files durable, %d attempts failed during the gaps", fs, len(durable), failed)
	if failed == 0 {
		t.Errorf("no write failed: the gaps were not exercised")
	}
	for _, name := range durable {
		if b, err := os.ReadFile(filepath.Join(target, name)); err != nil || string(b) != name {
			t.Errorf("durable file %s not on the volume after the re-serves: %v", name, err)
		}
	}
	if names, err := host.Readdirnames(-1); err != nil || len(names) != 0 {
		t.Errorf("host directory beneath the target holds %d entries (%v): writes landed outside the volume", len(names), err)
	}
	e.teardown(ctx, v)
}

// TestHolderRestart: the holder is killed and a new one started while the
// plugin serves a volume (the holder's pod deleted to upgrade it): the
// plugin gives the new holder the connection again, and a later SIGKILL of
// the plugin is still a pause, not an error.
func TestHolderRestart(t *testing.T) {
	e := newEnv(t)
	h := e.startHolder()
	e.startNode()
	ctx := context.Background()
	target := e.path("pods", "a", "vol")
	v := e.createPublished(ctx, "holder-restart", mountCap("ext4"), 64<<20, nil, target)
	ids := mountIDs(target)

	h.kill()
	e.must(fsprobe.WriteSync(filepath.Join(target, "holder-gone"), []byte("x"))) // the plugin still serves
	e.startHolder()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(e.path("node.log"))
		if strings.Contains(string(b), "giving it again") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the plugin did not give the new holder the connection within 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.killNode()
	e.startNode()
	e.must(fsprobe.WriteSync(filepath.Join(target, "after"), []byte("y")))
	if b, err := os.ReadFile(filepath.Join(target, "holder-gone")); err != nil || string(b) != "x" {
		t.Errorf("file written while the holder was away: %q, %v", b, err)
	}
	if got := mountIDs(target); strings.Join(got, ",") != strings.Join(ids, ",") {
		t.Errorf("publish mount ids %v, were %v: not adopted", got, ids)
	}
	e.teardown(ctx, v)
}

// TestHolderNotServedNoHang: the holder keeps a volume's connection, but
// the restarted plugin cannot serve the volume (here: its storage is not
// there). The plugin lets the connection go, so the pod's I/O fails with
// EIO instead of waiting forever; once the storage is back, the next start
// re-serves the volume (the fallback).
func TestHolderNotServedNoHang(t *testing.T) {
	e := newEnv(t)
	e.startHolder()
	e.startNode()
	ctx := context.Background()
	target := e.path("pods", "a", "vol")
	v := e.createPublished(ctx, "holder-nohang", mountCap("ext4"), 64<<20, nil, target)
	e.must(fsprobe.WriteSync(filepath.Join(target, "before"), []byte("kept")))

	e.killNode()
	withHolder := e.extra
	e.extra = append(append([]string(nil), withHolder...), "--local-dir", e.path("no-such-cluster")) // the last flag wins
	e.startNode()
	done := make(chan error, 1)
	go func() { done <- fsprobe.WriteSync(filepath.Join(target, "during"), []byte("x")) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a write to an unserved volume succeeded")
		}
		t.Logf("write to the unserved volume: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("a write to an unserved volume still waits after 10 s")
	}

	e.killNode()
	e.extra = withHolder
	e.startNode()
	if b, err := os.ReadFile(filepath.Join(target, "before")); err != nil || string(b) != "kept" {
		t.Errorf("after the storage came back: %q, %v", b, err)
	}
	e.teardown(ctx, v)
}
