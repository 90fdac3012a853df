package blockdev

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop"
	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop/handovertest"
	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
	"github.com/csi-rbdj/csi-rbdj/pkg/fsprobe"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local/localtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/testproc"
	"golang.org/x/sys/unix"
)

// TestServeHelperProcess is the serving process of the kernel tests: it
// opens the journaled device (replaying its journal), exposes it through
// FUSE and loop, prints "READY <loop device>", and serves until SIGTERM
// (clean close) or SIGKILL (the crash under test).
func TestServeHelperProcess(t *testing.T) {
	dir, policy := helperProcessEnv(t, "BLOCKDEV_SERVE", "helper process for the kernel crash tests")
	ctx := context.Background()
	var err error
	mode := JournalFull
	if m := os.Getenv("BLOCKDEV_SERVE_MODE"); m != "" {
		if mode, err = ParseJournalMode(m); err != nil {
			t.Fatal(err)
		}
	}
	var pool objstore.Pool
	var fencer exclusivelock.Fencer
	if be := os.Getenv("BLOCKDEV_SERVE_BACKEND"); be != "" {
		pool, fencer = helperConnectors[be](t)
	} else {
		c, p := localtest.Open(t, dir, local.Options{})
		pool, fencer = p, c
	}
	name := cmp.Or(os.Getenv("BLOCKDEV_SERVE_IMAGE"), "vol")
	var dead []string
	if a := os.Getenv("BLOCKDEV_SERVE_DEAD"); a != "" {
		dead = []string{a} // the previous serving process, SIGKILLed
	}
	var ring *Ring
	if os.Getenv("BLOCKDEV_SERVE_RING") != "" {
		// The write-back ring the test process keeps (fd 3): what a killed
		// predecessor acknowledged is re-journaled at Open.
		if ring, err = OpenRing(os.NewFile(3, "ring")); err != nil {
			fmt.Printf("ERROR %v\n", err)
			os.Exit(3)
		}
	}
	d, err := Open(ctx, pool, name, Options{AckPolicy: policy, Fencer: fencer, JournalMode: mode, DeadOwners: dead, Ring: ring})
	if err != nil {
		fmt.Printf("ERROR %v\n", err)
		os.Exit(3)
	}
	dev, err := fuseloop.Attach(ctx, d, fuseloop.Options{StateDir: os.Getenv("BLOCKDEV_SERVE_STATE"), Name: "vol", RequestTimeout: 30 * time.Second})
	if err != nil {
		fmt.Printf("ERROR %v\n", err)
		os.Exit(3)
	}
	// The torn extents replay found (metadata mode) follow the device.
	fmt.Printf("READY %s %d %s\n", dev.Path(), d.MetadataReplayStats().TornExtents, d.Owner().Addr)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	<-sig
	if err := dev.Close(ctx); err != nil {
		fmt.Printf("ERROR %v\n", err)
	}
	d.Close(ctx)
}

// helperProcessEnv reads what a serving child process is given: the local
// cluster's directory in <prefix>_DIR and the ack policy in
// <prefix>_POLICY. Without a directory the test was not started as a child
// and skips, saying whose (skip).
func helperProcessEnv(t *testing.T, prefix, skip string) (dir string, policy AckPolicy) {
	t.Helper()
	dir = os.Getenv(prefix + "_DIR")
	if dir == "" {
		t.Skip(skip)
	}
	policy, err := ParseAckPolicy(os.Getenv(prefix + "_POLICY"))
	if err != nil {
		t.Fatal(err)
	}
	return dir, policy
}

// server runs and kills serving processes for one device.
type server struct {
	t        *testing.T
	dir      string
	stateDir string
	policy   AckPolicy
	mode     JournalMode
	cmd      *exec.Cmd
	dev      string
	torn     int      // torn extents the last start reported (metadata mode)
	env      []string // more environment of the serving process
	ring     *Ring    // write-back ring handed to every serving process (fd 3)
	owner    string   // lock holder address of the last serving process
	killed   []string // lock holder addresses of the killed processes
}

