package journal

import (
	"context"
	"strings"
	"testing"

	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
)

// TestLoggerFromOpenContext checks that the journaler logs with the logger
// of Open's context (here: Replay, called with a context without it), with
// the context's volumeID once.
func TestLoggerFromOpenContext(t *testing.T) {
	pool := newPool(t)
	j, tag := newJournal(t, pool, "img", 12)
	appendAll(t, j, tag, [][]byte{[]byte("a"), []byte("b")})
	if err := j.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
	ctx := klog.NewContext(context.Background(), logger.WithValues("volumeID", "vol-1"))
	j2, err := Open(ctx, pool, "img", "", Options{Settings: fastSettings})
	if err != nil {
		t.Fatal(err)
	}
	defer j2.Close(context.Background())
	if _, st := replayAll(t, j2); st.Entries != 2 {
		t.Fatalf("replayed %d entries, want 2", st.Entries)
	}
	logs := logger.GetSink().(ktesting.Underlier).GetBuffer().String()
	var line string
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "Journal replayed") {
			line = l
		}
	}
	if line == "" {
		t.Fatalf("replay not logged; logs:\n%s", logs)
	}
	if strings.Count(line, "volumeID=") != 1 || !strings.Contains(line, `volumeID="vol-1"`) {
		t.Fatalf("replay logged without the context's volumeID once: %s", line)
	}
}
