//go:build ceph && pacific

package driver_test

// The two-node tests on the Ceph test cluster: both node plugins use the
// ceph backend with default credentials (client.csi-rbdj-rw, profile rbd:
// it may blocklist dead lock owners).

import (
	"context"
	"testing"

	clslock "github.com/csi-rbdj/csi-rbdj/pkg/cls/lock"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

func init() {
	takeoverBackends["ceph"] = func(t testing.TB, getenv func(string) string) storage.Backend {
		return openCeph(t, getenv("CSI_RBDJ_TAKEOVER_CEPH_CONFIG"), getenv("CSI_RBDJ_TAKEOVER_CEPH_CREDS"))
	}
}

func cephKind(t *testing.T) func(dir string) nodeKind {
	f := newCephFixture(t)
	creds := credentialsDir(t, f.rw)
	return func(string) nodeKind {
		return nodeKind{name: "ceph",
			env: []string{"CSI_RBDJ_TAKEOVER_BACKEND=ceph", "CSI_RBDJ_TAKEOVER_CEPH_CONFIG=" + f.configFile, "CSI_RBDJ_TAKEOVER_CEPH_CREDS=" + creds},
			params: map[string]string{volume.ParamClusterID: cephTestCluster, volume.ParamPool: cephtest.PoolName,
				volume.ParamAckPolicy: "applied"},
			beforeTakeover: unfenceHolderLater,
		}
	}
}

// unfenceHolderLater notes the address of the volume's lock holder (n1)
// and lifts its fence when the test ends: the test cluster is shared.
func unfenceHolderLater(t *testing.T, volumeID string) {
	t.Helper()
	ctx := context.Background()
	vid, err := volume.ParseVolumeID(volumeID)
	if err != nil {
		t.Fatal(err)
	}
	c := cephtest.Connect(t)
	pool := cephtest.PoolOf(t, c)
	id, err := clsrbd.GetID(ctx, pool, clsrbd.IDOID(vid.Image))
	if err != nil {
		t.Fatal(err)
	}
	info, err := clslock.GetLockInfo(ctx, pool, clsrbd.HeaderOID(id), exclusivelock.LockName)
	if err != nil {
		t.Fatal(err)
	}
	for _, li := range info.Lockers {
		addr := li.Addr.ClientAddr()
		t.Cleanup(func() {
			if err := c.Unblocklist(context.Background(), addr); err != nil {
				t.Logf("unblocklist %s: %v", addr, err)
			}
		})
	}
}

func TestNodeStageWhileAnotherNodeHoldsTheLockCeph(t *testing.T) {
	testNodeStageWhileAnotherNodeHoldsTheLock(t, cephKind(t))
}

func TestNodeStageTakeoverCeph(t *testing.T) { testNodeStageTakeover(t, cephKind(t)) }
