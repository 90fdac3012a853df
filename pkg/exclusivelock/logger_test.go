package exclusivelock_test

import (
	"context"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
	"github.com/csi-rbdj/csi-rbdj/pkg/logtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/testwait"
)

// TestLoggerFromAcquireContext checks that the lock logs with the logger of
// Acquire's context, also from its background re-watch (started after
// Acquire returned), with the context's volumeID once per line.
func TestLoggerFromAcquireContext(t *testing.T) {
	dir, _, p := newHeader(t)
	ctx, logs := logtest.Context(t, "volumeID", "vol-1")
	l, err := exclusivelock.Acquire(ctx, p, oid, exclusivelock.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(context.Background())
	id, cookie := l.ClientID(), l.Cookie()
	removeWatchRegistration(t, dir, id.GID, id.Handle)
	testwait.For(t, 5*time.Second, "the cookie to move", func() bool { return l.Cookie() != cookie })
	logs.CheckOnce(t, "volumeID", "vol-1", "Image lock acquired", "Image header watch lost", "Image header watch re-registered")
}
