package blockdev

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
)

// TestSnapshotWhileFsyncing: ext4 on the journaled device (loop over
// FUSE, served by another process); a writer creates and fsyncs files
// while a librbd-style client asks the owner for a snapshot. The snapshot
// holds every file whose fsync (and directory fsync) returned before the
// request was sent: its copy mounts (after ext4's own log recovery),
// checks clean, and has them all intact.
func TestSnapshotWhileFsyncing(t *testing.T) {
	kerneltest.RequireRoot(t)
	const size = 256 << 20
	s := newServer(t, AckJournaled, size)
	s.start()
	run(t, "mkfs.ext4", "-q", "-F", s.dev)
	mnt := t.TempDir()
	mount(t, s.dev, "ext4", mnt)

	var (
		mu      sync.Mutex
		durable []int
	)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		writeFilesEach(mnt, 0, stop, func(seq int) {
			mu.Lock()
			durable = append(durable, seq)
			mu.Unlock()
		})
	}()
	time.Sleep(1500 * time.Millisecond)

	pool := openPool(t, s.dir) // the requester: another client of the cluster
	img, err := image.Open(context.Background(), pool, "vol")
	if err != nil {
		t.Fatal(err)
	}
	rq := newSnapRequester(t, pool, clsrbd.HeaderOID(img.ID()))
	mu.Lock()
	before := append([]int(nil), durable...)
	mu.Unlock()
	start := time.Now()
	if r := rq.snapCreate(1, rbdnotify.SnapshotNamespace{}, "live"); r != 0 {
		t.Fatalf("snapshot while fsyncing: %d", r)
	}
	took := time.Since(start)
	time.Sleep(500 * time.Millisecond) // writes after the snapshot
	close(stop)
	<-done
	mu.Lock()
	total := len(durable)
	mu.Unlock()
	unmount(t, mnt)
	t.Logf("%d files fsynced before the snapshot request, %d in all; the snapshot took %v", len(before), total, took.Round(time.Millisecond))
	if len(before) == 0 || total == len(before) {
		t.Fatalf("the writer did not write both before and after the snapshot (%d, %d)", len(before), total)
	}

	// Copy the snapshot out and mount the copy.
	snap, err := img.Snapshot(context.Background(), clsrbd.SnapshotNamespace{}, "live")
	if err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(t.TempDir(), "snap.img")
	f, err := os.Create(copyPath)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := img.ReadAtSnap(context.Background(), buf, off, snap.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	smnt := t.TempDir()
	mount(t, copyPath, "ext4", smnt) // a loop device; ext4 replays its log
	for _, seq := range before {
		b, err := os.ReadFile(filepath.Join(smnt, fmt.Sprintf("f%06d", seq)))
		if err != nil || !bytes.Equal(b, fileContent(seq)) {
			t.Fatalf("file f%06d, fsynced before the snapshot, is missing or damaged in it: %v", seq, err)
		}
	}
	unmount(t, smnt)
	fsck(t, "ext4", copyPath)
}
