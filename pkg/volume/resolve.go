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
	return resolveID(b, "volume", id, ParseVolumeID)
}

// ResolveSnapshotID is ResolveVolumeID for a snapshot id.
func ResolveSnapshotID(b storage.Backend, id string) (SnapshotID, error) {
	return resolveID(b, "snapshot", id, ParseSnapshotID)
}

// resolveID parses id, a volume or a snapshot id (kind names it in the
// messages: "volume", "snapshot"), with parse and checks that b serves the
// volume it names.
func resolveID[ID interface{ volumeID() VolumeID }](b storage.Backend, kind, id string, parse func(string) (ID, error)) (ID, error) {
	var none ID
	if id == "" {
		return none, status.Errorf(codes.InvalidArgument, "%s_id is missing", kind)
	}
	parsed, err := parse(id)
	switch {
	case errors.Is(err, ErrForeignVolumeID):
		return none, status.Errorf(codes.NotFound, "%s %q does not exist: %v", kind, id, err)
	case err != nil:
		return none, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	if v := parsed.volumeID(); v.Backend != b.Kind() {
		return none, status.Errorf(codes.FailedPrecondition,
			"%s %q belongs to cluster %q of backend %q, but this plugin serves backend %q: use the plugin configured for that backend",
			kind, id, v.Cluster, v.Backend, b.Kind())
	}
	return parsed, nil
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
