package volume

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestStorageStatus(t *testing.T) {
	for _, tc := range []struct {
		err        error
		of         SecretsOf
		fromParams bool
		code       codes.Code
		msg        string
	}{
		{fmt.Errorf("%w \"x\"", storage.ErrUnknownCluster), SecretsProvisioner, FromParams, codes.InvalidArgument, `parameter "clusterID": unknown cluster id "x"`},
		{fmt.Errorf("%w \"x\"", storage.ErrUnknownCluster), SecretsNodeStage, FromVolumeID, codes.FailedPrecondition, `unknown cluster id "x"`},
		{storage.ErrNoCredentials, SecretsProvisioner, FromParams, codes.InvalidArgument, "csi.storage.k8s.io/provisioner-secret-name and csi.storage.k8s.io/provisioner-secret-namespace"},
		{storage.ErrNoCredentials, SecretsNodeStage, FromVolumeID, codes.InvalidArgument, "csi.storage.k8s.io/node-stage-secret-name and csi.storage.k8s.io/node-stage-secret-namespace"},
		{storage.ErrNoCredentials, SecretsControllerExpand, FromVolumeID, codes.InvalidArgument, "csi.storage.k8s.io/controller-expand-secret-name and csi.storage.k8s.io/controller-expand-secret-namespace"},
		{storage.ErrNoCredentials, SecretsNone, FromVolumeID, codes.FailedPrecondition, "--ceph-credentials-dir"},
		{fmt.Errorf("as client.csi: refused: %w", storage.ErrBadCredentials), SecretsProvisioner, FromParams, codes.Unauthenticated, "client.csi"},
		{fmt.Errorf("monitors 10.0.0.1:6789: %w", storage.ErrUnreachable), SecretsProvisioner, FromParams, codes.Unavailable, "10.0.0.1:6789"},
		{fmt.Errorf("op: %w", syscall.EPERM), SecretsProvisioner, FromParams, codes.PermissionDenied, "profile rbd"},
		{fmt.Errorf("config.json: bad: %w", storage.ErrBadConfig), SecretsProvisioner, FromParams, codes.FailedPrecondition, "config.json"},
		{errors.New("boom"), SecretsProvisioner, FromParams, codes.Internal, "boom"},
	} {
		st, _ := status.FromError(StorageStatus(tc.err, tc.of, tc.fromParams))
		if st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
			t.Errorf("%v: %v %q, want %v with %q", tc.err, st.Code(), st.Message(), tc.code, tc.msg)
		}
	}
}
