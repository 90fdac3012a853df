package storage

import (
	"context"
	"errors"
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

// ErrMetadataJournalMode: the volume uses journalMode metadata; its journal
// holds no data, so it cannot be mirrored.
var ErrMetadataJournalMode = errors.New("the volume uses journalMode metadata (its journal records where writes went, not their data), so rbd-mirror cannot replicate it; only journalMode full volumes can be mirrored")

// Layout of an extent log (entries are small: one 16 MiB object holds
// hundreds of thousands); blockdev creates the same at a first open.
const (
	extentLogOrder      = 24
	extentLogSplayWidth = 1
)

// EnsureExtentLog creates image name's extent log (journalMode metadata) if
// it has none.
func EnsureExtentLog(ctx context.Context, pool objstore.Pool, name string) error {
	id, err := clsrbd.GetID(ctx, pool, clsrbd.IDOID(name))
	if err != nil {
		return fmt.Errorf("image %s/%s id: %w", pool.Name(), name, err)
	}
	ok, err := extentlog.Exists(ctx, pool, id)
	if err != nil || ok {
		return err
	}
	if err := extentlog.Create(ctx, pool, id, extentLogOrder, extentLogSplayWidth); err != nil && !errors.Is(err, objstore.ErrExists) {
		return err
	}
	return nil
}
