package driver_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
	"github.com/csi-rbdj/csi-rbdj/pkg/fsprobe"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestExpandOnline grows staged, published volumes on the local backend
// while a writer writes to them, as Kubernetes does (external-resizer:
// ControllerExpandVolume; kubelet: NodeExpandVolume): xfs and Block grow
// online; ext4 grows where the plugin has CAP_SYS_RESOURCE and otherwise
// fails with an error naming it. The node, as the image's lock owner,
// performs the resize and journals it (Resize + OpFinish); the data
// written before and during the expansion is intact; the filesystem
// checks clean.
func TestExpandOnline(t *testing.T) {
	kerneltest.RequireRoot(t)
	for _, tc := range []expandCase{
		{name: "xfs", fs: "xfs"},
		{name: "ext4", fs: "ext4"},
		{name: "block", block: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := serveLocal(t)
			dir, b, ctrl, node := d.dir, d.b, d.ctrl, d.node
			runExpand(t, ctrl, node, dir, tc, func(ctx context.Context) (objstore.Pool, error) { return b.Pool(ctx, "rbd") }, nil, nil)
		})
	}
}

// expandCase is one volume kind of runExpand.
type expandCase struct {
	name  string
	fs    string // "" for block
	block bool
}

// The sizes of runExpand (mkfs.xfs wants more than 300 MB).
const (
	expandFrom = 320 << 20
	// expandTo is not a whole number of 4 MiB objects: the controller
	// rounds it up.
	expandTo      = 400<<20 + 1
	expandRounded = 404 << 20
)

