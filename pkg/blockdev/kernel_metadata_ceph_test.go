//go:build ceph && pacific

package blockdev

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/extentlog"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
)

// TestCrashConsistencyFilesystemMetadataCeph is
// TestCrashConsistencyFilesystemMetadata on Ceph: the serving process (a
// librados client) is SIGKILLed crashKills() times per filesystem; each
// new one fences its dead predecessor, checks the in-flight extents, and
// the filesystem checks clean with every fsynced file intact.
func TestCrashConsistencyFilesystemMetadataCeph(t *testing.T) {
	kerneltest.RequireRoot(t)
	conf := cephtest.Conf(t)
	kills := crashKills()
	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			pool, c := connectCeph(t, conf)
			name := fmt.Sprintf("metamode-fs-%s-%d", fs, time.Now().UnixNano())
			spec := cephtest.PoolName + "/" + name
			if out, err := rbdCLI(ctx, conf, "create", "--size", "512M", "--image-feature", "layering,exclusive-lock", spec); err != nil {
				t.Fatalf("rbd create: %v\n%s", err, out)
			}
			img, err := image.Open(ctx, pool, name)
			if err != nil {
				t.Fatal(err)
			}
			s := &server{t: t, dir: t.TempDir(), stateDir: t.TempDir(), policy: AckJournaled, mode: JournalMetadata,
				env: []string{"BLOCKDEV_SERVE_BACKEND=ceph", "TAKEOVER_CEPH_CONF=" + conf, "BLOCKDEV_SERVE_IMAGE=" + name}}
			t.Cleanup(func() { // after s.stop (cleanups run last first)
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				for _, a := range s.killed {
					if a != "" {
						_ = c.Unblocklist(ctx, a)
					}
				}
				if out, err := rbdCLI(ctx, conf, "rm", "--no-progress", spec); err != nil {
					t.Logf("rbd rm %s: %v\n%s", name, err, out)
				}
				if err := extentlog.Remove(ctx, pool, img.ID()); err != nil {
					t.Logf("remove extent log: %v", err)
				}
			})
			t.Cleanup(s.stop)
			filesystemCrashRounds(t, s, fs, kills)
		})
	}
}
