package volume

import (
	"strings"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// kindBackend is a backend that only knows its kind (all Resolve* ask).
type kindBackend struct {
	storage.Backend
	kind string
}

func (b kindBackend) Kind() string { return b.kind }

// TestResolveIDs: volume and snapshot ids from requests resolve with the
// same codes, each naming its field and kind.
func TestResolveIDs(t *testing.T) {
	local := kindBackend{kind: storage.BackendLocal}
	vol := VolumeID{Backend: storage.BackendLocal, Cluster: "default", Pool: "rbd", Image: "csi-vol-1"}
	snap := SnapshotID{VolumeID: vol, Snap: "csi-snap-1"}
	cephVol := VolumeID{Backend: storage.BackendCeph, Cluster: "ceph-a", Pool: "rbd", Image: "csi-vol-1"}
	cephSnap := SnapshotID{VolumeID: cephVol, Snap: "csi-snap-1"}
	resolveVol := func(id string) (string, error) {
		v, err := ResolveVolumeID(local, id)
		return v.String(), err
	}
	resolveSnap := func(id string) (string, error) {
		s, err := ResolveSnapshotID(local, id)
		return s.String(), err
	}
	for _, tc := range []struct {
		name    string
		resolve func(string) (string, error)
		id      string
		code    codes.Code
		msg     string // in the message; with OK: the id resolved
	}{
		{"volume", resolveVol, vol.String(), codes.OK, vol.String()},
		{"volume missing", resolveVol, "", codes.InvalidArgument, "volume_id is missing"},
		{"volume foreign", resolveVol, "pvc-1234", codes.NotFound, `volume "pvc-1234" does not exist`},
		{"volume damaged", resolveVol, "rbdj1/local/default/rbd", codes.InvalidArgument, "want 5 '/'-separated fields"},
		{"volume of another backend", resolveVol, cephVol.String(), codes.FailedPrecondition,
			`volume "` + cephVol.String() + `" belongs to cluster "ceph-a" of backend "ceph", but this plugin serves backend "local"`},
		{"snapshot", resolveSnap, snap.String(), codes.OK, snap.String()},
		{"snapshot missing", resolveSnap, "", codes.InvalidArgument, "snapshot_id is missing"},
		{"snapshot foreign", resolveSnap, "pvc-snap-1", codes.NotFound, `snapshot "pvc-snap-1" does not exist`},
		{"snapshot damaged", resolveSnap, vol.String(), codes.InvalidArgument, "no '@<snapshot>'"},
		{"snapshot of another backend", resolveSnap, cephSnap.String(), codes.FailedPrecondition,
			`snapshot "` + cephSnap.String() + `" belongs to cluster "ceph-a" of backend "ceph", but this plugin serves backend "local"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.resolve(tc.id)
			if tc.code == codes.OK {
				if err != nil || got != tc.msg {
					t.Fatalf("resolved %q, %v; want %q", got, err, tc.msg)
				}
				return
			}
			st, _ := status.FromError(err)
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
				t.Errorf("got %v %q, want %v with %q", st.Code(), st.Message(), tc.code, tc.msg)
			}
		})
	}
}
