//go:build ceph && pacific

package blockdev

// The takeover scenarios on a real Ceph cluster (hack/ceph-up.sh via
// cephtest), plus what only Ceph can show: librbd clients (`rbd bench`,
// `rbd resize`) meeting a csi-rbdj owner, and a header watch that the OSD
// really drops.
//
// Images are created with the rbd CLI (librbd: journaling with its client
// "" and tag 0, exactly what the controller makes).

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	clslock "github.com/csi-rbdj/csi-rbdj/pkg/cls/lock"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
	"github.com/csi-rbdj/csi-rbdj/pkg/testproc"
)

func init() {
	helperConnectors["ceph"] = func(t testing.TB) (objstore.Pool, fencerLister) {
		return connectCeph(t, os.Getenv("TAKEOVER_CEPH_CONF"))
	}
}

func connectCeph(t testing.TB, conf string) (objstore.Pool, fencerLister) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := ceph.Connect(ctx, ceph.Config{ConfigFile: conf, ConnectTimeout: 20 * time.Second, OpTimeout: 60 * time.Second})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	p, err := c.OpenPool(ctx, cephtest.PoolName)
	if err != nil {
		t.Fatal(err)
	}
	return p, c
}

// rbdCLI runs the rbd command against the test cluster and returns its
// combined output.
func rbdCLI(ctx context.Context, conf string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "rbd", append([]string{"-c", conf}, args...)...)
	// Each CLI run would otherwise try to bind the same admin socket.
	cmd.Env = append(os.Environ(), "CEPH_ARGS=--admin-socket=")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// newCephImage creates a journaled image of imageSize named prefix and a
// number on the test cluster (removed at the end of the test); it returns
// the Ceph backend, the cluster's ceph.conf and the image name.
func newCephImage(t *testing.T, prefix string) (be takeoverBackend, conf, img string) {
	t.Helper()
	be = cephBackend(t)
	img = fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()%1e6)
	be.createImage(t, img, imageSize)
	return be, cephtest.Conf(t), img
}

func cephBackend(t *testing.T) takeoverBackend {
	conf := cephtest.Conf(t)
	return takeoverBackend{
		name:    "ceph",
		connect: func(t testing.TB) (objstore.Pool, fencerLister) { return connectCeph(t, conf) },
		env:     []string{"TAKEOVER_BACKEND=ceph", "TAKEOVER_CEPH_CONF=" + conf},
		createImage: func(t testing.TB, name string, size int64) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if out, err := rbdCLI(ctx, conf, "create", "--size", strconv.FormatInt(size>>20, 10)+"M",
				"--image-feature", "layering,exclusive-lock,journaling", cephtest.PoolName+"/"+name); err != nil {
				t.Fatalf("rbd create: %v\n%s", err, out)
			}
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				if out, err := rbdCLI(ctx, conf, "rm", "--no-progress", cephtest.PoolName+"/"+name); err != nil {
					t.Logf("rbd rm %s: %v\n%s", name, err, out)
				}
			})
		},
	}
}

func TestTakeoverCeph(t *testing.T) {
	for _, mode := range []string{"SIGKILL", "SIGSTOP"} {
		t.Run(mode, func(t *testing.T) { testTakeover(t, cephBackend(t), mode) })
	}
}

func TestStaleEpochAfterTakeoverCeph(t *testing.T) {
	testStaleEpochAfterTakeover(t, cephBackend(t))
}

// holderOf returns the image lock's holder and cookie.
func holderOf(t testing.TB, pool objstore.Pool, img string) (clslock.LockerID, bool) {
	t.Helper()
	for id := range imageLockInfo(t, pool, img).Lockers {
		return id, true
	}
	return clslock.LockerID{}, false
}

// holderAddr returns the address of the image lock's holder.
func holderAddr(t testing.TB, pool objstore.Pool, img string) string {
	t.Helper()
	for _, li := range imageLockInfo(t, pool, img).Lockers {
		return li.Addr.ClientAddr()
	}
	return ""
}

