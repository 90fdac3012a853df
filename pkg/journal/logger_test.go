package journal

import (
	"context"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/logtest"
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
	ctx, logs := logtest.Context(t, "volumeID", "vol-1")
	j2, err := Open(ctx, pool, "img", "", Options{Settings: fastSettings})
	if err != nil {
		t.Fatal(err)
	}
	defer j2.Close(context.Background())
	if _, st := replayAll(t, j2); st.Entries != 2 {
		t.Fatalf("replayed %d entries, want 2", st.Entries)
	}
	logs.CheckOnce(t, "volumeID", "vol-1", "Journal replayed")
}
