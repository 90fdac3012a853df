package volume

import (
	"strings"
	"testing"
)

// TestParseParamsDR: the mirroring and laggy-client parameters.
func TestParseParamsDR(t *testing.T) {
	tests := []struct {
		in        map[string]string
		mirroring string
		maxSets   int
		ctx       string // CtxJournalMaxObjectSets in the volume context
		err       string
	}{
		{in: map[string]string{}},
		{in: map[string]string{ParamMirroring: "journal"}, mirroring: "journal"},
		{in: map[string]string{ParamMirroring: "snapshot"}, err: `want "journal"`},
		{in: map[string]string{ParamMirroring: ""}, err: `want "journal"`},
		{in: map[string]string{ParamJournalMaxConcurrentObjectSets: "0"}},
		{in: map[string]string{ParamJournalMaxConcurrentObjectSets: "8"}, maxSets: 8, ctx: "8"},
		{in: map[string]string{ParamJournalMaxConcurrentObjectSets: "-1"}, err: "not an integer in [0, 1048576]"},
		{in: map[string]string{ParamJournalMaxConcurrentObjectSets: "many"}, err: "not an integer"},
		{in: map[string]string{ParamJournalMaxConcurrentObjectSets: "2000000"}, err: "not an integer in"},
	}
	for _, tt := range tests {
		p, err := ParseParams(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%v: %v, want an error with %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", tt.in, err)
			continue
		}
		if p.Mirroring != tt.mirroring || p.JournalMaxObjectSets != tt.maxSets || p.VolumeContext()[CtxJournalMaxObjectSets] != tt.ctx {
			t.Errorf("%v: mirroring %q, max sets %d, context %v", tt.in, p.Mirroring, p.JournalMaxObjectSets, p.VolumeContext())
		}
	}
}
