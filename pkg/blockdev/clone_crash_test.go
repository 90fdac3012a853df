package blockdev

import (
	"context"
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/image/imagetest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
)

// cloneSize is the size of the crash tests' parent and clone: 8 objects of
// 4 MiB.
const cloneSize = 32 << 20

// makeLocalClone creates, on the local backend, a parent image holding
// pattern(7, cloneSize), snapshots it, overwrites its head, and creates the
// journaled image child as a clone of the snapshot (legacy set_parent).
// It returns the parent's snapshot content.
func makeLocalClone(t *testing.T, be takeoverBackend, child string) []byte {
	t.Helper()
	ctx := context.Background()
	pool, _ := be.connect(t)
	parentName := child + "-parent"
	if err := image.Create(ctx, pool, parentName, cloneSize, image.CreateOptions{Order: 22, Features: clsrbd.FeatureLayering}); err != nil {
		t.Fatal(err)
	}
	parent, err := image.Open(ctx, pool, parentName)
	if err != nil {
		t.Fatal(err)
	}
	model := pattern(7, cloneSize, false)
	if _, err := parent.WriteAt(ctx, model, 0); err != nil {
		t.Fatal(err)
	}
	snapID := imagetest.AddSnapshot(t, ctx, pool, parent, "base", clsrbd.SnapshotNamespace{Type: rbdnotify.SnapNamespaceUser})
	if _, err := parent.WriteAt(ctx, pattern(8, cloneSize, false), 0); err != nil {
		t.Fatal(err)
	}
	be.createImage(t, child, cloneSize)
	id, err := clsrbd.GetID(ctx, pool, clsrbd.IDOID(child))
	if err != nil {
		t.Fatal(err)
	}
	var op objstore.WriteOp
	clsrbd.SetParent(&op, pool.ID(), parent.ID(), snapID, cloneSize)
	if err := pool.Operate(ctx, clsrbd.HeaderOID(id), &op); err != nil {
		t.Fatal(err)
	}
	return model
}

// TestCloneCrashLocal runs testCloneCrash on the local backend.
func TestCloneCrashLocal(t *testing.T) {
	be := localBackend(t)
	img := fmt.Sprintf("clone-crash-%d", time.Now().UnixNano()%1e6)
	testCloneCrash(t, be, img, makeLocalClone(t, be, img))
}

// testCloneCrash: a node serving clone img (whose parent's snapshot holds
// model) acknowledges 4 KiB writes into every object once they are
// journaled (each object's first write needs a copy-up of the parent's
// data) and is SIGKILLed right after the last acknowledgement, with
// copy-ups and writes still in flight. The node that takes over replays
// the journal through the same copy-up path: every acknowledged write is
// there, and around each write the object holds the parent's data (a
// write applied without its copy-up would leave zeros); so does the image
// read directly after a clean close.
func testCloneCrash(t *testing.T, be takeoverBackend, img string, model []byte) {
	pool, fencer := be.connect(t)
	a, errLine := startNode(t, be, "a", img, nodeOptions{ackJournaled: true})
	if a == nil {
		t.Fatalf("node a: %s", errLine)
	}
	want := append([]byte(nil), model...)
	rng := rand.New(rand.NewPCG(3, 4))
	const writes = 96
	for i := range writes {
		off := rng.Int64N(cloneSize/4096) * 4096
		seed := int64(1000 + i)
		a.write(off, 4096, seed)
		copy(want[off:], pattern(seed, 4096, false))
	}
	a.signal(syscall.SIGKILL)
	unfenceLater(t, fencer, a.ready["addr"])

	b, errLine := startNode(t, be, "b", img, nodeOptions{})
	if b == nil {
		t.Fatalf("node b could not take over: %s", errLine)
	}
	t.Logf("%s: took over after SIGKILL with %d acknowledged writes in 8 objects: open %v", be.name, writes, b.duration("open").Round(time.Millisecond))
	const chunk = 256 << 10
	bad := 0
	for off := int64(0); off < cloneSize; off += chunk {
		if got, w := b.readCRC(off, chunk), crcOf(want[off:off+chunk]); got != w {
			bad++
			t.Errorf("after takeover: [%d, +%d) crc %s, want %s", off, chunk, got, w)
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d chunks differ after the takeover", bad, cloneSize/chunk)
	}
	b.close()
	for off := int64(0); off < cloneSize; off += chunk {
		if got, _ := imageCRC(t, pool, img, off, chunk); got != crcOf(want[off:off+chunk]) {
			t.Fatalf("image read directly after close: [%d, +%d) differs", off, chunk)
		}
	}
}
