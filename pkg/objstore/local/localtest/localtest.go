// Package localtest opens local clusters for the tests of the packages
// above objstore/local.
package localtest

import (
	"context"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/classes"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
)

// Open opens a new client of the local cluster in dir with opts (the
// standard classes if opts.Classes is nil) and returns it with its pool
// "rbd". The client is closed when the test ends.
func Open(t testing.TB, dir string, opts local.Options) (*local.Cluster, objstore.Pool) {
	t.Helper()
	if opts.Classes == nil {
		opts.Classes = classes.Standard()
	}
	c, err := local.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	p, err := c.Pool(context.Background(), "rbd")
	if err != nil {
		t.Fatal(err)
	}
	return c, p
}
