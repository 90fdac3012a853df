package local

import (
	"context"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/objstoretest"
)

func testOptions() Options {
	cls := objstoretest.Classes()
	cls["crashtest"] = crashClass()
	return Options{Classes: cls}
}

// openT opens a client of dir, closed at the end of the test.
func openT(t testing.TB, dir string, opts Options) *Cluster {
	t.Helper()
	c, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func poolT(t testing.TB, c *Cluster, name string) objstore.Pool {
	t.Helper()
	p, err := c.Pool(context.Background(), name)
	if err != nil {
		t.Fatalf("pool %s: %v", name, err)
	}
	return p
}

func TestContract(t *testing.T) {
	objstoretest.Run(t, func(t *testing.T) objstore.Pool {
		return poolT(t, openT(t, t.TempDir(), testOptions()), "rbd")
	})
}

func TestContractTwoClients(t *testing.T) {
	objstoretest.RunTwoClients(t, func(t *testing.T) (a, b objstore.Pool) {
		dir := t.TempDir()
		return poolT(t, openT(t, dir, testOptions()), "rbd"), poolT(t, openT(t, dir, testOptions()), "rbd")
	})
}
