package blockdev

import (
	"context"
	"strings"
	"testing"

	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
)

// TestLoggerFromOpenContext checks that the device, its lock and its
// journal log with the logger of Open's context (so with the request's
// volumeID), each line carrying that key once, including Close, which is
// called with a context without that logger.
func TestLoggerFromOpenContext(t *testing.T) {
	pool := openPool(t, t.TempDir())
	newImage(t, pool, "vol", 22)
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
	ctx := klog.NewContext(context.Background(), logger.WithValues("volumeID", "vol-1"))
	d, err := Open(ctx, pool, "vol", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	logs := logger.GetSink().(ktesting.Underlier).GetBuffer().String()
	for _, msg := range []string{"Image lock acquired", "Journaled device started", "Journaled device closed", "Image lock released"} {
		var line string
		for _, l := range strings.Split(logs, "\n") {
			if strings.Contains(l, msg) {
				line = l
				break
			}
		}
		if line == "" {
			t.Errorf("%q not logged; logs:\n%s", msg, logs)
			continue
		}
		if strings.Count(line, "volumeID=") != 1 || !strings.Contains(line, `volumeID="vol-1"`) {
			t.Errorf("%q logged without the context's volumeID once: %s", msg, line)
		}
	}
}
