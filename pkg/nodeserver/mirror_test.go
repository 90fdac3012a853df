package nodeserver

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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
