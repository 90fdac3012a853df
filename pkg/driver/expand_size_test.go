package driver

import (
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestExpandedSize: the size ControllerExpandVolume asks for, for a volume
// of 64 MiB in 4 MiB objects: rounded up to whole objects, the current
// size when it is already large enough, OutOfRange for a limit below the
// current size (volumes never shrink), beyond the driver's maximum or
// below the rounded size.
func TestExpandedSize(t *testing.T) {
	d := &Driver{o: Options{MaxVolumeBytes: 1 << 40}}
	info := storage.ImageInfo{Size: 64 << 20, Order: 22}
	for _, tc := range []struct {
		name     string
		req, lim int64
		want     int64
		code     codes.Code
	}{
		{"grow, whole objects", 128 << 20, 0, 128 << 20, codes.OK},
		{"grow, rounded up", 100<<20 + 1, 0, 104 << 20, codes.OK},
		{"grow within the limit", 100 << 20, 104 << 20, 100 << 20, codes.OK},
		{"same size", 64 << 20, 0, 64 << 20, codes.OK},
		{"smaller, no limit: already large enough", 32 << 20, 0, 64 << 20, codes.OK},
		{"zero required", 0, 0, 64 << 20, codes.OK},
		{"limit below the size: a shrink", 32 << 20, 32 << 20, 0, codes.OutOfRange},
		{"rounding exceeds the limit", 100<<20 + 1, 101 << 20, 0, codes.OutOfRange},
		{"beyond the maximum", 2 << 40, 0, 0, codes.OutOfRange},
		{"negative", -1, 0, 0, codes.InvalidArgument},
		{"required above limit", 200 << 20, 100 << 20, 0, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := d.expandedSize(&csi.CapacityRange{RequiredBytes: tc.req, LimitBytes: tc.lim}, info)
			if c := status.Code(err); c != tc.code {
				t.Fatalf("expandedSize(%d, %d) = %d, %v; want code %v", tc.req, tc.lim, got, err, tc.code)
			}
			if err == nil && got != tc.want {
				t.Fatalf("expandedSize(%d, %d) = %d, want %d", tc.req, tc.lim, got, tc.want)
			}
		})
	}
}
