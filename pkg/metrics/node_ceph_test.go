//go:build ceph && pacific

package metrics

import (
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
)

// TestCephNodeCollector is TestNodeCollector on the test cluster (images
// named per test, removed at its end).
func TestCephNodeCollector(t *testing.T) {
	testNodeCollector(t, func(t *testing.T) objstore.Pool { return cephtest.Pool(t) })
}
