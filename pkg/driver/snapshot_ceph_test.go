//go:build ceph && pacific

package driver_test

import (
	"crypto/sha256"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

// TestCephSnapshotRestoreClone is TestSnapshotRestoreClone on the Ceph
// test cluster: the controller snapshots the served volume through librbd
// (go-ceph's Image.CreateSnapshot, proxied to the node, the lock owner);
// the restore and the clone are staged unformatted and verified. librbd
// sees the CSI snapshot (`rbd snap ls`) and reads the restored volume
// equal to the snapshot (`rbd export` of both, over the snapshot's size).
func TestCephSnapshotRestoreClone(t *testing.T) {
	kerneltest.RequireRoot(t)
	f := newCephFixture(t)
	dir := t.TempDir()
	s := f.servePool(t, dir)
	runSnapshotRestoreClone(t, s.ctrl, s.node, filepath.Join(dir), s.pool, s.params, s.sec, uniqueName("snap")+"-", func(src, restored, _ *csi.Volume, sid string) {
		s, err := volume.ParseSnapshotID(sid)
		if err != nil {
			t.Fatal(err)
		}
		r, _ := volume.ParseVolumeID(restored.GetVolumeId())
		if out := f.rbd(t, "snap", "ls", cephtest.PoolName+"/"+s.Image); !strings.Contains(out, s.Snap) {
			t.Errorf("rbd snap ls does not list %s:\n%s", s.Snap, out)
		}
		export := func(spec string) [32]byte {
			cmd := exec.Command("rbd", "-c", f.conf, "export", "--no-progress", spec, "-")
			cmd.Env = append(cmd.Environ(), "CEPH_ARGS=--admin-socket=")
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("rbd export %s: %v", spec, err)
			}
			t.Logf("rbd export %s: %d bytes", spec, len(out))
			return sha256.Sum256(out)
		}
		// The restore is a layered clone librbd recognises.
		if out := f.rbd(t, "info", cephtest.PoolName+"/"+r.Image); !strings.Contains(out, "parent: "+cephtest.PoolName+"/"+s.Image+"@"+s.Snap) {
			t.Errorf("rbd info of the restored volume names no parent %s@%s:\n%s", s.Image, s.Snap, out)
		}
		if out := f.rbd(t, "children", cephtest.PoolName+"/"+s.Image+"@"+s.Snap); !strings.Contains(out, r.Image) {
			t.Errorf("rbd children of the snapshot does not list the restored volume %s:\n%s", r.Image, out)
		}
		if a, b := export(cephtest.PoolName+"/"+s.Image+"@"+s.Snap), export(cephtest.PoolName+"/"+r.Image); a != b {
			t.Errorf("librbd reads the restored volume %s differently from the snapshot %s", r.Image, sid)
		} else {
			t.Logf("librbd reads the restored volume equal to the snapshot (sha256 %x)", a[:8])
		}
	})
}

// TestCephSnapshotUnresponsiveOwner is TestSnapshotUnresponsiveOwner on
// Ceph: a lock whose holder does not watch the header is refused before
// librbd is asked (it would wait for the owner).
func TestCephSnapshotUnresponsiveOwner(t *testing.T) {
	f := newCephFixture(t)
	s := f.servePool(t, t.TempDir())
	runSnapshotUnresponsiveOwner(t, s.ctrl, s.pool, s.params, s.sec, uniqueName("held")+"-")
}