// runExpand creates a 320 MiB volume of kind tc, stages and publishes it,
// writes to it from a goroutine and grows it to 404 MiB online, then
// checks the sizes the kernel and the filesystem see, the journal, the
// data and the filesystem. pool opens the volumes' pool (for the journal).
func runExpand(t *testing.T, ctrl csi.ControllerClient, node csi.NodeClient, dir string, tc expandCase, pool func(context.Context) (objstore.Pool, error), params, secrets map[string]string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	vc := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	if tc.block {
		vc.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	} else {
		vc.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: tc.fs}}
	}
	vol := createVolume(ctx, t, ctrl, &csi.CreateVolumeRequest{Name: fmt.Sprintf("expand-%s-%d", tc.name, time.Now().UnixNano()),
		VolumeCapabilities: []*csi.VolumeCapability{vc}, CapacityRange: &csi.CapacityRange{RequiredBytes: expandFrom},
		Parameters: params, Secrets: secrets})
	id := vol.GetVolume().GetVolumeId()
	vid, err := volume.ParseVolumeID(id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := ctrl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id, Secrets: secrets}); err != nil {
			t.Errorf("delete volume: %v", err)
		}
	})
	staging, target := filepath.Join(dir, "staging-"+tc.name), filepath.Join(dir, "pods", tc.name, "vol")
	if err := os.MkdirAll(staging, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: vc,
		VolumeContext: vol.GetVolume().GetVolumeContext(), Secrets: secrets}); err != nil {
		t.Fatal(err)
	}
	staged := true
	unstage := func() {
		if !staged {
			return
		}
		staged = false
		if _, err := node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
			t.Errorf("unpublish: %v", err)
		}
		if _, err := node.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			t.Errorf("unstage: %v", err)
		}
	}
	t.Cleanup(unstage)
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target,
		VolumeCapability: vc, VolumeContext: vol.GetVolume().GetVolumeContext()}); err != nil {
		t.Fatal(err)
	}
	before := sizeSeen(t, tc, target)
	t.Logf("%s: before: %s", tc.name, before)

	w := startExpandWriter(t, tc, target)
	time.Sleep(300 * time.Millisecond) // let it write before and during the expansion

	// The controller: the node serving the volume performs the resize.
	start := time.Now()
	resp, err := ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
		CapacityRange: &csi.CapacityRange{RequiredBytes: expandTo}, VolumeCapability: vc, Secrets: secrets})
	if err != nil {
		t.Fatalf("ControllerExpandVolume: %v", err)
	}
	t.Logf("%s: ControllerExpandVolume: %d bytes, node expansion required %v, %v", tc.name, resp.GetCapacityBytes(), resp.GetNodeExpansionRequired(), time.Since(start).Round(time.Millisecond))
	if resp.GetCapacityBytes() != expandRounded || !resp.GetNodeExpansionRequired() {
		t.Fatalf("ControllerExpandVolume = %d bytes, node expansion %v; want %d, true", resp.GetCapacityBytes(), resp.GetNodeExpansionRequired(), expandRounded)
	}
	p, err := pool(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkJournaledResize(t, p, vid.Image, expandRounded)

	// Again: nothing to do, same answer (the external-resizer retries).
	resp, err = ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
		CapacityRange: &csi.CapacityRange{RequiredBytes: expandTo}, Secrets: secrets})
	if err != nil || resp.GetCapacityBytes() != expandRounded {
		t.Fatalf("second ControllerExpandVolume: %v, %d bytes", err, resp.GetCapacityBytes())
	}

	// The node: the loop device and the filesystem follow.
	nreq := &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target, StagingTargetPath: staging,
		CapacityRange: &csi.CapacityRange{RequiredBytes: expandTo}, VolumeCapability: vc}
	start = time.Now()
	nresp, err := node.NodeExpandVolume(ctx, nreq)
	noCap := tc.fs == "ext4" && !hasCapSysResource()
	switch {
	case noCap:
		// This machine cannot grow a mounted ext4 (README): the error
		// must say what is missing; the device grew nonetheless.
		expectCode(t, "NodeExpandVolume of a mounted ext4 without CAP_SYS_RESOURCE", err, codes.FailedPrecondition, "CAP_SYS_RESOURCE", "SYS_RESOURCE")
		if got := devSize(t, findmnt(t, "SOURCE", staging)); got != expandRounded {
			t.Errorf("loop device has %d bytes, want %d", got, expandRounded)
		}
	case err != nil:
		t.Fatalf("NodeExpandVolume: %v", err)
	default:
		t.Logf("%s: NodeExpandVolume: %d bytes in %v", tc.name, nresp.GetCapacityBytes(), time.Since(start).Round(time.Millisecond))
		if nresp.GetCapacityBytes() != expandRounded {
			t.Errorf("NodeExpandVolume capacity %d, want %d", nresp.GetCapacityBytes(), expandRounded)
		}
	}
	after := sizeSeen(t, tc, target)
	t.Logf("%s: after: %s", tc.name, after)
	if !noCap && after.total < before.total+(expandRounded-expandFrom)*9/10 {
		t.Errorf("the size seen at the publish path grew from %d to %d bytes, want about %d more", before.total, after.total, expandRounded-expandFrom)
	}
	if !noCap {
		// Twice is fine: nothing left to grow.
		if _, err := node.NodeExpandVolume(ctx, nreq); err != nil {
			t.Errorf("second NodeExpandVolume: %v", err)
		}
	}

	written := w.stop(t)
	t.Logf("%s: the writer wrote %d items before, during and after the expansion", tc.name, len(written))
	if !noCap {
		w.useNewSpace(t, before.avail)
	}
	w.verify(t, written)

	// Bad requests.
	_, err = ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 32 << 20, LimitBytes: 32 << 20}, Secrets: secrets})
	expectCode(t, "shrink", err, codes.OutOfRange, "cannot shrink", "create a new volume")
	resp, err = ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 32 << 20}, Secrets: secrets})
	if err != nil || resp.GetCapacityBytes() != expandRounded {
		t.Errorf("expand to less than the size without a limit: %v, %d bytes; want OK with %d (CSI: already large enough)", err, resp.GetCapacityBytes(), expandRounded)
	}
	_, err = node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: filepath.Join(dir, "elsewhere"),
		CapacityRange: &csi.CapacityRange{RequiredBytes: expandTo}})
	expectCode(t, "node expand at a path the volume is not at", err, codes.NotFound, "not staged or published at")
	_, err = node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target, StagingTargetPath: filepath.Join(dir, "other"),
		CapacityRange: &csi.CapacityRange{RequiredBytes: expandTo}})
	expectCode(t, "node expand with another staging path", err, codes.InvalidArgument, "is staged at")
	_, err = node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 40}})
	expectCode(t, "node expand beyond the image", err, codes.FailedPrecondition, "ControllerExpandVolume first")

	// Unstaged, the volume keeps its size and its data, and the
	// filesystem checks clean: stage it as a raw device to look.
	unstage()
	checkAfterExpand(t, node, id, vol.GetVolume().GetVolumeContext(), secrets, dir, tc)
}