// imageLockInfo reads the state of image img's exclusive lock.
func imageLockInfo(t testing.TB, pool objstore.Pool, img string) clslock.LockInfo {
	t.Helper()
	im, err := image.Open(context.Background(), pool, img)
	if err != nil {
		t.Fatal(err)
	}
	info, err := clslock.GetLockInfo(context.Background(), pool, clsrbd.HeaderOID(im.ID()), exclusivelock.LockName)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// TestLibrbdWriterRefusedCeph: `rbd bench --io-type write` on an image a
// csi-rbdj node serves fails promptly with EROFS (the owner refuses its
// lock request), instead of hanging or taking the lock; the node keeps the
// lock and its data.
func TestLibrbdWriterRefusedCeph(t *testing.T) {
	be, conf, img := newCephImage(t, "bench-refused")
	pool, fencer := be.connect(t)
	a, _ := startNode(t, be, "a", img, nodeOptions{})
	a.write(0, blk, 1)
	before, ok := holderOf(t, pool, img)
	if !ok {
		t.Fatal("no lock holder")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := rbdCLI(ctx, conf, "bench", "--io-type", "write", "--io-size", "4096", "--io-total", "65536", "--io-pattern", "seq", cephtest.PoolName+"/"+img)
	took := time.Since(start)
	t.Logf("rbd bench --io-type write while a csi-rbdj node owns the image: %v after %v\n%s", err, took.Round(time.Millisecond), out)
	if err == nil {
		t.Fatalf("rbd bench wrote to an image a csi-rbdj node serves")
	}
	if !strings.Contains(out, "Read-only file system") {
		t.Errorf("rbd bench failed without naming EROFS")
	}
	if took > 30*time.Second {
		t.Errorf("rbd bench took %v to fail; want a prompt refusal", took)
	}
	after, ok := holderOf(t, pool, img)
	if !ok || after != before {
		t.Fatalf("lock holder changed: %+v -> %+v", before, after)
	}
	if blocklisted(t, fencer, a.ready["addr"]) {
		t.Fatal("the owner was fenced")
	}
	if got, want := a.readCRC(0, blk), crcOf(pattern(1, blk, false)); got != want {
		t.Fatalf("owner's data changed")
	}
	a.write(blk, blk, 2) // the owner still writes
	a.close()
}

// journalEvents decodes the events of the image's journal.
func journalEvents(t testing.TB, pool objstore.Pool, img string) []rbdjournal.Event {
	t.Helper()
	var evs []rbdjournal.Event
	for _, e := range journalEntries(t, pool, img) {
		var ev rbdjournal.EventEntry
		if err := cephenc.Unmarshal(e.Data, &ev); err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev.Event)
	}
	return evs
}

func (n *node) size() int64 {
	n.t.Helper()
	r := n.do("s")
	v, err := strconv.ParseInt(strings.TrimPrefix(r, "SIZE "), 10, 64)
	if err != nil {
		n.t.Fatalf("node %s: size: %q", n.name, r)
	}
	return v
}

// TestLibrbdResizeHandledByOwnerCeph: `rbd resize` while a csi-rbdj node
// owns the image is proxied to the node (librbd's Resize notification),
// which grows the image as owner (journaling the resize as librbd does)
// and its device; shrinking is refused with EBUSY; snapshots, feature
// changes and renames fail with EROFS. None takes the lock from the node.
func TestLibrbdResizeHandledByOwnerCeph(t *testing.T) {
	be, conf, img := newCephImage(t, "resize-owner")
	pool, _ := be.connect(t)
	a, _ := startNode(t, be, "a", img, nodeOptions{})
	before, _ := holderOf(t, pool, img)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	start := time.Now()
	out, err := rbdCLI(ctx, conf, "resize", "--no-progress", "--size", "128M", cephtest.PoolName+"/"+img)
	t.Logf("rbd resize --size 128M while served: %v after %v %s", err, time.Since(start).Round(time.Millisecond), out)
	if err != nil {
		t.Fatalf("rbd resize: %v\n%s", err, out)
	}
	if s := a.size(); s != 128<<20 {
		t.Fatalf("device size %d after rbd resize, want %d", s, 128<<20)
	}
	a.write(100<<20, blk, 3) // past the old end
	if got, want := a.readCRC(100<<20, blk), crcOf(pattern(3, blk, false)); got != want {
		t.Fatal("write past the old end not read back")
	}
	info, err := rbdCLI(ctx, conf, "info", cephtest.PoolName+"/"+img)
	if err != nil || !strings.Contains(info, "size 128 MiB") {
		t.Fatalf("rbd info after resize: %v\n%s", err, info)
	}
	// (Entries come object by object, not in journal order.)
	resizeOps, finishes := map[uint64]bool{}, map[uint64]int32{}
	for _, ev := range journalEvents(t, pool, img) {
		switch ev := ev.(type) {
		case rbdjournal.ResizeEvent:
			resizeOps[ev.OpTid] = ev.Size == 128<<20
		case rbdjournal.OpFinishEvent:
			finishes[ev.OpTid] = ev.R
		}
	}
	var resized, finished bool
	for tid, ok := range resizeOps {
		r, done := finishes[tid]
		resized, finished = resized || ok, finished || ok && done && r == 0
	}
	if !resized || !finished {
		t.Errorf("the journal lacks the resize (ResizeEvent %v, OpFinishEvent %v)", resized, finished)
	}

	start = time.Now()
	out, err = rbdCLI(ctx, conf, "resize", "--no-progress", "--allow-shrink", "--size", "32M", cephtest.PoolName+"/"+img)
	t.Logf("rbd resize --allow-shrink --size 32M while served: %v after %v %s", err, time.Since(start).Round(time.Millisecond), out)
	if err == nil || !strings.Contains(out, "Device or resource busy") {
		t.Fatalf("shrinking a served image: %v\n%s", err, out)
	}
	if s := a.size(); s != 128<<20 {
		t.Fatalf("device size %d after a refused shrink", s)
	}
	// Snapshots are performed by the owner (snapshot_ceph_test.go covers
	// them in depth).
	for _, args := range [][]string{
		{"snap", "create", cephtest.PoolName + "/" + img + "@s1"},
		{"snap", "rm", "--no-progress", cephtest.PoolName + "/" + img + "@s1"},
	} {
		if out, err := rbdCLI(ctx, conf, args...); err != nil {
			t.Errorf("rbd %v while served: %v\n%s", args, err, out)
		}
	}
	// The maintenance operations the owner does not perform fail at once
	// with EROFS (the owner answers EOPNOTSUPP, librbd then asks for the
	// lock and is refused), as with an exclusive krbd or rbd-nbd mapping.
	for _, args := range [][]string{
		{"feature", "disable", cephtest.PoolName + "/" + img, "journaling"},
		{"rename", cephtest.PoolName + "/" + img, cephtest.PoolName + "/" + img + "-renamed"},
	} {
		start := time.Now()
		out, err := rbdCLI(ctx, conf, args...)
		t.Logf("rbd %s while served: %v after %v", strings.Join(args[:2], " "), err, time.Since(start).Round(time.Millisecond))
		if err == nil || !strings.Contains(out, "Read-only file system") {
			t.Errorf("rbd %v while served: %v\n%s", args, err, out)
		}
	}
	if after, _ := holderOf(t, pool, img); after != before {
		t.Fatalf("lock holder changed: %+v -> %+v", before, after)
	}
	a.close()
}

// TestWatchLostCeph breaks the owner's header watch for real: the owner is
// frozen longer than the OSD's watch timeout (osd_client_watch_timeout,
// 30 s by default), so the OSD drops its watch; meanwhile the controller
// grows the image (a header update the owner cannot hear). Once continued,
// the owner learns of the loss from librados, re-registers the watch,
// moves the lock's cookie to the new handle, and re-reads the header
// before its next I/O: it sees the new size. Nobody took the lock
// meanwhile, so it is still the owner.
func TestWatchLostCeph(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the OSD's watch timeout")
	}
	be, _, img := newCephImage(t, "watch-lost")
	pool, _ := be.connect(t)
	ctx := context.Background()
	im, err := image.Open(ctx, pool, img)
	if err != nil {
		t.Fatal(err)
	}
	header := clsrbd.HeaderOID(im.ID())
	a, _ := startNode(t, be, "a", img, nodeOptions{})
	a.write(0, blk, 1)
	before, _ := holderOf(t, pool, img)
	watchers := func() []objstore.WatcherInfo {
		ws, err := pool.ListWatchers(ctx, header)
		if err != nil {
			t.Fatal(err)
		}
		return ws
	}
	if ws := watchers(); len(ws) != 1 {
		t.Fatalf("watchers %v", ws)
	}

	a.signal(syscall.SIGSTOP)
	a.waitStopped()
	stopped := time.Now()
	deadline := stopped.Add(3 * time.Minute)
	for len(watchers()) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the OSD never dropped the frozen owner's watch")
		}
		time.Sleep(time.Second)
	}
	t.Logf("the OSD dropped the frozen owner's watch after %v", time.Since(stopped).Round(time.Second))
	// The header update the owner misses.
	if err := image.Resize(ctx, pool, img, 96<<20); err != nil {
		t.Fatal(err)
	}
	a.signal(syscall.SIGCONT)

	// The owner re-registers and its lock's cookie follows the new watch.
	// librados may give the new watch the old one's handle (it is the
	// address of its watch state, which the allocator can hand out again):
	// then the cookie stays as it was. Either way, once there is a watch
	// again, the lock names it.
	deadline = time.Now().Add(time.Minute)
	for {
		after, ok := holderOf(t, pool, img)
		if ws := watchers(); ok && len(ws) == 1 {
			if "auto "+strconv.FormatUint(ws[0].Cookie, 10) != after.Cookie || after.Locker != before.Locker {
				if after.Cookie == before.Cookie && time.Now().Before(deadline) {
					// Re-watched, the cookie not moved yet.
					time.Sleep(100 * time.Millisecond)
					continue
				}
				t.Fatalf("after the re-watch: holder %+v, watchers %v", after, ws)
			}
			t.Logf("re-watched %v after SIGCONT: cookie %q -> %q", time.Since(deadline.Add(-time.Minute)).Round(time.Millisecond), before.Cookie, after.Cookie)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the owner did not re-register its watch (holder %+v, watchers %v)", after, watchers())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The next I/O sees the new size: a write past the old end works.
	a.write(80<<20, blk, 2)
	if s := a.size(); s != 96<<20 {
		t.Fatalf("size %d after the gap, want %d", s, 96<<20)
	}
	a.close()
	if _, ok := holderOf(t, pool, img); ok {
		t.Fatal("the lock outlived a clean close")
	}
}

// TestLibrbdOwnerHandsOverCeph: a librbd client that holds the lock with
// librbd's automatic policy (`rbd bench` reading a journaled image takes the
// lock) releases it when a csi-rbdj node asks; the node takes it without
// fencing anyone, and the librbd client's next I/O, which asks for the lock
// back, fails with EROFS.
func TestLibrbdOwnerHandsOverCeph(t *testing.T) {
	be := cephBackend(t)
	conf := cephtest.Conf(t)
	img := fmt.Sprintf("handover-%d", time.Now().UnixNano()%1e6)
	pool, fencer := be.connect(t)
	// rbd bench exits on the error without closing the image: its watch
	// would keep the image from being removed for 30 s. At the end, fence
	// it (the OSD drops its watch), remove the image, lift the fence.
	var benchAddr string
	t.Cleanup(func() {
		if benchAddr != "" {
			fencer.Unblocklist(context.Background(), benchAddr)
		}
	})
	be.createImage(t, img, imageSize)
	t.Cleanup(func() {
		if benchAddr != "" {
			fencer.Blocklist(context.Background(), benchAddr, time.Hour)
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "rbd", "-c", conf, "bench", "--io-type", "read", "--io-size", "4096", "--io-threads", "1",
		"--io-total", "100G", "--io-pattern", "rand", cephtest.PoolName+"/"+img)
	cmd.Env = append(os.Environ(), "CEPH_ARGS=--admin-socket=")
	var out testproc.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	done := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	deadline := time.Now().Add(time.Minute)
	var librbd clslock.LockerID
	for {
		if id, ok := holderOf(t, pool, img); ok {
			librbd = id
			benchAddr = holderAddr(t, pool, img)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rbd bench never took the lock:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	a, errLine := startNode(t, be, "a", img, nodeOptions{})
	if a == nil {
		t.Fatalf("node a could not take the lock from a cooperative librbd client: %s", errLine)
	}
	t.Logf("took the lock from librbd's %s in %v", librbd.Locker, a.duration("open").Round(time.Millisecond))
	select {
	case <-done:
		t.Logf("rbd bench: %v\n%s", waitErr, out.String())
		if waitErr == nil || !strings.Contains(out.String(), "Read-only file system") {
			t.Fatalf("rbd bench after the handover: %v, want EROFS", waitErr)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("rbd bench still runs after the handover:\n%s", out.String())
	}
	if blocklisted(t, fencer, benchAddr) {
		t.Fatalf("the cooperative librbd client was fenced")
	}
	if h, _ := holderOf(t, pool, img); h.Locker == librbd.Locker {
		t.Fatalf("librbd holds the lock again")
	}
	a.write(0, blk, 5)
	a.close()
}
