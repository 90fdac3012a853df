package storage

import (
	"context"
	"fmt"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/extentlog"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// removeWithExtentLog runs remove (the backend's image removal) and then
// removes the image's extent log (journalMode metadata, created by the
// node at the first open), which neither librbd nor pkg/image know about.
// The log goes last: while the image is in use remove fails (ErrBusy) and
// the serving node keeps its log. A crash between the two leaves the log's
// few objects behind; their names say whose they were.
func removeWithExtentLog(ctx context.Context, pool objstore.Pool, name string, remove func() error) error {
	id, idErr := clsrbd.GetID(ctx, pool, clsrbd.IDOID(name))
	if err := remove(); err != nil {
		return err
	}
	if idErr != nil {
		return nil
	}
	if err := extentlog.Remove(ctx, pool, id); err != nil {
		return fmt.Errorf("remove image %q: %w", name, err)
	}
	return nil
}
