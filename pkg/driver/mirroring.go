package driver

import (
	"context"
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

// mirroringStatus is volume.MirrorStatus for the provisioner.
func mirroringStatus(err error, what string) error {
	return volume.MirrorStatus(err, volume.SecretsProvisioner, what)
}
