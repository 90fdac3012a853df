//go:build ceph && pacific

package storage

import (
	"context"
	"fmt"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/extentlog"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// refuseMetadataMirroring fails with ErrMetadataJournalMode if image name
// has an extent log (journalMode metadata): enabling journal mirroring
// would add librbd's journaling feature behind the node's back and
// replicate nothing. A missing image is left to the caller to report.
func refuseMetadataMirroring(ctx context.Context, pool objstore.Pool, name string) error {
	id, err := clsrbd.GetID(ctx, pool, clsrbd.IDOID(name))
	if err != nil {
		return nil
	}
	ok, err := extentlog.Exists(ctx, pool, id)
	if err != nil {
		return fmt.Errorf("image %s/%s: %w", pool.Name(), name, err)
	}
	if ok {
		return fmt.Errorf("image %s/%s: %w", pool.Name(), name, ErrMetadataJournalMode)
	}
	return nil
}
