package driver

import (
	"context"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
)

// ensureExtentLog creates the extent log of a journalMode metadata volume
// with its image (idempotent), so that the volume is recognisably in that
// mode from the start (mirroring it is refused: storage.ErrMetadataJournalMode)
// and a consumer can register before its first stage. The node creates the
// log too if it finds none.
func ensureExtentLog(ctx context.Context, pool objstore.Pool, imageName string, params volume.VolumeParams) error {
	if !params.Metadata() {
		return nil
	}
	if err := storage.EnsureExtentLog(ctx, pool, imageName); err != nil {
		return volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "create the extent log of "+pool.Name()+"/"+imageName)
	}
	return nil
}
