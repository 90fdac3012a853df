package metrics

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestCSICalls counts calls through the interceptor by method and code.
func TestCSICalls(t *testing.T) {
	c := NewCSICalls()
	for _, call := range []struct {
		method string
		err    error
	}{
		{"/csi.v1.Controller/CreateVolume", nil},
		{"/csi.v1.Controller/CreateVolume", nil},
		{"/csi.v1.Controller/CreateVolume", status.Error(codes.InvalidArgument, "bad")},
		{"/csi.v1.Node/NodeStageVolume", status.Error(codes.FailedPrecondition, "in use")},
		{"/csi.v1.Identity/Probe", errors.New("plain")},
	} {
		info := &grpc.UnaryServerInfo{FullMethod: call.method}
		resp, err := c.Interceptor(context.Background(), "req", info, func(context.Context, any) (any, error) {
			return "resp", call.err
		})
		if resp != "resp" || !errors.Is(err, call.err) {
			t.Fatalf("interceptor changed the call's outcome: %v %v", resp, err)
		}
	}
	want := `
# HELP csi_rbdj_csi_calls_total CSI calls served, by method (e.g. CreateVolume, NodeStageVolume) and gRPC status code (OK, InvalidArgument, ...).
# TYPE csi_rbdj_csi_calls_total counter
csi_rbdj_csi_calls_total{code="FailedPrecondition",method="NodeStageVolume"} 1
csi_rbdj_csi_calls_total{code="InvalidArgument",method="CreateVolume"} 1
csi_rbdj_csi_calls_total{code="OK",method="CreateVolume"} 2
csi_rbdj_csi_calls_total{code="Unknown",method="Probe"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "csi_rbdj_csi_calls_total"); err != nil {
		t.Error(err)
	}
	// One histogram per method and code.
	if n := testutil.CollectAndCount(c, "csi_rbdj_csi_call_duration_seconds"); n != 4 {
		t.Errorf("%d duration series, want 4", n)
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

// TestBackend sums what the backend reports by cluster and state.
func TestBackend(t *testing.T) {
	b := NewBackend(func() []ConnectionCount {
		return []ConnectionCount{
			{Cluster: "ceph-a", State: "connected", Count: 1},
			{Cluster: "ceph-a", State: "connected", Count: 1}, // another user
			{Cluster: "ceph-a", State: "retired", Count: 1},
			{Cluster: "ceph-b", State: "connecting", Count: 1},
		}
	})
	want := `
# HELP csi_rbdj_backend_connections Connections the plugin's storage backend holds, by cluster id and state (connecting, connected, retired: dropped after this client was fenced, closed at shutdown).
# TYPE csi_rbdj_backend_connections gauge
csi_rbdj_backend_connections{cluster="ceph-a",state="connected"} 2
csi_rbdj_backend_connections{cluster="ceph-a",state="retired"} 1
csi_rbdj_backend_connections{cluster="ceph-b",state="connecting"} 1
`
	if err := testutil.CollectAndCompare(b, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}
