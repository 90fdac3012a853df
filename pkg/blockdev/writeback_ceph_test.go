//go:build ceph && pacific

package blockdev

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
)

// cephWriteBackServer creates a journaled image of size on the test
// cluster (as librbd would: rbd create with journaling) and returns a
// server that serves it with ack policy writeback. Its cleanups stop the
// server, unblocklist the killed servers and remove the image.
func cephWriteBackServer(t *testing.T, prefix string, size int64) *server {
	t.Helper()
	conf := cephtest.Conf(t)
	_, c := connectCeph(t, conf)
	name := fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano())
	spec := cephtest.PoolName + "/" + name
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := rbdCLI(ctx, conf, "create", "--size", strconv.FormatInt(size>>20, 10)+"M",
		"--image-feature", "layering,exclusive-lock,journaling", spec); err != nil {
		t.Fatalf("rbd create: %v\n%s", err, out)
	}
	s := &server{t: t, dir: t.TempDir(), stateDir: t.TempDir(), policy: AckWriteBack,
		env: []string{"BLOCKDEV_SERVE_BACKEND=ceph", "TAKEOVER_CEPH_CONF=" + conf, "BLOCKDEV_SERVE_IMAGE=" + name}}
	t.Cleanup(func() { // after s.stop (cleanups run last first)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		for _, a := range s.killed {
			if a != "" {
				_ = c.Unblocklist(ctx, a)
			}
		}
		for i := 0; i < 60; i++ { // a killed server's watch lingers up to 30 s
			out, err := rbdCLI(ctx, conf, "rm", "--no-progress", spec)
			if err == nil {
				return
			}
			if i == 59 {
				t.Logf("rbd rm %s: %v\n%s", name, err, out)
			}
			time.Sleep(time.Second)
		}
	})
	t.Cleanup(s.stop)
	return s
}

// TestWriteBackCrashPrefixCeph is TestWriteBackCrashPrefix on Ceph: every
// new serving process fences its SIGKILLed predecessor (blocklist) and
// replays its journal.
func TestWriteBackCrashPrefixCeph(t *testing.T) {
	kerneltest.RequireRoot(t)
	s := cephWriteBackServer(t, "wb-crash", 64<<20)
	writeBackCrashRounds(t, s, writeBackKills())
}

// TestCrashConsistencyFilesystemWriteBackCeph: ext4 and xfs on a
// write-back device on Ceph, crashKills() SIGKILLs each: fsck clean and
// every fsynced file intact after each replay.
func TestCrashConsistencyFilesystemWriteBackCeph(t *testing.T) {
	kerneltest.RequireRoot(t)
	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) {
			s := cephWriteBackServer(t, "wb-fs-"+fs, 512<<20)
			filesystemCrashRounds(t, s, fs, crashKills())
		})
	}
}

// TestWriteBackCrashRingCeph is TestWriteBackCrashRing on Ceph: with the
// write-back ring, no acknowledged write is lost to a SIGKILL, flushed or
// not.
func TestWriteBackCrashRingCeph(t *testing.T) {
	kerneltest.RequireRoot(t)
	s := cephWriteBackServer(t, "wb-ring", 64<<20)
	s.ring = newTestRing(t, RingSize(0))
	writeBackCrashRounds(t, s, writeBackKills())
}
