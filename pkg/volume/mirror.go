package volume

import (
	"errors"

	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// MirrorStatus maps the errors of storage.Mirrorer (and of checking a
// StorageClass's mirroring) to CSI codes, for CreateVolume and the
// replication calls (csi-addons PromoteVolume, DemoteVolume, ResyncVolume):
//
//   - a missing image, or no rbd-mirror peer registered yet (replication
//     details not available, as the csi-addons spec puts it): NotFound;
//   - the backend cannot mirror (local): InvalidArgument;
//   - the pool or image does not mirror, a mirror mode conflict, a resync
//     of a primary (storage.ErrImagePrimary), a demote of an image in use,
//     a disable of a replica without force (storage.ErrNotPrimary)
//     or a promote refused because the peer still has it primary
//     (image.ErrBusy): FailedPrecondition;
//   - a cluster that does not answer or refuses the credentials: what
//     OpStatus says (Unavailable, PermissionDenied, ...), with what was tried.
//
// Promote of a primary and demote of a non-primary are not errors
// (storage.Mirrorer makes them no-ops).
func MirrorStatus(err error, of SecretsOf, what string) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, image.ErrNotFound), errors.Is(err, storage.ErrNoMirrorPeer):
		return status.Errorf(codes.NotFound, "%s: %v", what, err)
	case errors.Is(err, storage.ErrMirroringUnsupported), errors.Is(err, storage.ErrMetadataJournalMode):
		return status.Errorf(codes.InvalidArgument, "%s: %v", what, err)
	case errors.Is(err, storage.ErrPoolMirroringDisabled), errors.Is(err, storage.ErrMirroringDisabled),
		errors.Is(err, storage.ErrMirrorModeConflict), errors.Is(err, storage.ErrImagePrimary),
		errors.Is(err, storage.ErrNotPrimary), errors.Is(err, image.ErrBusy):
		return status.Errorf(codes.FailedPrecondition, "%s: %v", what, err)
	}
	return OpStatus(err, of, codes.Internal, what)
}
