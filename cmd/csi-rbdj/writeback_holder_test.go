package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
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
	vc := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	const bs = 64 << 10
	vol, err := e.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "holder-writeback", VolumeCapabilities: []*csi.VolumeCapability{vc},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}, Parameters: map[string]string{"ackPolicy": "writeback"}})
	e.must(err)
	id := vol.GetVolume().GetVolumeId()
	if got := vol.GetVolume().GetVolumeContext()["csi-rbdj.dev/ackPolicy"]; got != "writeback" {
		t.Fatalf("volume context ackPolicy %q, want writeback", got)
	}
	staging, target := e.path("staging"), e.path("pods", "a", "dev")
	e.must(os.Mkdir(staging, 0o755))
	_, err = e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: vc,
		VolumeContext: vol.GetVolume().GetVolumeContext()})
	e.must(err)
	_, err = e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target,
		VolumeCapability: vc, VolumeContext: vol.GetVolume().GetVolumeContext()})
	e.must(err)
	var st0 syscall.Stat_t
	e.must(syscall.Stat(target, &st0))

	block := func(blk, gen uint64) []byte {
		b := alignedBuf(bs)
		for off := 0; off < bs; off += 16 {
			binary.LittleEndian.PutUint64(b[off:], blk)
			binary.LittleEndian.PutUint64(b[off+8:], gen)
		}
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
		r := alignedBuf(bs)
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

	_, err = e.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
	e.must(err)
	_, err = e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
	e.must(err)
	_, err = e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	e.must(err)
	waitNoLoops(t, e.dir)
}

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
func TestRestartWithHolderWriteBackKills(t *testing.T) {
	e := newEnv(t)
	e.startHolder()
	e.extra = append(e.extra, "--local-no-sync=false")
	e.startNode()
	kills, terms := holderKills(t)
	ctx := context.Background()
	vc := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	const size, bs = 32 << 20, 64 << 10
	vol, err := e.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "holder-writeback-kills", VolumeCapabilities: []*csi.VolumeCapability{vc},
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}, Parameters: map[string]string{"ackPolicy": "writeback"}})
	e.must(err)
	id, vctx := vol.GetVolume().GetVolumeId(), vol.GetVolume().GetVolumeContext()
	staging, target := e.path("staging"), e.path("pods", "a", "dev")
	e.must(os.Mkdir(staging, 0o755))
	_, err = e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: vc, VolumeContext: vctx})
	e.must(err)
	_, err = e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc, VolumeContext: vctx})
	e.must(err)
	var st0 syscall.Stat_t
	e.must(syscall.Stat(target, &st0))
	f, err := os.OpenFile(target, os.O_RDWR|syscall.O_DIRECT, 0) // the pod's fd, throughout
	e.must(err)
	defer f.Close()
	stamp := func(b []byte, blk, gen uint64) {
		for off := 0; off < len(b); off += 16 {
			binary.LittleEndian.PutUint64(b[off:], blk)
			binary.LittleEndian.PutUint64(b[off+8:], gen)
		}
	}
	gens := make([]uint64, size/bs) // acknowledged generation per block
	var acked int
	w := &workload{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		buf := alignedBuf(bs)
		for gen := uint64(1); ; gen++ {
			select {
			case <-w.stop:
				return
			default:
			}
			blk := uint64(mrand.IntN(len(gens)))
			stamp(buf, blk, gen)
			start := time.Now()
			_, err := f.WriteAt(buf, int64(blk)*bs)
			if err == nil && gen%50 == 0 {
				err = f.Sync()
			}
			if err == nil {
				w.mu.Lock()
				gens[blk] = gen
				acked++
				w.mu.Unlock()
			}
			w.op(time.Since(start), err)
		}
	}()
	longestStart := e.restarts(t, kills, terms, w)
	ops, maxPause := w.finish(t)
	b, err := os.ReadFile(e.path("node.log"))
	e.must(err)
	rejournals := strings.Count(string(b), "Re-journaled the write-back requests a dead predecessor acknowledged")
	t.Logf("writeback: %d SIGKILL + %d SIGTERM restarts; writer: %d ops (%d acknowledged), longest op after the last restart %v; longest plugin start %v; %d restarts re-journaled acknowledged writes from the ring",
		kills, terms, ops, acked, maxPause.Round(time.Millisecond), longestStart.Round(time.Millisecond), rejournals)
	if kills >= 10 && rejournals == 0 {
		t.Errorf("no kill found an acknowledged write that was not durable yet: the ring was never exercised")
	}
	buf, rbuf := alignedBuf(bs), alignedBuf(bs)
	for blk, gen := range gens {
		if gen == 0 {
			continue
		}
		_, err := f.ReadAt(rbuf, int64(blk)*bs)
		e.must(err)
		stamp(buf, uint64(blk), gen)
		if !bytes.Equal(rbuf, buf) {
			t.Fatalf("block %d lost its acknowledged generation %d (holds %d)", blk, gen, binary.LittleEndian.Uint64(rbuf[8:]))
		}
	}
	var st1 syscall.Stat_t
	e.must(syscall.Stat(target, &st1))
	if st1.Rdev != st0.Rdev {
		t.Errorf("target is device %d at the end, %d at the start", st1.Rdev, st0.Rdev)
	}
	f.Close()
	_, err = e.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
	e.must(err)
	_, err = e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
	e.must(err)
	_, err = e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	e.must(err)
	waitNoLoops(t, e.dir)
}
