package storage

import (
	"context"
	"errors"
	"fmt"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
)

// ErrNotPrimary: the image's journal belongs to another site (or to none):
// it must not be written here.
var ErrNotPrimary = errors.New("the image is not primary on this cluster")

// JournalTagOwner returns the mirror uuid that owns the current epoch of
// image name's journal, as librbd's Journal::get_tag_owner reads it: the
// newest tag of the image client's tag class. rbdjournal.LocalMirrorUUID
// ("") means this cluster's copy is primary; a peer's mirror uuid means
// rbd-mirror replays another site's writes into it (non-primary);
// rbdjournal.OrphanMirrorUUID means it was demoted and no site is primary.
// It reads only the journal (cls journal), so it works on both backends.
func JournalTagOwner(ctx context.Context, pool objstore.Pool, name string) (string, error) {
	id, _, err := headerOf(ctx, pool, name)
	if err != nil {
		return "", err
	}
	oid := journal.HeaderOID(id)
	c, err := clsjournal.GetClient(ctx, pool, oid, rbdjournal.LocalMirrorUUID)
	if err != nil {
		return "", fmt.Errorf("image %q: journal image client: %w", name, err)
	}
	var cd rbdjournal.ClientData
	if err := cephenc.Unmarshal(c.Data, &cd); err != nil {
		return "", fmt.Errorf("image %q: journal image client data: %w", name, err)
	}
	meta, ok := cd.Meta.(rbdjournal.ImageClientMeta)
	if !ok {
		return "", fmt.Errorf("image %q: the journal's client %q is not an image client", name, c.ID)
	}
	tags, err := clsjournal.TagList(ctx, pool, oid, c.ID, &meta.TagClass)
	if err != nil {
		return "", fmt.Errorf("image %q: %w", name, err)
	}
	if len(tags) == 0 {
		return rbdjournal.LocalMirrorUUID, nil // a journal never opened
	}
	var td rbdjournal.TagData
	last := tags[len(tags)-1]
	if err := cephenc.Unmarshal(last.Data, &td); err != nil {
		return "", fmt.Errorf("image %q: journal tag %d: %w", name, last.Tid, err)
	}
	return td.MirrorUUID, nil
}
