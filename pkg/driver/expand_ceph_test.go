//go:build ceph && pacific

package driver_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
)

// TestCephExpandOnline is TestExpandOnline on the Ceph test cluster: the
// controller grows the image through librbd (go-ceph's Image.Resize),
// which, since the node holds the image's lock, proxies the resize to the
// node over the header's watch/notify; the node journals it (Resize +
// OpFinish) and grows the header; NodeExpandVolume grows the loop device
// and the filesystem online.
func TestCephExpandOnline(t *testing.T) {
	kerneltest.RequireRoot(t)
	f := newCephFixture(t)
	for _, tc := range []expandCase{
		{name: "xfs", fs: "xfs"},
		{name: "ext4", fs: "ext4"},
		{name: "block", block: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := f.servePool(t, dir)
			runExpand(t, s.ctrl, s.node, filepath.Join(dir), tc, s.pool, s.params, s.sec)
		})
	}
}

// TestCephExpandStatic: a pre-provisioned image (librbd's, no volume
// record) grows through ControllerExpandVolume with nobody serving it
// (librbd takes the lock and resizes); the provisioner's read-only default
// credentials cannot (PermissionDenied naming the user) — the
// controller-expand secret is what grows it.
func TestCephExpandStatic(t *testing.T) {
	f := newCephFixture(t)
	name := uniqueName("static-expand")
	f.createImage(t, name, "layering,exclusive-lock,journaling", 32)
	ctrl, _, _ := f.serve(t, f.configFile, credentialsDir(t, f.ro))
	ctx := context.Background()
	req := &csi.ControllerExpandVolumeRequest{VolumeId: staticVolumeID(name), CapacityRange: &csi.CapacityRange{RequiredBytes: 50 << 20}}
	_, err := ctrl.ControllerExpandVolume(ctx, req)
	expectCode(t, "expand with read-only default credentials", err, codes.PermissionDenied, "client."+cephUserRO)
	req.Secrets = secrets(f.rw)
	resp, err := ctrl.ControllerExpandVolume(ctx, req)
	if err != nil || resp.GetCapacityBytes() != 52<<20 {
		t.Fatalf("expand: %v, %d bytes; want 52 MiB (whole 4 MiB objects)", err, resp.GetCapacityBytes())
	}
	if info := f.rbd(t, "info", cephtest.PoolName+"/"+name); !strings.Contains(info, "size 52 MiB") {
		t.Fatalf("rbd info after expansion:\n%s", info)
	}
}

// TestCephExpandFollowsResize: `rbd resize` of a served Block volume
// (librbd proxies it to the node, the lock owner) grows the device the
// pod sees without a NodeExpandVolume.
func TestCephExpandFollowsResize(t *testing.T) {
	kerneltest.RequireRoot(t)
	f := newCephFixture(t)
	ctrl, node, dir := serveCeph(t, f.configFile, credentialsDir(t, f.ro))
	runFollowResize(t, ctrl, node, dir, cephPoolParams(), secrets(f.rw), func(ctx context.Context, imageName string, size int64) error {
		out, err := cephCLI(ctx, f.conf, "rbd", "resize", "--no-progress", "--size", fmt.Sprintf("%dM", size>>20), cephtest.PoolName+"/"+imageName)
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
}
