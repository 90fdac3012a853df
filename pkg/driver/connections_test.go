package driver_test

import (
	"slices"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/driver"
)

// TestLocalConnections: the local backend reports its one cluster as
// connected.
func TestLocalConnections(t *testing.T) {
	b, err := driver.OpenLocal(driver.LocalOptions{Dir: t.TempDir(), ClusterID: "here", NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var r driver.ConnectionReporter = b
	want := []driver.ConnectionCount{{Cluster: "here", State: driver.ConnConnected, Count: 1}}
	if got := r.Connections(); !slices.Equal(got, want) {
		t.Errorf("connections %v, want %v", got, want)
	}
}
