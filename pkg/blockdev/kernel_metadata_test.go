package blockdev

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/extentlog"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"golang.org/x/sys/unix"
)

// metadataFeatures are the features of a journalMode metadata image: no
// librbd journaling.
const metadataFeatures = clsrbd.FeatureLayering | clsrbd.FeatureExclusiveLock

func newMetadataServer(t *testing.T, size int64) (*server, objstore.Pool) {
	dir := t.TempDir()
	pool := openPool(t, dir)
	if err := image.Create(context.Background(), pool, "vol", size, image.CreateOptions{Features: metadataFeatures}); err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, dir: dir, stateDir: t.TempDir(), policy: AckJournaled, mode: JournalMetadata}
	t.Cleanup(s.stop)
	return s, pool
}

// TestCrashConsistencyFilesystemMetadata: ext4 and xfs on a journalMode
// metadata device (data written in place, then its extent logged); the
// serving process is SIGKILLed at random moments while files are written
// and fsynced (CSI_RBDJ_KILLS rounds per filesystem, default 20). After
// each kill and restart the filesystem checks clean, every file whose
// fsync returned is intact, and replay found no torn extent.
func TestCrashConsistencyFilesystemMetadata(t *testing.T) {
	kerneltest.RequireRoot(t)
	kills := crashKills()
	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) {
			s, _ := newMetadataServer(t, 512<<20)
			filesystemCrashRounds(t, s, fs, kills)
		})
	}
}

// crashKills is the number of SIGKILLs per filesystem: 20, 2 with -short,
// or CSI_RBDJ_KILLS.
func crashKills() int {
	kills := 20
	if testing.Short() {
		kills = 2
	}
	if v := os.Getenv("CSI_RBDJ_KILLS"); v != "" {
		fmt.Sscan(v, &kills)
	}
	return kills
}

// filesystemCrashRounds makes fs on the served device, then kills times:
// writes fsynced files, SIGKILLs the serving process at a random moment,
// restarts it (replay), lets the filesystem recover, checks it (fsck) and
// every file whose fsync returned.
func filesystemCrashRounds(t *testing.T, s *server, fs string, kills int) {
	s.start()
	switch fs {
	case "ext4":
		run(t, "mkfs.ext4", "-q", "-F", s.dev)
	case "xfs":
		run(t, "mkfs.xfs", "-q", "-f", s.dev)
	}
	mnt := t.TempDir()
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	next, total, torn := 0, 0, 0
	for kill := 0; kill < kills; kill++ {
		mount(t, s.dev, fs, mnt)
		stop := make(chan struct{})
		var got []int
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); got = writeFiles(mnt, next, stop) }()
		time.Sleep(time.Duration(300+r.IntN(1200)) * time.Millisecond)
		s.crash()
		close(stop)
		wg.Wait()
		unmount(t, mnt)
		cleanupAfterCrash(t, s)
		next += len(got) + 1000
		total += len(got)

		s.start()
		// A write the filesystem had not seen acknowledged may have
		// overwritten an extent logged just before the kill: torn extents
		// are reported, not an error here.
		torn += s.torn
		mount(t, s.dev, fs, mnt)
		unmount(t, mnt)
		fsck(t, fs, s.dev)
		mount(t, s.dev, fs, mnt)
		for _, seq := range got {
			b, err := os.ReadFile(filepath.Join(mnt, fmt.Sprintf("f%06d", seq)))
			if err != nil || !bytes.Equal(b, fileContent(seq)) {
				t.Fatalf("kill %d: fsynced file f%06d lost or damaged: %v", kill, seq, err)
			}
		}
		t.Logf("kill %d: %d files written, fsynced and verified after the restart", kill, len(got))
		for _, seq := range got {
			os.Remove(filepath.Join(mnt, fmt.Sprintf("f%06d", seq)))
		}
		unmount(t, mnt)
	}
	t.Logf("%d kills, %d fsynced files verified, fsck clean after each; replays reported %d torn extents", kills, total, torn)
}

// cleanupAfterCrash tears down the killed server's FUSE mount and loop
// device. A loop device can stay open for a moment after the unmount (udev
// probing it after the change, a lazily detached filesystem finishing):
// ErrBusy is retried for up to 20 seconds.
func cleanupAfterCrash(t *testing.T, s *server) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := fuseloop.Cleanup(context.Background(), s.stateDir, "vol")
		if err == nil {
			return
		}
		if !errors.Is(err, fuseloop.ErrBusy) || time.Now().After(deadline) {
			t.Fatal(err)
		}
		t.Logf("after the kill: %v; retrying", err)
		time.Sleep(200 * time.Millisecond)
	}
}

