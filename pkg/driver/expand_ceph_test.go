//go:build ceph && pacific

package driver_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

// TestCephExpandOnline is TestExpandOnline on the Ceph test cluster: the
// controller grows the image through librbd (go-ceph's Image.Resize),
// which, since the node holds the image's lock, proxies the resize to the
// node over the header's watch/notify; the node journals it (Resize +
// OpFinish) and grows the header; NodeExpandVolume grows the loop device
// and the filesystem online.
func TestCephExpandOnline(t *testing.T) {
	requireRoot(t)
	f := newCephFixture(t)
	for _, tc := range []expandCase{
		{name: "xfs", fs: "xfs"},
		{name: "ext4", fs: "ext4"},
		{name: "block", block: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			b := f.backend(t, f.configFile, credentialsDir(t, f.ro))
			ctrl, node, _ := serveDriver(t, dir, b)
			sec := secrets(f.rw)
			params := map[string]string{volume.ParamClusterID: cephTestCluster, volume.ParamPool: cephtest.PoolName}
			pool := func(ctx context.Context) (objstore.Pool, error) {
				st, err := b.Storage(ctx, cephTestCluster, sec)
				if err != nil {
					return nil, err
				}
				return st.Pool(ctx, cephtest.PoolName)
			}
			runExpand(t, ctrl, node, filepath.Join(dir), tc, pool, params, sec)
		})
	}
}
