//go:build ceph && pacific

package main

import (
	"strings"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
)

// TestStandaloneCSISanityCeph is TestStandaloneCSISanity on the Ceph test
// cluster: the binary built with the ceph tags, `serve --backend ceph` with
// a profile-rbd user as default credentials and as every request's
// secrets (hack/csi-sanity.sh with CSI_SANITY_BACKEND=ceph).
func TestStandaloneCSISanityCeph(t *testing.T) {
	if testing.Short() {
		t.Skip("builds csi-sanity and the driver binary")
	}
	e := newCephEnv(t)
	out := runCSISanity(t, []string{"ceph", "pacific"},
		"CSI_SANITY_BACKEND=ceph", "CSI_SANITY_CEPH_CONFIG="+e.configFile, "CSI_SANITY_CEPH_CLUSTER="+cephCluster,
		"CSI_SANITY_CEPH_CREDENTIALS="+e.credsDir, "CSI_SANITY_CEPH_POOL="+cephtest.PoolName)
	if strings.Contains(out, e.secrets["userKey"]) {
		t.Fatal("the output shows the key")
	}
}
