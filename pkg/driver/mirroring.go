package driver

import (
	"context"
	"errors"
	"fmt"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// checkMirroring is CreateVolume's check, before anything is created, that
// the mirroring a StorageClass asks for can be enabled: a nil Mirrorer
// when it asks for none.
func checkMirroring(ctx context.Context, st storage.Storage, pool objstore.Pool, params volume.VolumeParams) (storage.Mirrorer, error) {
	if params.Mirroring == "" {
		return nil, nil
	}
	m, err := storage.MirrorerOf(st)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "parameter %q: %v; remove the parameter or use the ceph backend", volume.ParamMirroring, err)
	}
	if err := m.CheckPoolMirroring(ctx, pool); err != nil {
		return nil, mirroringStatus(err, "check mirroring of pool "+params.Pool)
	}
	return m, nil
}

// enableMirroring enables the StorageClass's mirroring on a volume's image
// (idempotent: CreateVolume calls it again for an existing volume).
func enableMirroring(ctx context.Context, m storage.Mirrorer, pool objstore.Pool, imageName string) error {
	if m == nil {
		return nil
	}
	if err := m.EnableJournalMirroring(ctx, pool, imageName); err != nil {
		return mirroringStatus(err, fmt.Sprintf("enable journal mirroring of %s/%s", pool.Name(), imageName))
	}
	return nil
}

// mirroringStatus maps the mirroring errors of pkg/storage to CSI codes.
func mirroringStatus(err error, what string) error {
	switch {
	case errors.Is(err, storage.ErrPoolMirroringDisabled), errors.Is(err, storage.ErrMirrorModeConflict),
		errors.Is(err, storage.ErrMirroringDisabled), errors.Is(err, storage.ErrImagePrimary):
		return status.Errorf(codes.FailedPrecondition, "%s: %v", what, err)
	case errors.Is(err, storage.ErrMirroringUnsupported):
		return status.Errorf(codes.InvalidArgument, "%s: %v", what, err)
	}
	return volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, what)
}
