//go:build ceph && pacific

package driver_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
)

// TestCephServeLibrbdClone: a clone librbd made (`rbd clone` of a
// snapshot of an imported image) is staged by our node: the device reads
// the parent's data; 4 KiB writes into several objects (each copied up
// first with cls rbd.copyup) read back over the parent's data around
// them; after unstaging, librbd reads the clone (`rbd export`) equal to
// what was written over the parent.
func TestCephServeLibrbdClone(t *testing.T) {
	f, _, node, dir := serveCephAsRoot(t)
	ctx := context.Background()
	parent, child := uniqueName("csirbdj-parent"), uniqueName("csirbdj-clone")
	const size = 8 << 20
	model := make([]byte, size)
	if _, err := rand.Read(model); err != nil {
		t.Fatal(err)
	}
	clear(model[2<<20 : 3<<20]) // an object of zeros: nothing to copy up
	file := filepath.Join(dir, "parent.img")
	if err := os.WriteFile(file, model, 0o644); err != nil {
		t.Fatal(err)
	}
	p := cephtest.PoolName + "/"
	f.rbd(t, "import", "--no-progress", "--image-feature", "layering", "--object-size", "1M", file, p+parent)
	t.Cleanup(func() { f.removeImage(t, parent) })
	f.rbd(t, "snap", "create", p+parent+"@base")
	f.rbd(t, "snap", "protect", p+parent+"@base") // clone v1 needs it; v2 accepts it
	t.Cleanup(func() {
		_, _ = cephCLI(ctx, f.conf, "rbd", "snap", "unprotect", p+parent+"@base")
		_, _ = cephCLI(ctx, f.conf, "rbd", "snap", "rm", "--no-progress", p+parent+"@base")
	})
	f.rbd(t, "clone", "--image-feature", "layering,exclusive-lock,journaling", p+parent+"@base", p+child)
	t.Cleanup(func() { f.removeImage(t, child) })
	// The parent's head changes after the snapshot: the clone must not see it.
	f.rbd(t, "bench", "--io-type", "write", "--io-size", "1M", "--io-total", "8M", "--io-pattern", "seq", p+parent)

	writeServedClone(t, node, dir, &csi.NodeStageVolumeRequest{VolumeId: staticVolumeID(child), Secrets: secrets(f.rw)}, "the served clone", model)
	cmd := exec.Command("rbd", "-c", f.conf, "export", "--no-progress", p+child, "-")
	cmd.Env = append(cmd.Environ(), "CEPH_ARGS=--admin-socket=")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("rbd export: %v", err)
	}
	compareModel(t, "rbd export of the clone", out, model)
	t.Log(f.rbd(t, "info", p+child))
}

// writeServedClone stages the clone stage names (with its secrets or
// volume context) as a block device in dir and publishes it, checks that
// it reads model (its parent's data), writes 4 KiB into several of its
// objects (each copied up first) and checks that they read back over the
// parent's data around them, then unpublishes and unstages it. model gets
// the writes.
func writeServedClone(t *testing.T, node csi.NodeClient, dir string, stage *csi.NodeStageVolumeRequest, what string, model []byte) {
	t.Helper()
	ctx := context.Background()
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")
	if err := os.MkdirAll(staging, 0o755); err != nil {
		t.Fatal(err)
	}
	id := stage.GetVolumeId()
	stage.StagingTargetPath, stage.VolumeCapability = staging, blockCap
	if _, err := node.NodeStageVolume(ctx, stage); err != nil {
		t.Fatalf("stage %s: %v", what, err)
	}
	staged := true
	unstage := func() {
		if !staged {
			return
		}
		staged = false
		if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
			t.Errorf("unpublish: %v", err)
		}
		if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			t.Errorf("unstage: %v", err)
		}
	}
	t.Cleanup(unstage)
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: blockCap}); err != nil {
		t.Fatal(err)
	}
	readDev := func() []byte {
		out := make([]byte, 0, len(model))
		for off := int64(0); off < int64(len(model)); off += 4096 {
			b, err := readBlock(target, off)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, b...)
		}
		return out
	}
	compareModel(t, what+" before writes (its parent's data)", readDev(), model)
	for i, off := range []int64{1<<20 + 8192, 2<<20 + 4096, 3<<20 - 4096, 5 << 20, 8<<20 - 4096} {
		data := bytes.Repeat([]byte{byte(0xa0 + i)}, 4096)
		if err := writeBlock(target, off, data); err != nil {
			t.Fatalf("write at %d: %v", off, err)
		}
		copy(model[off:], data)
	}
	compareModel(t, what+" after partial writes (copy-up)", readDev(), model)
	unstage()
}

// compareModel fails the test unless got is model, naming the first
// difference.
func compareModel(t *testing.T, what string, got, model []byte) {
	t.Helper()
	if len(got) != len(model) {
		t.Fatalf("%s: %d bytes, want %d", what, len(got), len(model))
	}
	for i := range got {
		if got[i] != model[i] {
			t.Fatalf("%s: first difference at byte %d (object %d)", what, i, i>>20)
		}
	}
	t.Logf("%s: equal (%d bytes)", what, len(got))
}