func (s *server) start() {
	s.t.Helper()
	cmd := testproc.Command("^TestServeHelperProcess$", "BLOCKDEV_SERVE_DIR="+s.dir, "BLOCKDEV_SERVE_STATE="+s.stateDir, "BLOCKDEV_SERVE_POLICY="+s.policy.String(), "BLOCKDEV_SERVE_MODE="+s.mode.String(), "BLOCKDEV_SERVE_DEAD="+s.owner)
	cmd.Env = append(cmd.Env, s.env...)
	if s.ring != nil {
		cmd.ExtraFiles = []*os.File{s.ring.File()}
		cmd.Env = append(cmd.Env, "BLOCKDEV_SERVE_RING=3")
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.cmd = cmd
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "READY ") {
		s.kill()
		s.t.Fatalf("serving process: %q %v", line, err)
	}
	fields := strings.Fields(strings.TrimPrefix(line, "READY "))
	s.dev = fields[0]
	if len(fields) > 1 {
		fmt.Sscan(fields[1], &s.torn)
	}
	if len(fields) > 2 {
		s.owner = fields[2]
	}
}

func (s *server) kill() {
	if s.cmd != nil {
		s.cmd.Process.Signal(syscall.SIGKILL)
		s.cmd.Wait()
		s.cmd = nil
	}
}

// crash SIGKILLs the server; the caller then unmounts or closes what uses
// the device and runs fuseloop.Cleanup.
func (s *server) crash() {
	s.killed = append(s.killed, s.owner)
	s.kill()
}

func (s *server) stop() {
	if s.cmd != nil {
		s.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { s.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			s.cmd.Process.Kill()
			<-done
		}
		s.cmd = nil
	}
	fuseloop.Cleanup(context.Background(), s.stateDir, "vol")
}

func newServer(t *testing.T, policy AckPolicy, size int64) *server {
	dir := t.TempDir()
	pool := openPool(t, dir)
	if err := image.Create(context.Background(), pool, "vol", size, image.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, dir: dir, stateDir: t.TempDir(), policy: policy}
	t.Cleanup(s.stop)
	return s
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func mount(t *testing.T, dev, fs, mnt string) {
	t.Helper()
	run(t, "mount", "-t", fs, dev, mnt)
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
}

func unmount(t *testing.T, mnt string) {
	t.Helper()
	if err := unix.Unmount(mnt, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
			t.Fatalf("unmount %s: %v", mnt, err)
		}
	}
}

// fileContent is the content of the kernel tests' file seq (4 KiB to
// 204 KiB).
func fileContent(seq int) []byte { return handovertest.RandomContent(seq, 7, 200<<10) }

// writeFiles writes files until an error (the server died) or stop, and
// returns the ones that were fully written, fsynced and whose directory
// entry was fsynced.
func writeFiles(dir string, first int, stop <-chan struct{}) []int {
	var durable []int
	writeFilesEach(dir, first, stop, func(seq int) { durable = append(durable, seq) })
	return durable
}

// writeFilesEach is writeFiles telling durable about each file as soon as
// it is durable.
func writeFilesEach(dir string, first int, stop <-chan struct{}, durable func(seq int)) {
	fsprobe.Files{Dir: dir, Prefix: "f", Content: fileContent}.WriteUntil(first, stop, durable)
}

func fsck(t *testing.T, fs, dev string) {
	t.Helper()
	switch fs {
	case "ext4":
		run(t, "e2fsck", "-fn", dev)
	case "xfs":
		run(t, "xfs_repair", "-n", dev)
	}
}

// TestCrashConsistencyFilesystem: ext4 and xfs on the journaled device,
// every ack policy (write-back too: a filesystem's fsync is a FLUSH); the
// serving process is SIGKILLed at random moments
// while files are written and fsynced. After each kill and replay the
// filesystem checks clean and every file whose fsync returned is intact.
func TestCrashConsistencyFilesystem(t *testing.T) {
	kerneltest.RequireRoot(t)
	kills := 5
	if testing.Short() {
		kills = 2
	}
	for _, fs := range []string{"ext4", "xfs"} {
		for _, policy := range []AckPolicy{AckJournaled, AckApplied, AckWriteBack} {
			t.Run(fs+"/"+policy.String(), func(t *testing.T) {
				filesystemCrashRounds(t, newServer(t, policy, 512<<20), fs, kills)
			})
		}
	}
}

const (
	rawBlock  = 4096
	rawBlocks = 8192 // 32 MiB
	rawMagic  = 0x7264626a626c6b31
)

func rawContent(block, gen uint64) []byte {
	b := make([]byte, rawBlock)
	binary.LittleEndian.PutUint64(b, rawMagic)
	binary.LittleEndian.PutUint64(b[8:], block)
	binary.LittleEndian.PutUint64(b[16:], gen)
	r := rand.New(rand.NewPCG(block, gen))
	for i := 28; i < rawBlock; i++ {
		b[i] = byte(r.Uint32())
	}
	binary.LittleEndian.PutUint32(b[24:], crc32.ChecksumIEEE(b[28:]))
	return b
}

