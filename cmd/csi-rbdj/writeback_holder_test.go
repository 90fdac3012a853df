package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// TestRestartWithHolderWriteBack: a Block volume with ackPolicy writeback
// and a fuse-holder. A planned stop (SIGTERM) drains the journal, so the
// successor adopts the connection: same device, the pod's fd keeps
// working. A SIGKILL while acknowledged writes may not be durable must
// never be handed over silently: the successor refuses the connection
// (its holder metadata says the acknowledgements were not durable), the
// connection is aborted (the pod's old fd gets EIO) and the volume is
// re-served on a new loop device, where every write that was fsynced
// before the kill is intact.
func TestRestartWithHolderWriteBack(t *testing.T) {
	e := newEnv(t)
	e.startHolder()
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
	for blk := uint64(2); blk < 10; blk++ {
		e.must(write(blk, 1, false))
	}
	e.killNode()
	e.startNode()
	b, err := os.ReadFile(e.path("node.log"))
	e.must(err)
	log := string(b)
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
	f.Close()

	_, err = e.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
	e.must(err)
	_, err = e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
	e.must(err)
	_, err = e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	e.must(err)
	waitNoLoops(t, e.dir)
}