// sizes is what a publish path shows.
type sizes struct {
	total int64  // filesystem size (statfs) or device size
	avail int64  // free bytes (statfs; the device size for block)
	df    string // df's line
}

func (s sizes) String() string { return fmt.Sprintf("%d bytes (%s)", s.total, s.df) }

func sizeSeen(t *testing.T, tc expandCase, target string) sizes {
	t.Helper()
	if tc.block {
		n := devSize(t, target)
		return sizes{total: n, avail: n, df: "blockdev --getsize64: " + strconv.FormatInt(n, 10)}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(target, &st); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("df", "-B1", "--output=size,avail", target).CombinedOutput()
	if err != nil {
		t.Fatalf("df: %v %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return sizes{total: int64(st.Blocks) * st.Bsize, avail: int64(st.Bavail) * st.Bsize, df: "df: " + strings.Join(strings.Fields(lines[len(lines)-1]), " ")}
}

// devSize is `blockdev --getsize64 dev`.
func devSize(t *testing.T, dev string) int64 {
	t.Helper()
	out, err := exec.Command("blockdev", "--getsize64", dev).CombinedOutput()
	if err != nil {
		t.Fatalf("blockdev --getsize64 %s: %v %s", dev, err, out)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// findmnt is the column (SOURCE: the device, OPTIONS: the VFS and
// superblock options, ...) findmnt shows for the mount at mnt.
func findmnt(t *testing.T, column, mnt string) string {
	t.Helper()
	out, err := exec.Command("findmnt", "-n", "-o", column, "--mountpoint", mnt).CombinedOutput()
	if err != nil {
		t.Fatalf("findmnt -o %s %s: %v %s", column, mnt, err, out)
	}
	return strings.TrimSpace(string(out))
}

func hasCapSysResource() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && m&(1<<unix.CAP_SYS_RESOURCE) != 0
		}
	}
	return false
}

// checkJournaledResize checks that the image's journal holds a Resize to
// size and its OpFinish with result 0: the lock owner performed it.
func checkJournaledResize(t *testing.T, pool objstore.Pool, imageName string, size uint64) {
	t.Helper()
	ctx := context.Background()
	img, err := image.Open(ctx, pool, imageName)
	if err != nil {
		t.Fatal(err)
	}
	if img.Size() != int64(size) {
		t.Errorf("image has %d bytes, want %d", img.Size(), size)
	}
	oids, err := pool.List(ctx, journal.DataOIDPrefix(pool.ID(), img.ID()))
	if err != nil {
		t.Fatal(err)
	}
	resizes, finishes := map[uint64]bool{}, map[uint64]int32{}
	for _, oid := range oids {
		op := &objstore.ReadOp{}
		res := op.Read(0, 0)
		if err := pool.Read(ctx, oid, op); err != nil {
			if errors.Is(err, objstore.ErrNotFound) {
				continue // trimmed meanwhile
			}
			t.Fatal(err)
		}
		for b := res.Data(); len(b) > 0; {
			e, n, err := journal.DecodeEntry(b)
			if err != nil {
				break
			}
			b = b[n:]
			var ev rbdjournal.EventEntry
			if cephenc.Unmarshal(e.Data, &ev) != nil {
				continue
			}
			switch ev := ev.Event.(type) {
			case rbdjournal.ResizeEvent:
				resizes[ev.OpTid] = ev.Size == size
			case rbdjournal.OpFinishEvent:
				finishes[ev.OpTid] = ev.R
			}
		}
	}
	for tid, ok := range resizes {
		if r, done := finishes[tid]; ok && done && r == 0 {
			t.Logf("journal: Resize to %d (op tid %d) and its OpFinish(0): the lock owner performed the resize", size, tid)
			return
		}
	}
	t.Errorf("the journal lacks a Resize to %d with its OpFinish(0) (resizes %v, finishes %v): the lock owner did not perform it", size, resizes, finishes)
}

// expandWriter writes to a published volume until stopped: fsynced files
// (filesystems) or O_DIRECT blocks (block devices) in the first 16 MiB,
// recording what it wrote.
type expandWriter struct {
	tc     expandCase
	target string
	stopC  chan struct{}
	done   chan struct{}
	mu     sync.Mutex
	items  map[string][32]byte // file name or block offset -> sha256
	err    error
}

func startExpandWriter(t *testing.T, tc expandCase, target string) *expandWriter {
	w := &expandWriter{tc: tc, target: target, stopC: make(chan struct{}), done: make(chan struct{}), items: map[string][32]byte{}}
	go func() { // owned by the test: stop waits for it
		defer close(w.done)
		for i := 0; ; i++ {
			select {
			case <-w.stopC:
				return
			default:
			}
			data := pattern(fmt.Sprintf("%s item %06d ", tc.name, i), 4096)
			var key string
			var err error
			if tc.block {
				off := int64(i%4096) * 4096 // within the first 16 MiB
				key = strconv.FormatInt(off, 10)
				err = writeBlock(target, off, data)
			} else {
				key = fmt.Sprintf("f-%06d", i)
				err = fsprobe.WriteSync(filepath.Join(target, key), bytes.Repeat(data, 16))
				data = bytes.Repeat(data, 16)
			}
			if err != nil {
				w.mu.Lock()
				w.err = fmt.Errorf("write %s: %w", key, err)
				w.mu.Unlock()
				return
			}
			w.mu.Lock()
			w.items[key] = sha256.Sum256(data)
			w.mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	t.Cleanup(func() { w.halt() })
	return w
}

func (w *expandWriter) halt() {
	select {
	case <-w.stopC:
	default:
		close(w.stopC)
	}
	<-w.done
}

// stop ends the writer and returns what it wrote; a write error fails the
// test.
func (w *expandWriter) stop(t *testing.T) map[string][32]byte {
	t.Helper()
	w.halt()
	if w.err != nil {
		t.Fatalf("writer: %v", w.err)
	}
	if len(w.items) < 10 {
		t.Fatalf("writer wrote only %d items", len(w.items))
	}
	return w.items
}

// useNewSpace writes past what the volume held before it grew: a file
// larger than the old filesystem's free space, or a block beyond the old
// end of the device.
func (w *expandWriter) useNewSpace(t *testing.T, oldSize int64) {
	t.Helper()
	data := pattern("new space ", 4096)
	if w.tc.block {
		off := oldSize + 8<<20
		if err := writeBlock(w.target, off, data); err != nil {
			t.Fatalf("write at %d, past the old end: %v", off, err)
		}
		w.items[strconv.FormatInt(off, 10)] = sha256.Sum256(data)
		return
	}
	big := bytes.Repeat(data, int(oldSize+16<<20)/4096) // more than the old filesystem could hold
	if err := fsprobe.WriteSync(filepath.Join(w.target, "big"), big); err != nil {
		t.Fatalf("write a %d-byte file after the expansion: %v", len(big), err)
	}
	w.items["big"] = sha256.Sum256(big)
}

// pattern repeats s over n bytes.
func pattern(s string, n int) []byte {
	return bytes.Repeat([]byte(s), n/len(s)+1)[:n]
}

// verify reads every item back through the publish path.
func (w *expandWriter) verify(t *testing.T, items map[string][32]byte) {
	t.Helper()
	verifyItems(t, w.tc, w.target, items)
}

func verifyItems(t *testing.T, tc expandCase, target string, items map[string][32]byte) {
	t.Helper()
	bad := 0
	for key, sum := range items {
		var got []byte
		var err error
		if tc.block {
			off, _ := strconv.ParseInt(key, 10, 64)
			got, err = readBlock(target, off)
		} else {
			got, err = os.ReadFile(filepath.Join(target, key))
		}
		if err != nil || sha256.Sum256(got) != sum {
			bad++
			if bad < 5 {
				t.Errorf("%s: %v (content matches: %v)", key, err, err == nil && sha256.Sum256(got) == sum)
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d items differ", bad, len(items))
	}
	t.Logf("%s: %d items read back intact", tc.name, len(items))
}

// writeBlock writes 4 KiB at off with O_DIRECT (and fdatasync).
func writeBlock(dev string, off int64, data []byte) error {
	_, err := directIO(dev, off, data, true)
	return err
}

func readBlock(dev string, off int64) ([]byte, error) {
	return directIO(dev, off, make([]byte, 4096), false)
}

// expectCode fails unless err has code and its message says every want.
func expectCode(t *testing.T, what string, err error, code codes.Code, want ...string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code {
		t.Fatalf("%s: %v %q, want %v", what, st.Code(), st.Message(), code)
	}
	for _, w := range want {
		if !strings.Contains(st.Message(), w) {
			t.Errorf("%s: message %q does not say %q", what, st.Message(), w)
		}
	}
	t.Logf("%s: %v: %s", what, st.Code(), st.Message())
}

// checkAfterExpand stages the unstaged volume again as a raw device: it has
// the new size, its filesystem checks clean (e2fsck -fn / xfs_repair -n)
// and fills the device (where it could grow), then unstages it.
func checkAfterExpand(t *testing.T, node csi.NodeClient, id string, volCtx, secrets map[string]string, dir string, tc expandCase) {
	t.Helper()
	target, unstage := stagePublish(t, node, id, blockCap, volCtx, secrets, dir, "check-"+tc.name)
	defer unstage()
	if got := devSize(t, target); got != expandRounded {
		t.Errorf("staged again: the device has %d bytes, want %d", got, expandRounded)
	}
	var out []byte
	var err error
	switch tc.fs {
	case "":
		return
	case "ext4":
		out, err = exec.Command("e2fsck", "-fn", target).CombinedOutput()
	case "xfs":
		out, err = exec.Command("xfs_repair", "-n", target).CombinedOutput()
	}
	if err != nil {
		t.Fatalf("%s check: %v\n%s", tc.fs, err, out)
	}
	t.Logf("%s check clean: %s", tc.fs, lastLines(string(out), 2))
	if tc.fs == "ext4" && !hasCapSysResource() {
		return // it could not grow online here
	}
	// The filesystem spans the grown device.
	var fsBytes int64
	switch tc.fs {
	case "ext4":
		o, err := exec.Command("dumpe2fs", "-h", target).CombinedOutput()
		if err != nil {
			t.Fatalf("dumpe2fs: %v %s", err, o)
		}
		fsBytes = fieldProduct(t, string(o), "Block count:", "Block size:")
	case "xfs":
		o, err := exec.Command("xfs_db", "-r", "-c", "sb 0", "-c", "p dblocks blocksize", target).CombinedOutput()
		if err != nil {
			t.Fatalf("xfs_db: %v %s", err, o)
		}
		fsBytes = fieldProduct(t, string(o), "dblocks =", "blocksize =")
	}
	if fsBytes < expandRounded*95/100 {
		t.Errorf("the %s filesystem spans %d bytes of the %d-byte device", tc.fs, fsBytes, expandRounded)
	}
	t.Logf("%s spans %d of %d bytes", tc.fs, fsBytes, expandRounded)
}

// fieldProduct multiplies the numbers after two labels in out.
func fieldProduct(t *testing.T, out, a, b string) int64 {
	t.Helper()
	num := func(label string) int64 {
		for _, l := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(l), label); ok {
				n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				if err == nil {
					return n
				}
			}
		}
		t.Fatalf("no %q in %s", label, out)
		return 0
	}
	return num(a) * num(b)
}

func lastLines(s string, n int) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, " | ")
}

// TestExpandStaticVolume: a pre-provisioned image (a static
// PersistentVolume: no volume record) grows too; a volume that does not
// exist is NotFound, a request without capacity InvalidArgument.
func TestExpandStaticVolume(t *testing.T) {
	d := serveLocal(t)
	b, ctrl := d.b, d.ctrl
	ctx := context.Background()
	pool, err := b.EnsurePool(ctx, "rbd")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.CreateImage(ctx, pool, "static-1", 32<<20, image.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	id := volume.VolumeID{Backend: storage.BackendLocal, Cluster: b.ClusterID(), Pool: "rbd", Image: "static-1"}.String()
	resp, err := ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: 48 << 20}})
	if err != nil || resp.GetCapacityBytes() != 48<<20 || !resp.GetNodeExpansionRequired() {
		t.Fatalf("expand a static volume: %v, %d bytes", err, resp.GetCapacityBytes())
	}
	if info, err := b.ImageInfo(ctx, pool, "static-1"); err != nil || info.Size != 48<<20 {
		t.Fatalf("image after expansion: %+v, %v", info, err)
	}
	missing := volume.VolumeID{Backend: storage.BackendLocal, Cluster: b.ClusterID(), Pool: "rbd", Image: "csi-vol-000000000000000000000000"}.String()
	_, err = ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: missing, CapacityRange: &csi.CapacityRange{RequiredBytes: 48 << 20}})
	expectCode(t, "expand a missing volume", err, codes.NotFound, "does not exist")
	_, err = ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id})
	expectCode(t, "expand without capacity_range", err, codes.InvalidArgument, "capacity_range is missing")
	_, err = ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "some-other-driver-id", CapacityRange: &csi.CapacityRange{RequiredBytes: 1}})
	expectCode(t, "expand a foreign id", err, codes.NotFound, "does not exist")
}