// TestCrashConsistencyRaw: a verifying writer on the raw loop device (8
// writers, O_DIRECT, each block's generation recorded once its write
// returned); after each SIGKILL and replay every block holds its last
// acknowledged generation or the one in flight, never older and never torn.
// Only the policies that acknowledge durable writes: write-back may lose
// acknowledged, unflushed writes (TestWriteBackCrashPrefix checks what it
// keeps).
func TestCrashConsistencyRaw(t *testing.T) {
	kerneltest.RequireRoot(t)
	kills := 3
	if testing.Short() {
		kills = 1
	}
	for _, policy := range []AckPolicy{AckJournaled, AckApplied} {
		t.Run(policy.String(), func(t *testing.T) {
			s := newServer(t, policy, rawBlocks*rawBlock)
			acked := make([]uint64, rawBlocks)    // last acknowledged generation (0: never written)
			inflight := make([]uint64, rawBlocks) // generation being written
			r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
			for kill := 0; kill < kills; kill++ {
				s.start()
				f, err := os.OpenFile(s.dev, os.O_RDWR|unix.O_DIRECT, 0)
				if err != nil {
					t.Fatal(err)
				}
				// Verify what the previous rounds left.
				verifyRaw(t, f, acked, inflight, fmt.Sprintf("kill %d", kill))
				var wg sync.WaitGroup
				var mu sync.Mutex
				writes := 0
				for w := uint64(0); w < 8; w++ {
					wg.Add(1)
					go func(w uint64) {
						defer wg.Done()
						wr := rand.New(rand.NewPCG(w, uint64(kill)))
						buf := kerneltest.AlignedBuf(rawBlock)
						for {
							blk := w + 8*wr.Uint64N(rawBlocks/8) // each writer owns its blocks
							mu.Lock()
							gen := acked[blk] + 1
							inflight[blk] = gen
							mu.Unlock()
							copy(buf, rawContent(blk, gen))
							if _, err := f.WriteAt(buf, int64(blk*rawBlock)); err != nil {
								return
							}
							mu.Lock()
							acked[blk], inflight[blk] = gen, 0
							writes++
							mu.Unlock()
						}
					}(w)
				}
				time.Sleep(time.Duration(300+r.IntN(1000)) * time.Millisecond)
				s.crash()
				wg.Wait()
				f.Close()
				if err := fuseloop.Cleanup(context.Background(), s.stateDir, "vol"); err != nil {
					t.Fatal(err)
				}
				t.Logf("kill %d: %d acknowledged block writes", kill, writes)
			}
			s.start() // the last round's writes are verified on this start too
			f, err := os.OpenFile(s.dev, os.O_RDONLY|unix.O_DIRECT, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			verifyRaw(t, f, acked, inflight, "final")
		})
	}
}

// verifyRaw checks every block holds its last acknowledged generation, or
// the generation that was in flight at the crash, or (if nothing was ever
// acknowledged for it) zeros; then it adopts what it found.
func verifyRaw(t *testing.T, f *os.File, acked, inflight []uint64, when string) {
	t.Helper()
	buf := kerneltest.AlignedBuf(rawBlock)
	zero := make([]byte, rawBlock)
	for blk := uint64(0); blk < rawBlocks; blk++ {
		if _, err := f.ReadAt(buf, int64(blk*rawBlock)); err != nil {
			t.Fatal(err)
		}
		gen, ok := parseRaw(buf, blk)
		switch {
		case ok && (gen == acked[blk] || (inflight[blk] != 0 && gen == inflight[blk])):
			acked[blk] = gen
		case !ok && acked[blk] == 0 && bytes.Equal(buf, zero):
		default:
			t.Fatalf("%s: block %d holds generation %d (valid %v); acknowledged %d, in flight %d",
				when, blk, gen, ok, acked[blk], inflight[blk])
		}
		inflight[blk] = 0
	}
}

func parseRaw(b []byte, blk uint64) (gen uint64, ok bool) {
	if binary.LittleEndian.Uint64(b) != rawMagic || binary.LittleEndian.Uint64(b[8:]) != blk {
		return 0, false
	}
	if binary.LittleEndian.Uint32(b[24:]) != crc32.ChecksumIEEE(b[28:]) {
		return 0, false
	}
	return binary.LittleEndian.Uint64(b[16:]), true
}
