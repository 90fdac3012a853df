package blockdev

import (
	"context"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/logtest"
)

// TestLoggerFromOpenContext checks that the device, its lock and its
// journal log with the logger of Open's context (so with the request's
// volumeID), each line carrying that key once, including Close, which is
// called with a context without that logger.
func TestLoggerFromOpenContext(t *testing.T) {
	pool := openPool(t, t.TempDir())
	newImage(t, pool, "vol", 22)
	ctx, logs := logtest.Context(t, "volumeID", "vol-1")
	d, err := Open(ctx, pool, "vol", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	logs.CheckOnce(t, "volumeID", "vol-1", "Image lock acquired", "Journaled device started", "Journaled device closed", "Image lock released")
}
