//go:build ceph && pacific

package driver_test

import (
	"cmp"
	"context"
	"slices"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
)

// TestCephConnections: the ceph backend reports its connections by
// cluster and state (metrics): one per user, a forgotten (fenced) one as
// retired, a failed attempt not at all.
func TestCephConnections(t *testing.T) {
	f := newCephFixture(t)
	conf := writeCephConfig(t, map[string][]string{cephTestCluster: {cephtest.MonHost(t)}, "unreachable": {"127.0.0.1:9"}})
	b := openCeph(t, conf, "")
	defer b.Close()
	r, ok := b.(storage.ConnectionReporter)
	if !ok {
		t.Fatal("the ceph backend does not report its connections")
	}
	ctx := context.Background()
	want := func(what string, w ...storage.ConnectionCount) {
		t.Helper()
		got := r.Connections()
		slices.SortFunc(got, func(a, b storage.ConnectionCount) int { return cmp.Compare(a.State, b.State) })
		if !slices.Equal(got, w) {
			t.Errorf("%s: connections %v, want %v", what, got, w)
		}
	}
	want("before any request")
	rw, err := b.Storage(ctx, cephTestCluster, secrets(f.rw))
	if err != nil {
		t.Fatal(err)
	}
	want("one user", storage.ConnectionCount{Cluster: cephTestCluster, State: storage.ConnConnected, Count: 1})
	if _, err := b.Storage(ctx, cephTestCluster, secrets(f.ro)); err != nil {
		t.Fatal(err)
	}
	want("two users", storage.ConnectionCount{Cluster: cephTestCluster, State: storage.ConnConnected, Count: 1},
		storage.ConnectionCount{Cluster: cephTestCluster, State: storage.ConnConnected, Count: 1})
	if _, err := b.Storage(ctx, "unreachable", secrets(f.rw)); err == nil {
		t.Fatal("connected to unreachable monitors")
	}
	b.(interface{ Forget(storage.Storage) }).Forget(rw)
	want("one forgotten", storage.ConnectionCount{Cluster: cephTestCluster, State: storage.ConnConnected, Count: 1},
		storage.ConnectionCount{Cluster: cephTestCluster, State: storage.ConnRetired, Count: 1})
}