// TestExpandFollowsResize: a served Block volume whose image grows without
// NodeExpandVolume (`rbd resize` by hand: the node performs it as lock
// owner) has its device follow, as krbd's devices do.
func TestExpandFollowsResize(t *testing.T) {
	kerneltest.RequireRoot(t)
	d := serveLocal(t)
	dir, b, ctrl, node := d.dir, d.b, d.ctrl, d.node
	resize := func(ctx context.Context, imageName string, size int64) error {
		pool, err := b.Pool(ctx, "rbd")
		if err != nil {
			return err
		}
		img, err := image.Open(ctx, pool, imageName)
		if err != nil {
			return err
		}
		// What librbd's `rbd resize` sends to the owner.
		return exclusivelock.ProxyResize(ctx, pool, clsrbd.HeaderOID(img.ID()), uint64(size))
	}
	runFollowResize(t, ctrl, node, dir, nil, nil, resize)
}

// runFollowResize stages and publishes a 64 MiB Block volume, grows its
// image to 96 MiB with resize (not through CSI) and waits for the
// published device to show the new size.
func runFollowResize(t *testing.T, ctrl csi.ControllerClient, node csi.NodeClient, dir string, params, secrets map[string]string,
	resize func(ctx context.Context, imageName string, size int64) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vc := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	vol := createVolume(ctx, t, ctrl, &csi.CreateVolumeRequest{Name: fmt.Sprintf("follow-%d", time.Now().UnixNano()),
		VolumeCapabilities: []*csi.VolumeCapability{vc}, CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, Parameters: params, Secrets: secrets})
	id := vol.GetVolume().GetVolumeId()
	vid, _ := volume.ParseVolumeID(id)
	t.Cleanup(func() {
		if _, err := ctrl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id, Secrets: secrets}); err != nil {
			t.Errorf("delete volume: %v", err)
		}
	})
	staging, target := filepath.Join(dir, "staging-follow"), filepath.Join(dir, "follow-dev")
	if err := os.MkdirAll(staging, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: vc,
		VolumeContext: vol.GetVolume().GetVolumeContext(), Secrets: secrets}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := node.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			t.Errorf("unstage: %v", err)
		}
	})
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target,
		VolumeCapability: vc, VolumeContext: vol.GetVolume().GetVolumeContext()}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
			t.Errorf("unpublish: %v", err)
		}
	})
	if got := devSize(t, target); got != 64<<20 {
		t.Fatalf("device has %d bytes, want %d", got, 64<<20)
	}
	start := time.Now()
	if err := resize(ctx, vid.Image, 96<<20); err != nil {
		t.Fatalf("resize the image: %v", err)
	}
	for devSize(t, target) != 96<<20 {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("the device has %d bytes 10 s after the image grew to %d", devSize(t, target), 96<<20)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("the device followed its image to %d bytes %v after the resize began", 96<<20, time.Since(start).Round(time.Millisecond))
	// Writes past the old end work.
	data := pattern("past the old end ", 4096)
	if err := writeBlock(target, 80<<20, data); err != nil {
		t.Fatal(err)
	}
	if got, err := readBlock(target, 80<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back past the old end: %v", err)
	}
}
