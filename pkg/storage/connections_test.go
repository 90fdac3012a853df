package storage_test

import (
	"slices"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
)

// TestLocalConnections: the local backend reports its one cluster as
// connected.
func TestLocalConnections(t *testing.T) {
	b, err := storage.OpenLocal(storage.LocalOptions{Dir: t.TempDir(), ClusterID: "here", NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var r storage.ConnectionReporter = b
	want := []storage.ConnectionCount{{Cluster: "here", State: storage.ConnConnected, Count: 1}}
	if got := r.Connections(); !slices.Equal(got, want) {
		t.Errorf("connections %v, want %v", got, want)
	}
}
