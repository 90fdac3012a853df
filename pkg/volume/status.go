package volume

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// SecretsOf names, for error messages, the StorageClass parameters through
// which a call gets its secrets.
type SecretsOf string

// What each call's secrets come from.
const (
	// SecretsProvisioner: CreateVolume and DeleteVolume.
	SecretsProvisioner SecretsOf = "provisioner"
	// SecretsNodeStage: NodeStageVolume.
	SecretsNodeStage SecretsOf = "node-stage"
	// SecretsControllerExpand: ControllerExpandVolume (the
	// external-resizer sends them).
	SecretsControllerExpand SecretsOf = "controller-expand"
	// SecretsControllerValidate: ValidateVolumeCapabilities (no
	// Kubernetes sidecar sends them; the default credentials serve).
	SecretsControllerValidate SecretsOf = "validate"
	// SecretsReplication: the csi-addons replication calls (the
	// csi-addons sidecar sends the VolumeReplicationClass's secret).
	SecretsReplication SecretsOf = "replication"
	// SecretsNone: calls without secrets (ListVolumes, GetCapacity, Probe,
	// re-serving staged volumes after a restart): only the default
	// credentials can serve them.
	SecretsNone SecretsOf = "none"
)

// hint says how to give a call credentials.
func (s SecretsOf) hint() string {
	switch s {
	case SecretsProvisioner, SecretsNodeStage, SecretsControllerExpand, SecretsSnapshotter:
		return fmt.Sprintf("set the StorageClass parameters csi.storage.k8s.io/%[1]s-secret-name and csi.storage.k8s.io/%[1]s-secret-namespace to a Secret with the keys %[2]s and %[3]s, or give the plugin default credentials (--ceph-credentials-dir)",
			string(s), storage.SecretUserID, storage.SecretUserKey)
	}
	if s == SecretsReplication {
		return fmt.Sprintf("set the VolumeReplicationClass parameters replication.storage.openshift.io/replication-secret-name and replication.storage.openshift.io/replication-secret-namespace to a Secret with the keys %s and %s, or give the plugin default credentials (--ceph-credentials-dir)",
			storage.SecretUserID, storage.SecretUserKey)
	}
	return fmt.Sprintf("give the plugin default credentials: --ceph-credentials-dir pointing at a mounted Secret with the keys %s and %s", storage.SecretUserID, storage.SecretUserKey)
}

// Where a cluster id came from, for StorageStatus: a StorageClass parameter
// is the caller's mistake (InvalidArgument), a volume id naming a cluster
// this plugin does not know is a configuration problem (FailedPrecondition).
const (
	FromParams   = true
	FromVolumeID = false
)

// StorageStatus turns an error of Backend.Storage or of a Storage call into
// a gRPC status whose message says what to fix:
//
//	unknown cluster id         InvalidArgument (StorageClass) / FailedPrecondition (volume id)
//	no credentials             InvalidArgument naming the secret parameters (FailedPrecondition without secrets: --ceph-credentials-dir)
//	credentials rejected       Unauthenticated naming the user (never the key)
//	EPERM/EACCES on an op      PermissionDenied: the user lacks a capability
//	cluster unreachable        Unavailable naming the monitors
//	bad --ceph-config          FailedPrecondition
//	anything else              Internal
func StorageStatus(err error, secrets SecretsOf, clusterFromParams bool) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, storage.ErrUnknownCluster):
		if clusterFromParams {
			return status.Errorf(codes.InvalidArgument, "parameter %q: %v", ParamClusterID, err)
		}
		return status.Errorf(codes.FailedPrecondition, "%v", err)
	case errors.Is(err, storage.ErrNoCredentials):
		if secrets == SecretsNone || secrets == SecretsControllerValidate {
			return status.Errorf(codes.FailedPrecondition, "%v: %s", err, secrets.hint())
		}
		return status.Errorf(codes.InvalidArgument, "%v: %s", err, secrets.hint())
	case errors.Is(err, storage.ErrBadCredentials):
		return status.Errorf(codes.Unauthenticated, "%v (check the %s and %s of the Secret)", err, storage.SecretUserID, storage.SecretUserKey)
	case errors.Is(err, storage.ErrUnreachable):
		return status.Errorf(codes.Unavailable, "%v", err)
	case errors.Is(err, storage.ErrCephNotBuilt), errors.Is(err, storage.ErrBadConfig):
		return status.Errorf(codes.FailedPrecondition, "%v", err)
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return status.Errorf(codes.PermissionDenied, "%v (the user lacks a capability: give it `mon 'profile rbd' osd 'profile rbd'`)", err)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Errorf(codes.DeadlineExceeded, "%v", err)
	case errors.Is(err, context.Canceled):
		return status.Errorf(codes.Canceled, "%v", err)
	}
	return status.Errorf(codes.Internal, "%v", err)
}

// OpStatus maps a failed Storage call made with the given secrets: the
// classified errors (permissions, an unreachable cluster) as StorageStatus
// does, anything else with code and "what: err".
func OpStatus(err error, secrets SecretsOf, code codes.Code, what string) error {
	switch {
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES), errors.Is(err, storage.ErrUnreachable),
		errors.Is(err, storage.ErrBadCredentials):
		return StorageStatus(fmt.Errorf("%s: %w", what, err), secrets, FromVolumeID)
	case objstore.Errno(err) == syscall.ETIMEDOUT, errors.Is(err, context.DeadlineExceeded):
		return status.Errorf(codes.Unavailable, "%s: %v (the cluster did not answer in time; retry)", what, err)
	}
	return status.Errorf(code, "%s: %v", what, err)
}
