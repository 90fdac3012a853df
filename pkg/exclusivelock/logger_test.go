package exclusivelock_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
)

// bufferedLogger returns a context whose logger carries volumeID and
// records what it logs.
func bufferedLogger(t *testing.T) (context.Context, func() string) {
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
	ctx := klog.NewContext(context.Background(), logger.WithValues("volumeID", "vol-1"))
	return ctx, func() string { return logger.GetSink().(ktesting.Underlier).GetBuffer().String() }
}

// logLine returns the first logged line containing msg.
func logLine(logs, msg string) string {
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, msg) {
			return l
		}
	}
	return ""
}

// TestLoggerFromAcquireContext checks that the lock logs with the logger of
// Acquire's context, also from its background re-watch (started after
// Acquire returned, from a context that keeps the values), once per key.
func TestLoggerFromAcquireContext(t *testing.T) {
	dir, _, p := newHeader(t)
	ctx, logs := bufferedLogger(t)
	l, err := exclusivelock.Acquire(ctx, p, oid, exclusivelock.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(context.Background())
	id, cookie := l.ClientID(), l.Cookie()
	removeWatchRegistration(t, dir, id.GID, id.Handle)
	waitFor(t, 5*time.Second, "the cookie to move", func() bool { return l.Cookie() != cookie })
	for _, msg := range []string{"Image lock acquired", "Image header watch lost", "Image header watch re-registered"} {
		line := logLine(logs(), msg)
		if line == "" {
			t.Errorf("%q not logged; logs:\n%s", msg, logs())
			continue
		}
		if n := strings.Count(line, "volumeID="); n != 1 || !strings.Contains(line, `volumeID="vol-1"`) {
			t.Errorf("%q logged without the context's volumeID once: %s", msg, line)
		}
	}
}
