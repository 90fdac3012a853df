//go:build ceph && pacific

package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCephRestartWithHolder: a Block volume on the Ceph backend, a
// fuse-holder, and a raw-device writer (O_DIRECT, one fd opened before the
// first kill) while the plugin is SIGKILLed and restarted (each restart
// takes the image lock over and fences the dead client) and stopped with
// SIGTERM: 0 I/O errors, every acknowledged block kept, the same device.
func TestCephRestartWithHolder(t *testing.T) {
	e := newCephEnv(t)
	kills, terms := holderKills(t)
	image := e.createImage("csirbdj-holder")
	h := startHolderChild(t, e.dir)
	args := []string{"--ceph-credentials-dir", e.credsDir, "--fuse-holder-socket", h.sock}
	p := e.startPlugin("node", args...)
	target := p.stage(image)
	var st0 syscall.Stat_t
	if err := syscall.Stat(target, &st0); err != nil {
		t.Fatal(err)
	}
	ids := mountIDs(target)
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
	w := &workload{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		buf, rbuf := alignedBuf(bs), alignedBuf(bs)
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
			if err == nil {
				err = f.Sync()
			}
			if err == nil {
				gens[blk] = gen
				old := uint64(mrand.IntN(len(gens)))
				if _, err = f.ReadAt(rbuf, int64(old)*bs); err == nil && gens[old] != 0 {
					stamp(buf, old, gens[old])
					if !bytes.Equal(rbuf, buf) {
						err = fmt.Errorf("block %d: want generation %d, read %d", old, gens[old], binary.LittleEndian.Uint64(rbuf[8:]))
					}
				}
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
	t.Logf("ceph block: %d SIGKILL + %d SIGTERM restarts, %d adoptions; writer: %d ops, longest op %v; longest plugin start %v",
		kills, terms, adopted, ops, maxPause.Round(time.Millisecond), longestStart.Round(time.Millisecond))
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
			t.Fatalf("block %d lost its acknowledged generation %d", blk, gen)
		}
	}
	var st1 syscall.Stat_t
	if err := syscall.Stat(target, &st1); err != nil || st1.Rdev != st0.Rdev {
		t.Errorf("target device %d at the end, %d at the start (%v)", st1.Rdev, st0.Rdev, err)
	}
	if got := mountIDs(target); strings.Join(got, ",") != strings.Join(ids, ",") {
		t.Errorf("publish mount ids %v at the end, %v at the start", got, ids)
	}
	f.Close()
	p.unstage(image)
}
