package main

import (
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
)

// TestLatencySince: a run's line holds the means of what was observed
// during the run only (the sums at its start subtracted), names each kind,
// and leaves out what was not observed.
func TestLatencySince(t *testing.T) {
	l := &latencyObserver{}
	l.ObserveRequest(blockdev.OpWrite, 10*time.Millisecond) // before the run
	before := l.snapshot()
	for _, tc := range []struct {
		name    string
		observe func()
		want    string
	}{
		{"nothing", func() {}, "nothing observed"},
		{"writes, appends and applies", func() {
			l.ObserveRequest(blockdev.OpWrite, 300*time.Microsecond)
			l.ObserveRequest(blockdev.OpWrite, 500*time.Microsecond)
			l.ObserveJournalAppend(200 * time.Microsecond)
			l.ObserveApply(time.Millisecond)
		}, "write 400µs (n=2), journal append 200µs (n=1), apply 1ms (n=1)"},
		{"reads added", func() {
			l.ObserveRequest(blockdev.OpRead, 90*time.Microsecond)
		}, "read 90µs (n=1), write 400µs (n=2), journal append 200µs (n=1), apply 1ms (n=1)"},
		{"an op out of range is dropped", func() {
			l.ObserveRequest(blockdev.NumOps, time.Second)
		}, "read 90µs (n=1), write 400µs (n=2), journal append 200µs (n=1), apply 1ms (n=1)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.observe()
			if got := l.snapshot().since(before); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
	var none *latencyObserver
	if got := none.snapshot().since(none.snapshot()); got != "nothing observed" {
		t.Errorf("nil observer: got %q", got)
	}
}
