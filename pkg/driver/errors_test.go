package driver_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/driver"
	"github.com/csi-rbdj/csi-rbdj/pkg/grpcserver/grpcservertest"
	"github.com/csi-rbdj/csi-rbdj/pkg/nodeserver"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// startDriver serves a driver in mode all over a unix socket on a new
// local cluster and returns clients; everything stops in t.Cleanup.
func startDriver(t *testing.T) (csi.ControllerClient, csi.NodeClient, csi.IdentityClient, string) {
	t.Helper()
	d := serveLocal(t)
	return d.ctrl, d.node, d.ident, d.dir
}

// localDriver is a driver served on a new local cluster (serveLocal).
type localDriver struct {
	ctrl  csi.ControllerClient
	node  csi.NodeClient
	ident csi.IdentityClient
	b     *storage.LocalBackend
	dir   string // the test directory: the cluster in dir/cluster, the node state in dir/node
}

// serveLocal serves a driver in mode all over a unix socket on a new local
// cluster in a test directory; everything stops in t.Cleanup.
func serveLocal(t *testing.T) localDriver {
	t.Helper()
	d := localDriver{dir: t.TempDir()}
	var err error
	d.b, err = storage.OpenLocal(storage.LocalOptions{Dir: filepath.Join(d.dir, "cluster"), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	d.ctrl, d.node, d.ident = serveDriver(t, d.dir, d.b)
	return d
}

// createVolume calls CreateVolume with req, failing the test on an error.
func createVolume(ctx context.Context, t testing.TB, ctrl csi.ControllerClient, req *csi.CreateVolumeRequest) *csi.CreateVolumeResponse {
	t.Helper()
	r, err := ctrl.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// serveDriver serves a driver in mode all on backend b (closed at the
// end) over a unix socket in dir, with its node state in dir/node.
func serveDriver(t *testing.T, dir string, b storage.Backend, opts ...func(*nodeserver.Options)) (csi.ControllerClient, csi.NodeClient, csi.IdentityClient) {
	t.Helper()
	o := nodeserver.Options{NodeID: "n1", StateDir: filepath.Join(dir, "node"), Backend: b}
	for _, f := range opts {
		f(&o)
	}
	ns, err := nodeserver.New(o)
	if err != nil {
		t.Fatal(err)
	}
	d, err := driver.New(driver.Options{Mode: driver.ModeAll, Backend: b, NodeServer: ns, MaxVolumeBytes: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	l, err := driver.Listen("unix://" + filepath.Join(dir, "csi.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // after the server stopped
		sctx, scancel := context.WithTimeout(context.Background(), time.Minute)
		defer scancel()
		ns.Stop(sctx)
		b.Close()
		cleanupNode(t, dir, filepath.Join(dir, "node"))
	})
	conn := grpcservertest.Serve(t, l, func(ctx context.Context, l net.Listener) error {
		ns.Start(ctx)
		return d.Serve(ctx, l)
	})
	return csi.NewControllerClient(conn), csi.NewNodeClient(conn), csi.NewIdentityClient(conn)
}

func mountCap(mode csi.VolumeCapability_AccessMode_Mode, fs string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

var rwo = mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "ext4")

// rpc is a table entry's call: the client method m with req; only the
// error counts.
func rpc[Req, Resp any](ctx context.Context, m func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) func() error {
	return func() error {
		_, err := m(ctx, req)
		return err
	}
}

// TestErrorPaths checks each CSI error path: the status code and that the
// message says what to fix.
func TestErrorPaths(t *testing.T) {
	ctrl, node, _, dir := startDriver(t)
	ctx := context.Background()
	vol := createVolume(ctx, t, ctrl, &csi.CreateVolumeRequest{Name: "existing", VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20}})
	existing := vol.GetVolume().GetVolumeId()
	unknown := volume.VolumeID{Backend: "local", Cluster: "default", Pool: "rbd", Image: volume.ImageNameFor("never-created")}.String()
	otherCluster := volume.VolumeID{Backend: "local", Cluster: "elsewhere", Pool: "rbd", Image: "csi-vol-x"}.String()
	staging := filepath.Join(dir, "staging")
	if err := os.Mkdir(staging, 0o755); err != nil {
		t.Fatal(err)
	}

	create := func(name string, caps []*csi.VolumeCapability, params map[string]string, cr *csi.CapacityRange) func() error {
		return rpc(ctx, ctrl.CreateVolume, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: caps, Parameters: params, CapacityRange: cr})
	}
	stage := func(id string, c *csi.VolumeCapability, path string) func() error {
		return rpc(ctx, node.NodeStageVolume, &csi.NodeStageVolumeRequest{VolumeId: id, VolumeCapability: c, StagingTargetPath: path})
	}
	caps := []*csi.VolumeCapability{rwo}
	for _, tc := range []struct {
		name string
		call func() error
		code codes.Code
		msg  string // a substring the message must hold: what to fix
	}{
		// Bad capability.
		{"create multi-node writer", create("v", []*csi.VolumeCapability{mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, "")}, nil, nil),
			codes.InvalidArgument, "one journal writer"},
		{"create multi-node reader", create("v", []*csi.VolumeCapability{mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY, "")}, nil, nil),
			codes.InvalidArgument, "use a SINGLE_NODE_* mode"},
		{"create unsupported fs", create("v", []*csi.VolumeCapability{mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "btrfs")}, nil, nil),
			codes.InvalidArgument, "use ext4 or xfs"},
		{"create no access type", create("v", []*csi.VolumeCapability{{AccessMode: rwo.AccessMode}}, nil, nil),
			codes.InvalidArgument, "use block or mount"},
		{"create no access mode", create("v", []*csi.VolumeCapability{{AccessType: rwo.AccessType}}, nil, nil),
			codes.InvalidArgument, "no access mode"},
		{"stage multi-node", stage(existing, mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER, ""), staging),
			codes.InvalidArgument, "one node at a time"},
		{"publish multi-node", rpc(ctx, node.NodePublishVolume, &csi.NodePublishVolumeRequest{VolumeId: existing, StagingTargetPath: staging, TargetPath: filepath.Join(dir, "t"),
			VolumeCapability: mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, "")}), codes.InvalidArgument, "one journal writer"},

		// Missing arguments.
		{"create no name", create("", caps, nil, nil), codes.InvalidArgument, "name is missing"},
		{"create no capabilities", create("v", nil, nil, nil), codes.InvalidArgument, "volume capabilities are missing"},
		{"delete no id", rpc(ctx, ctrl.DeleteVolume, &csi.DeleteVolumeRequest{}), codes.InvalidArgument, "volume_id is missing"},
		{"validate no caps", rpc(ctx, ctrl.ValidateVolumeCapabilities, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: existing}), codes.InvalidArgument, "volume_capabilities are missing"},
		{"stage no id", stage("", rwo, staging), codes.InvalidArgument, "volume_id is missing"},
		{"stage no path", stage(existing, rwo, ""), codes.InvalidArgument, "staging_target_path is missing"},
		{"stage no capability", stage(existing, nil, staging), codes.InvalidArgument, "volume_capability is missing"},
		{"publish no target", rpc(ctx, node.NodePublishVolume, &csi.NodePublishVolumeRequest{VolumeId: existing, StagingTargetPath: staging, VolumeCapability: rwo}), codes.InvalidArgument, "target_path is missing"},
		{"publish no staging path", rpc(ctx, node.NodePublishVolume, &csi.NodePublishVolumeRequest{VolumeId: existing, TargetPath: filepath.Join(dir, "t"), VolumeCapability: rwo}), codes.InvalidArgument, "call NodeStageVolume first"},
		{"unstage no path", rpc(ctx, node.NodeUnstageVolume, &csi.NodeUnstageVolumeRequest{VolumeId: existing}), codes.InvalidArgument, "staging_target_path is missing"},
		{"stats no path", rpc(ctx, node.NodeGetVolumeStats, &csi.NodeGetVolumeStatsRequest{VolumeId: existing}), codes.InvalidArgument, "volume_path is missing"},

		// Unknown volume.
		{"validate unknown", rpc(ctx, ctrl.ValidateVolumeCapabilities, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: unknown, VolumeCapabilities: caps}), codes.NotFound, "does not exist"},
		{"validate foreign id", rpc(ctx, ctrl.ValidateVolumeCapabilities, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "pvc-1234", VolumeCapabilities: caps}), codes.NotFound, "not a csi-rbdj volume id"},
		{"validate damaged id", rpc(ctx, ctrl.ValidateVolumeCapabilities, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "rbdj1/local/default/rbd", VolumeCapabilities: caps}), codes.InvalidArgument, "want 5 '/'-separated fields"},
		{"validate other cluster", rpc(ctx, ctrl.ValidateVolumeCapabilities, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: otherCluster, VolumeCapabilities: caps}), codes.FailedPrecondition, "use the plugin configured for that cluster"},
		{"stage unknown", stage(unknown, rwo, staging), codes.NotFound, "does not exist"},
		{"publish unstaged", rpc(ctx, node.NodePublishVolume, &csi.NodePublishVolumeRequest{VolumeId: existing, StagingTargetPath: staging, TargetPath: filepath.Join(dir, "t"), VolumeCapability: rwo}), codes.FailedPrecondition, "call NodeStageVolume first"},
		{"stats unknown", rpc(ctx, node.NodeGetVolumeStats, &csi.NodeGetVolumeStatsRequest{VolumeId: unknown, VolumePath: staging}), codes.NotFound, "not staged on this node"},
		{"list bad token", rpc(ctx, ctrl.ListVolumes, &csi.ListVolumesRequest{StartingToken: "garbage"}), codes.Aborted, "restart the listing without a token"},

		// Capacity too large.
		{"create too large", create("big", caps, nil, &csi.CapacityRange{RequiredBytes: 2 << 40}), codes.OutOfRange, "request less"},
		{"create rounding past limit", create("odd", caps, nil, &csi.CapacityRange{RequiredBytes: 5 << 20, LimitBytes: 6 << 20}),
			codes.OutOfRange, "raise the limit or lower objectOrder"},
		{"create required over limit", create("odd", caps, nil, &csi.CapacityRange{RequiredBytes: 10 << 20, LimitBytes: 6 << 20}),
			codes.InvalidArgument, "exceeds limit_bytes"},
		{"create existing bigger", create("existing", caps, nil, &csi.CapacityRange{RequiredBytes: 64 << 20}),
			codes.AlreadyExists, "outside the requested range"},

		// Wrong parameter.
		{"unknown parameter", create("p", caps, map[string]string{"replicas": "3"}, nil), codes.InvalidArgument, `"replicas": unknown parameter (known: clusterID, pool,`},
		{"journal order too big", create("p", caps, map[string]string{"journalOrder": "40"}, nil), codes.InvalidArgument, `"journalOrder": 40 is out of range [12, 26]`},
		{"journal order not a number", create("p", caps, map[string]string{"journalOrder": "big"}, nil), codes.InvalidArgument, `is not an integer`},
		{"splay width zero", create("p", caps, map[string]string{"journalSplayWidth": "0"}, nil), codes.InvalidArgument, `"journalSplayWidth": 0 is out of range [1, 64]`},
		{"object order", create("p", caps, map[string]string{"objectOrder": "30"}, nil), codes.InvalidArgument, `"objectOrder": 30 is out of range [12, 25]`},
		{"object map feature", create("p", caps, map[string]string{"imageFeatures": "layering,object-map"}, nil), codes.InvalidArgument, `not supported by the journaled data path`},
		{"unknown feature", create("p", caps, map[string]string{"imageFeatures": "turbo"}, nil), codes.InvalidArgument, `"imageFeatures"`},
		{"features without journaling", create("p", caps, map[string]string{"imageFeatures": "layering,exclusive-lock"}, nil), codes.InvalidArgument, `journaling is always on`},
		{"journaling off", create("p", caps, map[string]string{"journaling": "false"}, nil), codes.InvalidArgument, `journaling is always on`},
		{"unknown cluster", create("p", caps, map[string]string{"clusterID": "elsewhere"}, nil), codes.InvalidArgument, `"clusterID": unknown cluster id "elsewhere"`},
		{"fs type", create("p", caps, map[string]string{"fsType": "zfs"}, nil), codes.InvalidArgument, `want one of ext4, xfs`},
		{"ack policy", create("p", caps, map[string]string{"ackPolicy": "never"}, nil), codes.InvalidArgument, `want applied, journaled or writeback`},
		{"existing with other params", create("existing", caps, map[string]string{"journalSplayWidth": "8"}, nil), codes.AlreadyExists, "different parameters"},
		{"empty content source", rpc(ctx, ctrl.CreateVolume, &csi.CreateVolumeRequest{Name: "clone", VolumeCapabilities: caps, VolumeContentSource: &csi.VolumeContentSource{}}), codes.InvalidArgument, "names neither a snapshot nor a volume"},
		{"clone into another pool", rpc(ctx, ctrl.CreateVolume, &csi.CreateVolumeRequest{Name: "clone", VolumeCapabilities: caps, Parameters: map[string]string{"pool": "elsewhere"},
			VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: existing}}}}), codes.InvalidArgument, "clones within one cluster and pool"},
		{"restore from a snapshot id of another driver", rpc(ctx, ctrl.CreateVolume, &csi.CreateVolumeRequest{Name: "clone", VolumeCapabilities: caps,
			VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "pvc-snap-1"}}}}), codes.NotFound, "does not exist"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			st, _ := status.FromError(err)
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
				t.Errorf("got %v %q, want %v with %q", st.Code(), st.Message(), tc.code, tc.msg)
			}
		})
	}
}

