package volume

import (
	"context"
	"errors"

	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ResolveVolumeID parses a volume id from a request and checks that this
// plugin's backend serves it. Errors are gRPC statuses: InvalidArgument for
// a missing or damaged id, NotFound for an id this driver never issues,
// FailedPrecondition for a volume of another backend. Whether the plugin
// knows the id's cluster is checked by VolumeStorage.
func ResolveVolumeID(b storage.Backend, id string) (VolumeID, error) {
	if id == "" {
		return VolumeID{}, status.Error(codes.InvalidArgument, "volume_id is missing")
	}
	v, err := ParseVolumeID(id)
	switch {
	case errors.Is(err, ErrForeignVolumeID):
		return VolumeID{}, status.Errorf(codes.NotFound, "volume %q does not exist: %v", id, err)
	case err != nil:
		return VolumeID{}, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	if v.Backend != b.Kind() {
		return VolumeID{}, status.Errorf(codes.FailedPrecondition,
			"volume %q belongs to cluster %q of backend %q, but this plugin serves backend %q: use the plugin configured for that backend",
			id, v.Cluster, v.Backend, b.Kind())
	}
	return v, nil
}

// VolumeStorage opens the storage of vid's cluster with the request's
// secrets (of says which StorageClass parameters carry them). Errors are
// gRPC statuses (StorageStatus).
func VolumeStorage(ctx context.Context, b storage.Backend, vid VolumeID, secrets map[string]string, of SecretsOf) (storage.Storage, error) {
	st, err := b.Storage(ctx, vid.Cluster, secrets)
	if err != nil {
		return nil, StorageStatus(err, of, FromVolumeID)
	}
	return st, nil
}