// TestChangedExtentsAcrossCrash records the writes a raw writer had
// acknowledged on a metadata-mode device, SIGKILLs the server, restarts it
// (replay), writes more, and checks the extent log's listing from the
// position before the first write: it covers every acknowledged write and
// nothing but acknowledged or in-flight ones (4 KiB block granularity).
// Before the kill no two writes overlap, so replay must find every logged
// extent intact (no torn extents).
func TestChangedExtentsAcrossCrash(t *testing.T) {
	kerneltest.RequireRoot(t)
	const blk = 4096
	const blocks = 65536 // 256 MiB
	s, pool := newMetadataServer(t, blocks*blk)
	ctx := context.Background()
	s.start()
	img, err := image.Open(ctx, pool, "vol")
	if err != nil {
		t.Fatal(err)
	}
	if err := extentlog.RegisterConsumer(ctx, pool, img.ID(), "backup"); err != nil {
		t.Fatal(err)
	}
	start, err := extentlog.ChangedExtents(ctx, pool, img.ID(), "backup", extentlog.Position{}, extentlog.Position{})
	if err != nil {
		t.Fatal(err)
	}
	from := start.Last
	acked := make([]bool, blocks)    // written by an acknowledged write since from
	inflight := make([]bool, blocks) // written by a write in flight at a crash
	var mu sync.Mutex
	writeRound := func(round int, d time.Duration, crash bool) int {
		f, err := os.OpenFile(s.dev, os.O_RDWR|unix.O_DIRECT, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var wg sync.WaitGroup
		stop := make(chan struct{})
		n := 0
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(w), uint64(round)))
				cursor := w * blocks / 4
				for {
					select {
					case <-stop:
						return
					default:
					}
					// Each writer owns a quarter of the device; writes of 1 to
					// 16 blocks, in the crash round one after the other (no
					// overlaps), else anywhere in the quarter.
					cnt := 1 + r.IntN(16)
					first := w*blocks/4 + r.IntN(blocks/4-16)
					if crash {
						if cursor+cnt > (w+1)*blocks/4 {
							<-stop
							return
						}
						first, cursor = cursor, cursor+cnt
					}
					buf := kerneltest.AlignedBuf(cnt * blk)
					for i := range buf {
						buf[i] = byte(r.Uint32())
					}
					mu.Lock()
					for b := first; b < first+cnt; b++ {
						inflight[b] = true
					}
					mu.Unlock()
					if _, err := f.WriteAt(buf, int64(first*blk)); err != nil {
						return
					}
					mu.Lock()
					for b := first; b < first+cnt; b++ {
						acked[b] = true
					}
					n++
					mu.Unlock()
				}
			}(w)
		}
		time.Sleep(d)
		if crash {
			s.crash()
		}
		close(stop)
		wg.Wait()
		return n
	}
	n1 := writeRound(1, 700*time.Millisecond, true)
	if err := fuseloop.Cleanup(ctx, s.stateDir, "vol"); err != nil {
		t.Fatal(err)
	}
	s.start() // replays: checks the in-flight extents
	if s.torn != 0 {
		t.Errorf("replay reported %d torn extents", s.torn)
	}
	n2 := writeRound(2, 500*time.Millisecond, false)
	s.stop()

	ch, err := extentlog.ChangedExtents(ctx, pool, img.ID(), "backup", from, extentlog.Position{})
	if err != nil {
		t.Fatal(err)
	}
	listed := make([]bool, blocks)
	for _, e := range ch.Extents {
		if e.Offset%blk != 0 || e.Length%blk != 0 || e.Offset+e.Length > blocks*blk {
			t.Fatalf("listed extent %d+%d is not block aligned or lies outside the device", e.Offset, e.Length)
		}
		for b := e.Offset / blk; b < (e.Offset+e.Length)/blk; b++ {
			listed[b] = true
		}
	}
	// Regions hot at the crash are listed whole (content unknown): a
	// block there may be listed without having been written.
	unknown := make([]bool, blocks)
	nUnknown := 0
	for _, c := range ch.Entries {
		if c.Entry.Kind != extentlog.KindUnknown {
			continue
		}
		nUnknown++
		for b := c.Entry.Offset / blk; b < c.Entry.End()/blk; b++ {
			unknown[b] = true
		}
	}

	nAcked, nListed := 0, 0
	for b := range blocks {
		if acked[b] && !listed[b] {
			t.Fatalf("block %d was written by an acknowledged write but is not listed", b)
		}
		if listed[b] && !acked[b] && !inflight[b] && !unknown[b] {
			t.Fatalf("block %d is listed but was never written", b)
		}
		if acked[b] {
			nAcked++
		}
		if listed[b] {
			nListed++
		}
	}
	t.Logf("%d+%d acknowledged writes around a SIGKILL; %d entries (%d regions of unknown content), %d merged extents, %d blocks listed, %d acknowledged blocks (positions %v..%v)",
		n1, n2, len(ch.Entries), nUnknown, len(ch.Extents), nListed, nAcked, from, ch.Last)
	if n1 == 0 || n2 == 0 {
		t.Fatal("no writes were acknowledged")
	}
}
