//go:build ceph && pacific

package main

import (
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
func TestCephRestartWithHolder(t *testing.T) { testCephRestartWithHolder(t, "") }

// TestCephRestartWithHolderWriteBack is TestRestartWithHolderWriteBackKills
// on Ceph: a Block volume with ackPolicy writeback, a fuse-holder keeping
// the connection and the write-back ring, a raw writer (O_DIRECT, an fsync
// every 50 writes) while the plugin is SIGKILLed (each restart fences the
// dead client, replays, re-journals the ring) and stopped with SIGTERM:
// 0 I/O errors, every acknowledged block kept, the same device.
func TestCephRestartWithHolderWriteBack(t *testing.T) { testCephRestartWithHolder(t, "writeback") }

func testCephRestartWithHolder(t *testing.T, ackPolicy string) {
	e := newCephEnv(t)
	kills, terms := holderKills(t)
	prefix, vctx, w := "csirbdj-holder", map[string]string(nil), &blockWriter{syncEvery: 1, verify: true}
	if ackPolicy == "writeback" {
		prefix, vctx, w = "csirbdj-holder-wb", map[string]string{"csi-rbdj.dev/ackPolicy": ackPolicy}, &blockWriter{syncEvery: 50}
	}
	image := e.createImage(prefix)
	h := startHolderChild(t, e.dir)
	args := []string{"--ceph-credentials-dir", e.credsDir, "--fuse-holder-socket", h.sock}
	p := e.startPlugin("node", args...)
	target := p.stageWith(image, vctx)
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
	w.start(f, imageSize)
	var longestStart time.Duration
	for i := range kills + terms {
		time.Sleep(time.Duration(50+mrand.IntN(400)) * time.Millisecond)
		if i < kills {
			p.kill()
		} else {
			p.child.stop(time.Minute)
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
	t.Logf("ceph block (ackPolicy %q): %d SIGKILL + %d SIGTERM restarts, %d adoptions, %d re-journaled acknowledged writes from the ring; writer: %d ops (%d acknowledged), longest op %v; longest plugin start %v",
		ackPolicy, kills, terms, adopted, rejournals, ops, w.acked, maxPause.Round(time.Millisecond), longestStart.Round(time.Millisecond))
	if adopted != kills+terms || strings.Contains(string(b), "Volume re-served after restart") {
		t.Errorf("%d restarts, %d adoptions", kills+terms, adopted)
	}
	w.checkAcknowledged(t)
	checkSameTarget(t, target, st0, ids)
	f.Close()
	p.unstage(image)
}