// TestCreateVolumeIdempotent: same name and parameters give the same volume,
// rounded up to the object size; ListVolumes pages through them.
func TestCreateVolumeIdempotent(t *testing.T) {
	ctrl, _, id, _ := startDriver(t)
	ctx := context.Background()
	req := &csi.CreateVolumeRequest{Name: "pvc-a", VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 5<<20 + 1},
		Parameters:    map[string]string{"objectOrder": "20", "journalOrder": "20", "journalSplayWidth": "2", "imageFeatures": "layering,journaling", "csi.storage.k8s.io/pvc/name": "a"}}
	a, err := ctrl.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if got := a.GetVolume().GetCapacityBytes(); got != 6<<20 {
		t.Errorf("capacity %d, want %d (rounded up to 1 MiB objects)", got, 6<<20)
	}
	b, err := ctrl.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if a.GetVolume().GetVolumeId() != b.GetVolume().GetVolumeId() || b.GetVolume().GetCapacityBytes() != 6<<20 {
		t.Errorf("second create: %v, want %v", b.GetVolume(), a.GetVolume())
	}
	for i := range 4 {
		if _, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-" + string(rune('b'+i)), VolumeCapabilities: []*csi.VolumeCapability{rwo},
			CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}}); err != nil {
			t.Fatal(err)
		}
	}
	var ids []string
	token := ""
	for range 10 {
		r, err := ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 2, StartingToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range r.GetEntries() {
			ids = append(ids, e.GetVolume().GetVolumeId())
		}
		if token = r.GetNextToken(); token == "" {
			break
		}
	}
	if len(ids) != 5 {
		t.Errorf("listed %d volumes, want 5: %v", len(ids), ids)
	}
	p, err := id.Probe(ctx, &csi.ProbeRequest{})
	if err != nil || !p.GetReady().GetValue() {
		t.Errorf("probe: %v %v", p, err)
	}
	for _, v := range ids {
		if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v}); err != nil {
			t.Fatal(err)
		}
		if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v}); err != nil {
			t.Fatalf("second delete: %v", err)
		}
	}
}
