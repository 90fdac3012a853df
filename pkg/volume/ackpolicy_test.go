package volume_test

import (
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
	for _, name := range volume.AckPolicies {
		if _, err := blockdev.ParseAckPolicy(name); err != nil {
			t.Errorf("volume.AckPolicies has %q, which blockdev rejects: %v", name, err)
		}
	}
}
