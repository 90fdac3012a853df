package volume

import (
	"errors"
	"strings"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
)

func TestVolumeIDRoundTrip(t *testing.T) {
	v := VolumeID{Backend: storage.BackendLocal, Cluster: "default", Pool: "rbd", Image: ImageNameFor("pvc-0f6c")}
	got, err := ParseVolumeID(v.String())
	if err != nil || got != v {
		t.Fatalf("ParseVolumeID(%q) = %v, %v", v.String(), got, err)
	}
	if a1, a2 := ImageNameFor("a"), ImageNameFor("a"); ImageNameFor("a") == ImageNameFor("b") || a1 != a2 {
		t.Error("image names must be deterministic and distinct")
	}
	if n := ImageNameFor(strings.Repeat("x", 128)); len(n) != len(imagePrefix)+24 {
		t.Errorf("image name %q: unexpected length", n)
	}
}

func TestParseVolumeIDErrors(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want error
	}{
		{"pvc-1234", ErrForeignVolumeID},
		{"fake-vol-id", ErrForeignVolumeID},
		{"rbdj1/local/default/rbd", ErrMalformedVolumeID},
		{"rbdj1/local/default/rbd/img/extra", ErrMalformedVolumeID},
		{"rbdj1/nfs/default/rbd/img", ErrMalformedVolumeID},
		{"rbdj1/local//rbd/img", ErrMalformedVolumeID},
		{"rbdj1/local/default/rbd/im@g", ErrMalformedVolumeID},
		{"rbdj1/local/default/rbd/" + strings.Repeat("i", 65), ErrMalformedVolumeID},
	} {
		if _, err := ParseVolumeID(tc.id); !errors.Is(err, tc.want) {
			t.Errorf("ParseVolumeID(%q) = %v, want %v", tc.id, err, tc.want)
		}
	}
}

func TestParseParamsDefaults(t *testing.T) {
	p, err := ParseParams(map[string]string{"imageFeatures": "layering,journaling", "journaling": "true", "csi.storage.k8s.io/pv/name": "pv-1"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Features&requiredFeatures != requiredFeatures {
		t.Errorf("features %x: exclusive-lock (which journaling needs) must be added", p.Features)
	}
	if p.Pool != DefaultPool || p.ObjectOrder != DefaultObjectOrder || p.JournalOrder != DefaultJournalOrder ||
		p.JournalSplayWidth != DefaultJournalSplayWidth || p.FsType != DefaultFsType || p.AckPolicy != DefaultAckPolicy {
		t.Errorf("defaults: %+v", p)
	}
}

// TestIDLengthLimit: volume and snapshot ids longer than CSI's 128 bytes
// are refused even when every name in them is valid.
func TestIDLengthLimit(t *testing.T) {
	long := VolumeID{Backend: storage.BackendLocal, Cluster: "default", Pool: strings.Repeat("p", 60), Image: strings.Repeat("i", 60)}
	short := VolumeID{Backend: storage.BackendLocal, Cluster: "default", Pool: "rbd", Image: strings.Repeat("i", 60)}
	for _, tc := range []struct {
		name string
		id   interface{ Validate() error }
		want string // "": valid
	}{
		{"volume", short, ""},
		{"volume too long", long, "id longer than 128 bytes"},
		{"snapshot", SnapshotID{VolumeID: short, Snap: "s"}, ""},
		{"snapshot too long", SnapshotID{VolumeID: short, Snap: strings.Repeat("s", 50)}, "snapshot id longer than 128 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.id.Validate()
			if (tc.want == "" && err != nil) || (tc.want != "" && (err == nil || err.Error() != tc.want)) {
				t.Errorf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
}
