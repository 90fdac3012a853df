package blockdev

import (
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"golang.org/x/sys/unix"
)

// TestWriteBackCrashPrefix is issue 15's crash test of the write-back
// policy on the local backend: see writeBackCrashRounds.
func TestWriteBackCrashPrefix(t *testing.T) {
	kerneltest.RequireRoot(t)
	s := newServer(t, AckWriteBack, 64<<20)
	writeBackCrashRounds(t, s, writeBackKills())
}

// TestWriteBackCrashRing is TestWriteBackCrashPrefix with a write-back
// ring that outlives the serving process (the test keeps it, as the
// fuse-holder does): after each SIGKILL and replay, every acknowledged
// write is there, flushed or not.
func TestWriteBackCrashRing(t *testing.T) {
	kerneltest.RequireRoot(t)
	s := newServer(t, AckWriteBack, 64<<20)
	s.ring = newTestRing(t, RingSize(0))
	writeBackCrashRounds(t, s, writeBackKills())
}

// writeBackKills is how many times the crash tests of the write-back
// policy kill the server: 50 (CSI_RBDJ_KILLS overrides; -short: 3).
func writeBackKills() int {
	kills := 50
	if testing.Short() {
		kills = 3
	}
	if v := os.Getenv("CSI_RBDJ_KILLS"); v != "" {
		kills = crashKills()
	}
	return kills
}

// Geometry of the write-back crash test: writes of 1..crashMaxBlocks 4 KiB
// blocks at random places in the first crashBlocks blocks, so that they
// overlap a lot.
const (
	crashBlocks    = 2048 // 8 MiB
	crashMaxBlocks = 16
)

// writeBackCrashRounds serves s (ack policy writeback), then kills times:
// a raw-device writer (O_DIRECT, one write at a time, so issue order is
// journal order) does random overlapping overwrites, each block stamped
// with its write's sequence number, and now and then an fsync of the
// device (a FLUSH) or an O_DSYNC write (FUA), recording how many writes
// were acknowledged before the last one that completed; the serving process is SIGKILLed at a random
// moment; a new one replays the journal; the device must then equal the
// result of some prefix of the writes issued in the round, over what it
// held before (checkPrefix), covering every write acknowledged before the
// last completed flush.
func writeBackCrashRounds(t *testing.T, s *server, kills int) {
	s.start()
	base := readStamps(t, s.dev)
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 15))
	seq := uint64(0)
	var totalWrites, totalFlushes, totalLost int
	for kill := 0; kill < kills; kill++ {
		f, err := os.OpenFile(s.dev, os.O_RDWR|unix.O_DIRECT, 0)
		if err != nil {
			t.Fatal(err)
		}
		// Writes through fsync are O_DSYNC: the kernel issues them as FUA
		// writes, which the loop device (no FUA: queue/fua 0, volatile
		// cache) gets from the block layer as the write and a FLUSH.
		fsync, err := os.OpenFile(s.dev, os.O_RDWR|unix.O_DIRECT|unix.O_DSYNC, 0)
		if err != nil {
			t.Fatal(err)
		}
		var (
			mu      sync.Mutex
			writes  []crashWrite
			acked   int // writes acknowledged (a prefix of writes)
			durable int // writes acknowledged before the last completed flush
			flushes int
			fuas    int // O_DSYNC writes
		)
		seed := r.Uint64()
		firstSeq := seq + 1
		seq += 1 << 20 // room for this round's writes
		done := make(chan struct{})
		go func() { // owned by this round: ends when the device fails
			defer close(done)
			wr := rand.New(rand.NewPCG(seed, 1))
			buf := kerneltest.AlignedBuf(crashMaxBlocks * rawBlock)
			for n := uint64(0); ; n++ {
				if wr.IntN(16) == 0 {
					mu.Lock()
					before := acked
					mu.Unlock()
					if err := f.Sync(); err != nil {
						return
					}
					mu.Lock()
					durable = before
					flushes++
					mu.Unlock()
					continue
				}
				w := crashWrite{Seq: firstSeq + n, Blocks: 1 + wr.IntN(crashMaxBlocks)}
				w.Block = wr.IntN(crashBlocks - w.Blocks + 1)
				for i := 0; i < w.Blocks; i++ {
					stampBlock(buf[i*rawBlock:(i+1)*rawBlock], w.Seq, w.Block+i)
				}
				dsync := wr.IntN(16) == 0
				mu.Lock()
				writes = append(writes, w) // issued
				mu.Unlock()
				wf := f
				if dsync {
					wf = fsync
				}
				if _, err := wf.WriteAt(buf[:w.Blocks*rawBlock], int64(w.Block)*rawBlock); err != nil {
					return
				}
				mu.Lock()
				acked++
				if dsync { // durable with everything before it
					durable, fuas = acked, fuas+1
				}
				mu.Unlock()
			}
		}()
		time.Sleep(time.Duration(20+r.IntN(500)) * time.Millisecond)
		s.crash()
		<-done
		f.Close()
		fsync.Close()
		cleanupAfterCrash(t, s)

		s.start() // replays the journal
		state := readStamps(t, s.dev)
		mu.Lock()
		if s.ring != nil {
			durable = acked // the ring keeps every acknowledged write
		}
		k, err := checkPrefix(base, state, writes, durable)
		if err != nil {
			t.Fatalf("kill %d (%d writes issued, %d acknowledged, %d O_DSYNC; %d durable after the last of %d flushes): %v",
				kill, len(writes), acked, fuas, durable, flushes, err)
		}
		t.Logf("kill %d: %d writes issued, %d acknowledged (%d O_DSYNC), %d flushes; %d durable; the device shows the first %d",
			kill, len(writes), acked, fuas, flushes, durable, k)
		totalWrites += len(writes)
		totalFlushes += flushes + fuas
		totalLost += acked - min(k, acked)
		mu.Unlock()
		base = state
	}
	t.Logf("%d kills: %d writes, %d flushes and O_DSYNC writes; every flushed write kept, every state a prefix; %d acknowledged, unflushed writes lost in all",
		kills, totalWrites, totalFlushes, totalLost)
}

// readStamps reads the test area of dev (O_DIRECT) and parses each block.
func readStamps(t *testing.T, dev string) []uint64 {
	t.Helper()
	buf := kerneltest.ReadDirect(t, dev, 0, crashBlocks*rawBlock)
	out := make([]uint64, crashBlocks)
	for b := range out {
		out[b] = parseStamp(buf[b*rawBlock:(b+1)*rawBlock], b)
	}
	return out
}
