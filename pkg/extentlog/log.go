package extentlog

import (
	"context"
	"errors"
	"fmt"

	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Naming is the object naming of an extent log: distinct from librbd's
// ("journal.<id>"), so Ceph's tools never take it for an image journal.
var Naming = journal.Naming{HeaderPrefix: "csi_rbdj_journal.", DataPrefix: "csi_rbdj_journal_data."}

// HeaderOID is the header object of image id's extent log.
func HeaderOID(imageID string) string { return Naming.HeaderOID(imageID) }

// ImageClientID is the journal client of the device serving the image
// (the same id librbd's image client has in its own journal).
const ImageClientID = ""

// Create creates image id's extent log with the layout given (zero values:
// pkg/journal's defaults) and sets it up as librbd sets an image journal up
// (image.InitJournal: a tag class owned by the local image, the image
// client registered with it), so that the device's epoch logic (tags and
// their predecessors) is the same in both modes. Tags and client data live
// in the log's own header only. It fails with an error wrapping
// objstore.ErrExists if the log exists.
func Create(ctx context.Context, pool objstore.Pool, imageID string, order, splayWidth uint8) (err error) {
	if err := journal.Create(ctx, pool, imageID, journal.CreateOptions{Order: order, SplayWidth: splayWidth, DataPoolID: -1, Naming: Naming}); err != nil {
		return fmt.Errorf("create extent log of image %s: %w", imageID, err)
	}
	defer func() {
		if err != nil {
			_ = journal.RemoveNamed(context.WithoutCancel(ctx), pool, nil, imageID, Naming)
		}
	}()
	if err := image.InitJournal(ctx, pool, imageID, Naming); err != nil {
		return fmt.Errorf("create extent log of image %s: %w", imageID, err)
	}
	return nil
}

// Exists reports whether image id has an extent log.
func Exists(ctx context.Context, pool objstore.Pool, imageID string) (bool, error) {
	_, _, _, err := clsjournal.GetImmutableMetadata(ctx, pool, HeaderOID(imageID))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, objstore.ErrNotFound):
		return false, nil
	}
	return false, fmt.Errorf("extent log of image %s: %w", imageID, err)
}

// Remove removes image id's extent log; nothing to do if there is none.
func Remove(ctx context.Context, pool objstore.Pool, imageID string) error {
	if err := journal.RemoveNamed(ctx, pool, nil, imageID, Naming); err != nil {
		return fmt.Errorf("remove extent log of image %s: %w", imageID, err)
	}
	return nil
}

// Open opens image id's extent log as clientID.
func Open(ctx context.Context, pool objstore.Pool, imageID, clientID string, s journal.Settings) (*journal.Journaler, error) {
	j, err := journal.Open(ctx, pool, imageID, clientID, journal.Options{Settings: s, Naming: Naming})
	if err != nil {
		return nil, fmt.Errorf("open extent log of image %s: %w", imageID, err)
	}
	return j, nil
}
