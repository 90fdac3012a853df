//go:build ceph && pacific

package main

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
)

// TestStandaloneCSISanityCeph is TestStandaloneCSISanity on the Ceph test
// cluster: the binary built with the ceph tags, `serve --backend ceph` with
// a profile-rbd user as default credentials and as every request's
// secrets (hack/csi-sanity.sh with CSI_SANITY_BACKEND=ceph). It runs in a
// pool of its own that its --ceph-config limits listing to: csi-sanity
// counts the entries of ListVolumes and ListSnapshots before and after it
// creates one, and the tests of other packages create volumes and
// snapshots on the same cluster at the same time.
func TestStandaloneCSISanityCeph(t *testing.T) {
	if testing.Short() {
		t.Skip("builds csi-sanity and the driver binary")
	}
	e := newCephEnv(t)
	pool := fmt.Sprintf("csi-sanity-%x", time.Now().UnixNano())
	if _, err := e.cli("ceph", "osd", "pool", "create", pool, "8"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := e.cli("ceph", "osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it"); err != nil {
			t.Error(err)
		}
	})
	e.rbd("pool", "init", pool)
	cfg := fmt.Sprintf(`[{"clusterID": %q, "monitors": [%q], "pools": [%q]}]`, cephCluster, cephtest.MonHost(t), pool)
	if err := os.WriteFile(e.configFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	out := runCSISanity(t, []string{"ceph", "pacific"},
		"CSI_SANITY_BACKEND=ceph", "CSI_SANITY_CEPH_CONFIG="+e.configFile, "CSI_SANITY_CEPH_CLUSTER="+cephCluster,
		"CSI_SANITY_CEPH_CREDENTIALS="+e.credsDir, "CSI_SANITY_CEPH_POOL="+pool)
	if strings.Contains(out, e.secrets["userKey"]) {
		t.Fatal("the output shows the key")
	}
}
