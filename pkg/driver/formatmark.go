package driver

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
)

// The states of volumeRecord.FormatMark. CreateVolume marks a new volume
// that may be mounted (storage.MarkFormatBlank: the node formats only
// volumes so marked) before it hands out the volume id; the record says
// whether it did, so that a retried CreateVolume marks an image an earlier
// attempt created but never returned, and never marks one that was handed
// out (and may hold data since).
const (
	formatMarkPending = "pending"
	formatMarkDone    = "done"
)

// wantsFilesystem reports whether a volume may be mounted: block-only
// volumes are never marked, since their raw data (which blkid may not
// recognise) must never be formatted should the image later be mounted.
func wantsFilesystem(caps []*csi.VolumeCapability) bool {
	for _, c := range caps {
		if c.GetMount() != nil {
			return true
		}
	}
	return false
}

// markNew marks a new image and records that it did.
func markNew(ctx context.Context, pool objstore.Pool, imageName string, rec *volumeRecord) error {
	if err := storage.MarkFormatBlank(ctx, pool, imageName); err != nil {
		return err
	}
	r := *rec
	r.FormatMark = formatMarkDone
	if err := updateRecord(ctx, pool, imageName, r); err != nil {
		return err
	}
	*rec = r
	return nil
}

// updateRecord replaces an existing record.
func updateRecord(ctx context.Context, pool objstore.Pool, imageName string, rec volumeRecord) error {
	if err := updateJSONObject(ctx, pool, recordPrefix+imageName, rec); err != nil {
		return fmt.Errorf("update volume record %s%s: %w", recordPrefix, imageName, err)
	}
	return nil
}
