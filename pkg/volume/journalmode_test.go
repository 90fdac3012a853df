package volume_test

import (
	"strings"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

func TestJournalModeParams(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       map[string]string
		mode     string
		features uint64
		ctxMode  string
		err      string // substring of the error; "" for none
	}{
		{name: "default", in: nil, mode: "full", features: clsrbd.FeatureLayering | clsrbd.FeatureExclusiveLock | clsrbd.FeatureJournaling},
		{name: "full", in: map[string]string{"journalMode": "full"}, mode: "full"},
		{name: "metadata drops librbd journaling", in: map[string]string{"journalMode": "metadata"}, mode: "metadata",
			features: clsrbd.FeatureLayering | clsrbd.FeatureExclusiveLock, ctxMode: "metadata"},
		{name: "metadata with features", in: map[string]string{"journalMode": "metadata", "imageFeatures": "layering"}, mode: "metadata",
			features: clsrbd.FeatureLayering | clsrbd.FeatureExclusiveLock, ctxMode: "metadata"},
		{name: "metadata with journaling feature", in: map[string]string{"journalMode": "metadata", "imageFeatures": "layering,exclusive-lock,journaling"},
			err: `parameter "imageFeatures": "layering,exclusive-lock,journaling" includes journaling`},
		{name: "unknown mode", in: map[string]string{"journalMode": "ordered"},
			err: `parameter "journalMode": unknown journal mode "ordered" (want full or metadata)`},
		{name: "empty mode", in: map[string]string{"journalMode": ""}, err: `unknown journal mode ""`},
		{name: "metadata and mirroring", in: map[string]string{"journalMode": "metadata", "mirroring": storage.MirrorModeJournal},
			err: `parameter "mirroring": "journal" cannot be combined with journalMode "metadata"`},
		{name: "full and mirroring", in: map[string]string{"journalMode": "full", "mirroring": storage.MirrorModeJournal}, mode: "full"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := volume.ParseParams(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseParams(%v) = %v, want an error containing %q", tc.in, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.JournalMode != tc.mode {
				t.Errorf("mode %q, want %q", p.JournalMode, tc.mode)
			}
			if tc.features != 0 && p.Features != tc.features {
				t.Errorf("features %v, want %v", clsrbd.FeatureNames(p.Features), clsrbd.FeatureNames(tc.features))
			}
			if got := p.VolumeContext()[volume.CtxJournalMode]; got != tc.ctxMode {
				t.Errorf("volume context mode %q, want %q", got, tc.ctxMode)
			}
			// A metadata image has no librbd journal: its layout is not
			// compared.
			info := storage.ImageInfo{Order: p.ObjectOrder, Features: p.Features}
			if !p.Metadata() {
				info.JournalOrder, info.JournalSplayWidth = p.JournalOrder, p.JournalSplayWidth
			}
			if d := p.Matches(info); d != "" {
				t.Errorf("Matches: %s", d)
			}
		})
	}
}

// TestJournalModesAgree: the controller's names are the data path's.
func TestJournalModesAgree(t *testing.T) {
	for _, name := range volume.JournalModes {
		m, err := blockdev.ParseJournalMode(name)
		if err != nil || m.String() != name {
			t.Errorf("blockdev.ParseJournalMode(%q) = %v, %v", name, m, err)
		}
	}
	if len(volume.JournalModes) != len(blockdev.JournalModes) {
		t.Errorf("volume.JournalModes %v, blockdev.JournalModes %v", volume.JournalModes, blockdev.JournalModes)
	}
}
