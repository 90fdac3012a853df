package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
)

// TestRestartWithHolderWriteBack: a Block volume with ackPolicy writeback
// and a fuse-holder. A planned stop (SIGTERM) drains the journal, so the
// successor adopts the connection: same device, the pod's fd keeps
// working. Then writes are acknowledged but not flushed, and the plugin is
// SIGKILLed:
//   - with the write-back ring (the default): the holder kept the ring with
//     the connection; the successor re-journals the acknowledged writes and
//     adopts the connection: same device, the pod's fd keeps working and
//     reads every acknowledged write;
//   - without it (--writeback-ring=false): the crash is never handed over
//     silently: the successor refuses the connection (its holder metadata
//     says the acknowledgements were not durable), the connection is
//     aborted (the pod's old fd gets EIO) and the volume is re-served on a
//     new loop device, where every write fsynced before the kill is intact.
func TestRestartWithHolderWriteBack(t *testing.T) {
	for _, ring := range []bool{true, false} {
		t.Run(fmt.Sprintf("ring=%v", ring), func(t *testing.T) { testRestartWithHolderWriteBack(t, ring) })
	}
}

func testRestartWithHolderWriteBack(t *testing.T, ring bool) {
	e := newEnv(t)
	e.startHolder()
	if !ring {
		e.extra = append(e.extra, "--writeback-ring=false")
	}
	e.startNode()
	ctx := context.Background()
	const bs = 64 << 10
	target := e.path("pods", "a", "dev")
	v := e.createPublished(ctx, "holder-writeback", blockCap, 16<<20, map[string]string{"ackPolicy": "writeback"}, target)
	if got := v.vctx["csi-rbdj.dev/ackPolicy"]; got != "writeback" {
		t.Fatalf("volume context ackPolicy %q, want writeback", got)
	}
	var st0 syscall.Stat_t
	e.must(syscall.Stat(target, &st0))

	block := func(blk, gen uint64) []byte {
		b := kerneltest.AlignedBuf(bs)
		stampBlock(b, blk, gen)
		return b
	}
	f, err := os.OpenFile(target, os.O_RDWR|syscall.O_DIRECT, 0) // the pod's fd
	e.must(err)
	defer f.Close()
	write := func(blk, gen uint64, sync bool) error {
		if _, err := f.WriteAt(block(blk, gen), int64(blk)*bs); err != nil {
			return err
		}
		if sync {
			return f.Sync()
		}
		return nil
	}
	check := func(g *os.File, blk, gen uint64, when string) {
		t.Helper()
		r := kerneltest.AlignedBuf(bs)
		if _, err := g.ReadAt(r, int64(blk)*bs); err != nil {
			t.Fatalf("%s: read block %d: %v", when, blk, err)
		}
		if !bytes.Equal(r, block(blk, gen)) {
			t.Fatalf("%s: block %d does not hold generation %d", when, blk, gen)
		}
	}
	e.must(write(0, 1, true))

	// Planned stop: drained, marked durable, adopted.
	e.stopNode()
	e.startNode()
	e.must(write(1, 1, true))
	check(f, 0, 1, "after the SIGTERM restart")
	var st1 syscall.Stat_t
	e.must(syscall.Stat(target, &st1))
	if st1.Rdev != st0.Rdev {
		t.Fatalf("after a planned restart the target is device %d, was %d: not adopted", st1.Rdev, st0.Rdev)
	}

	// Acknowledged, unflushed writes, then a crash.
	for blk := uint64(2); blk < 40; blk++ {
		e.must(write(blk, 1, false))
	}
	e.killNode()
	e.startNode()
	b, err := os.ReadFile(e.path("node.log"))
	e.must(err)
	log := string(b)
	if ring {
		if n := strings.Count(log, "Volume adopted after restart"); n != 2 {
			t.Errorf("%d adoptions, want 2 (the planned stop and the crash)", n)
		}
		if !strings.Contains(log, "Re-journaled the write-back requests a dead predecessor acknowledged") {
			t.Logf("no write-back request needed re-journaling (all were durable at the kill)")
		}
		// The same device, and the pod's fd reads every acknowledged write.
		var st2 syscall.Stat_t
		e.must(syscall.Stat(target, &st2))
		if st2.Rdev != st0.Rdev {
			t.Fatalf("after the crash the target is device %d, was %d: not adopted", st2.Rdev, st0.Rdev)
		}
		check(f, 0, 1, "after the crash")
		for blk := uint64(1); blk < 40; blk++ {
			check(f, blk, 1, "after the crash")
		}
		e.must(write(1, 2, true))
		check(f, 1, 2, "after the crash")
	} else {
		if n := strings.Count(log, "Volume adopted after restart"); n != 1 {
			t.Errorf("%d adoptions, want 1 (the planned stop only)", n)
		}
		if !strings.Contains(log, "acknowledged writes before they were durable") || !strings.Contains(log, "Volume re-served after restart") {
			t.Errorf("the crash of a write-back server was not refused and re-served; log:\n%s", tail(log, 30))
		}
		// The connection was aborted, not handed over: the old fd fails.
		if err := write(1, 2, true); err == nil {
			t.Fatal("the pod's fd kept writing after a crash with undurable acknowledged writes: the connection was handed over")
		} else {
			t.Logf("the pod's old fd after the crash: %v (connection aborted, as it must be)", err)
		}
		var st2 syscall.Stat_t
		e.must(syscall.Stat(target, &st2))
		if st2.Rdev == st0.Rdev {
			t.Fatal("after the crash the target is still the old device")
		}
		g, err := os.OpenFile(target, os.O_RDWR|syscall.O_DIRECT, 0)
		e.must(err)
		check(g, 0, 1, "after the crash")
		check(g, 1, 1, "after the crash")
		g.Close()
	}
	f.Close()
	e.teardown(ctx, v)
}
