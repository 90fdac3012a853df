package nodeserver

import (
	"slices"
	"strings"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// TestUnownedMount: a volume served unowned is mounted without journal
// recovery (it would write) and never formatted.
func TestUnownedMount(t *testing.T) {
	for _, tc := range []struct {
		fs   string
		want []string
	}{
		{"ext4", []string{"noload"}},
		{"xfs", []string{"norecovery"}},
	} {
		if got := unownedMountOptions(tc.fs); !slices.Equal(got, tc.want) {
			t.Errorf("%s: options %v, want %v", tc.fs, got, tc.want)
		}
	}
	r := &record{VolumeID: "vol", Device: "/dev/loop9", Unowned: true}
	if err := unownedMountable(r, "ext4"); err != nil {
		t.Errorf("device with ext4: %v", err)
	}
	err := unownedMountable(r, "")
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "never formats") {
		t.Errorf("blank device: %v, want FailedPrecondition saying it is never formatted", err)
	}
}

type recordedEvent struct{ pv, typ, reason, msg string }

type fakeEvents struct{ evs []recordedEvent }

func (f *fakeEvents) PersistentVolumeEvent(pv, typ, reason, msg string) {
	f.evs = append(f.evs, recordedEvent{pv, typ, reason, msg})
}

// TestReportDisconnected: a replicator disconnected by the laggy-client
// bound is a Warning event on the volume's PV when the plugin has a
// recorder and knows the PV; otherwise it is only logged.
func TestReportDisconnected(t *testing.T) {
	c := journal.LaggyClient{ID: "5f1c-peer", ObjectSet: 1, ActiveSet: 9}
	for _, tc := range []struct {
		name     string
		pv       string
		recorder bool
		want     int
	}{
		{"recorded", "pvc-1", true, 1},
		{"no PV name", "", true, 0},
		{"no recorder", "pvc-1", false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeEvents{}
			var events EventRecorder
			if tc.recorder {
				events = f
			}
			reportDisconnected(klog.Background(), events, &record{VolumeID: "vol", PVName: tc.pv, JournalMaxObjectSets: 2}, c)
			if len(f.evs) != tc.want {
				t.Fatalf("events %+v, want %d", f.evs, tc.want)
			}
			if tc.want == 0 {
				return
			}
			e := f.evs[0]
			if e.pv != "pvc-1" || e.typ != "Warning" || e.reason != ReasonReplicatorDisconnected ||
				!strings.Contains(e.msg, "5f1c-peer") || !strings.Contains(e.msg, "journalMaxConcurrentObjectSets=2") || !strings.Contains(e.msg, "resync") {
				t.Fatalf("event %+v", e)
			}
		})
	}
}
