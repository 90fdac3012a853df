//go:build ceph && pacific

package storage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
)

// Helpers of the Ceph mirroring calls (mirror_ceph.go) that work at the
// object level: what librbd does not offer.

// ensureJournaling gives image name back the journaling feature it had
// (before) if it lost it, with a new, empty journal of the same order and
// splay width, set up as librbd's EnableFeaturesRequest does (journal
// header, a tag of a new class owned by the local image, the image client
// registered with that class, then the feature bit). librbd replayed the
// old journal into the image before it removed it. The image must not be
// in use (nobody holds its lock to be told).
func ensureJournaling(ctx context.Context, pool objstore.Pool, name string, before ImageInfo) error {
	if before.Features&clsrbd.FeatureJournaling == 0 {
		return nil
	}
	now, err := imageInfo(ctx, pool, name)
	if err != nil {
		return err
	}
	if now.Features&clsrbd.FeatureJournaling != 0 {
		return nil
	}
	err = journal.Create(ctx, pool, now.ID, journal.CreateOptions{Order: before.JournalOrder, SplayWidth: before.JournalSplayWidth, DataPoolID: -1})
	if err != nil && !errors.Is(err, objstore.ErrExists) {
		return err
	}
	j, err := journal.Open(ctx, pool, now.ID, rbdjournal.LocalMirrorUUID, journal.Options{})
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = j.Close(cctx)
	}()
	if _, err := j.Client(); err != nil {
		tag, err := j.AllocateTag(ctx, clsjournal.TagClassNew, cephenc.Marshal(rbdjournal.TagData{MirrorUUID: rbdjournal.LocalMirrorUUID}))
		if err != nil {
			return err
		}
		if err := j.RegisterClient(ctx, cephenc.Marshal(rbdjournal.ClientData{Meta: rbdjournal.ImageClientMeta{TagClass: tag.TagClass}})); err != nil {
			return err
		}
	}
	op := &objstore.WriteOp{}
	clsrbd.SetFeatures(op, clsrbd.FeatureJournaling, clsrbd.FeatureJournaling)
	if err := pool.Operate(ctx, clsrbd.HeaderOID(now.ID), op); err != nil {
		return fmt.Errorf("set the journaling feature: %w", err)
	}
	return nil
}

// imageOpeners lists the watchers of the image's header only: the clients
// that have the image open (a node serving it, librbd). Unlike ImageUsers
// it leaves out watchers of the journal alone: rbd-mirror's replayer on the
// peer site watches the primary's journal header without opening the
// image, and must not make the image look in use.
func imageOpeners(ctx context.Context, pool objstore.Pool, name string) ([]objstore.WatcherInfo, error) {
	return imageWatchers(ctx, pool, name, false)
}
