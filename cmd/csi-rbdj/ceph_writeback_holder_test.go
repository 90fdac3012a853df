//go:build ceph && pacific

package main

import (
	"bytes"
	"context"
	"encoding/binary"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// TestCephRestartWithHolderWriteBack is TestRestartWithHolderWriteBackKills
// on Ceph: a Block volume with ackPolicy writeback, a fuse-holder keeping
// the connection and the write-back ring, a raw writer (O_DIRECT, an fsync
// every 50 writes) while the plugin is SIGKILLed (each restart fences the
// dead client, replays, re-journals the ring) and stopped with SIGTERM:
// 0 I/O errors, every acknowledged block kept, the same device.
func TestCephRestartWithHolderWriteBack(t *testing.T) {
	e := newCephEnv(t)
	kills, terms := holderKills(t)
	image := e.createImage("csirbdj-holder-wb")
	h := startHolderChild(t, e.dir)
	args := []string{"--ceph-credentials-dir", e.credsDir, "--fuse-holder-socket", h.sock}
	p := e.startPlugin("node", args...)
	ctx := context.Background()
	staging, target := filepath.Join(e.dir, "staging-"+image), filepath.Join(e.dir, "target-"+image)
	if err := os.MkdirAll(staging, 0o755); err != nil {
		t.Fatal(err)
	}
	vctx := map[string]string{"csi-rbdj.dev/ackPolicy": "writeback"}
	if _, err := p.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: volumeID(image), StagingTargetPath: staging,
		VolumeCapability: blockCap, Secrets: e.secrets, VolumeContext: vctx}); err != nil {
		t.Fatalf("NodeStageVolume %s: %v", image, err)
	}
	if _, err := p.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: volumeID(image), StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: blockCap, VolumeContext: vctx}); err != nil {
		t.Fatalf("NodePublishVolume %s: %v", image, err)
	}
	var st0 syscall.Stat_t
	if err := syscall.Stat(target, &st0); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(target, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const bs = 64 << 10
	stamp := func(b []byte, blk, gen uint64) {
		for off := 0; off < len(b); off += 16 {
			binary.LittleEndian.PutUint64(b[off:], blk)
			binary.LittleEndian.PutUint64(b[off+8:], gen)
		}
	}
	gens := make([]uint64, imageSize/bs)
	acked := 0
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
	var longestStart time.Duration
	for i := range kills + terms {
		time.Sleep(time.Duration(50+mrand.IntN(400)) * time.Millisecond)
		if i < kills {
			p.kill()
		} else {
			p.cmd.Process.Signal(syscall.SIGTERM)
			<-p.exited
			p.cmd = nil
		}
		start := time.Now()
		p = e.startPlugin("node", args...)
		if d := time.Since(start); d > longestStart {
			longestStart = d
		}
	}
	ops, maxPause := w.finish(t)
	b, _ := os.ReadFile(p.log)
	adopted := strings.Count(string(b), "Volume adopted after restart")
	rejournals := strings.Count(string(b), "Re-journaled the write-back requests a dead predecessor acknowledged")
	t.Logf("ceph writeback block: %d SIGKILL + %d SIGTERM restarts, %d adoptions, %d re-journaled acknowledged writes from the ring; writer: %d ops (%d acknowledged), longest op %v; longest plugin start %v",
		kills, terms, adopted, rejournals, ops, acked, maxPause.Round(time.Millisecond), longestStart.Round(time.Millisecond))
	if adopted != kills+terms || strings.Contains(string(b), "Volume re-served after restart") {
		t.Errorf("%d restarts, %d adoptions", kills+terms, adopted)
	}
	buf, rbuf := alignedBuf(bs), alignedBuf(bs)
	for blk, gen := range gens {
		if gen == 0 {
			continue
		}
		if _, err := f.ReadAt(rbuf, int64(blk)*bs); err != nil {
			t.Fatal(err)
		}
		stamp(buf, uint64(blk), gen)
		if !bytes.Equal(rbuf, buf) {
			t.Fatalf("block %d lost its acknowledged generation %d (holds %d)", blk, gen, binary.LittleEndian.Uint64(rbuf[8:]))
		}
	}
	var st1 syscall.Stat_t
	if err := syscall.Stat(target, &st1); err != nil || st1.Rdev != st0.Rdev {
		t.Errorf("target device %d at the end, %d at the start (%v)", st1.Rdev, st0.Rdev, err)
	}
	f.Close()
	p.unstage(image)
}
