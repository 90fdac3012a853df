package volume_test

import (
	"strings"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

// TestAckPoliciesMatchBlockdev keeps the names the controller accepts in
// step with the policies the data path implements.
func TestAckPoliciesMatchBlockdev(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"applied", true},
		{"journaled", true},
		{"writeback", true},
		{"write-back", false},
		{"", false},
		{"Applied", false},
		{"async", false},
	} {
		verr := volume.ValidateAckPolicy(tc.name)
		p, berr := blockdev.ParseAckPolicy(tc.name)
		if (verr == nil) != tc.ok || (berr == nil) != tc.ok {
			t.Errorf("%q: volume says %v, blockdev says %v; want ok=%v", tc.name, verr, berr, tc.ok)
		}
		if tc.ok && p.String() != tc.name {
			t.Errorf("%q: blockdev names it %q", tc.name, p)
		}
	}
	if err := volume.ValidateAckPolicy("async"); err == nil || !strings.Contains(err.Error(), "applied, journaled or writeback") {
		t.Errorf("the error does not list the accepted values: %v", err)
	}
	if len(volume.AckPolicies) != len(blockdev.AckPolicies) {
		t.Errorf("volume.AckPolicies %v, blockdev has %v", volume.AckPolicies, blockdev.AckPolicies)
	}
	for _, name := range volume.AckPolicies {
		if _, err := blockdev.ParseAckPolicy(name); err != nil {
			t.Errorf("volume.AckPolicies has %q, which blockdev rejects: %v", name, err)
		}
	}
}
