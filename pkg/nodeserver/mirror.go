package nodeserver

import (
	"context"
	"fmt"

	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// Disaster recovery on the node: images that are not primary here are not
// served, and the journal's laggy-client bound applies.

// checkPrimary refuses an image whose journal belongs to another site: a
// mirror replica (rbd-mirror replays the primary's writes into it and
// holds its lock) or a demoted image. Serving it would start a local epoch
// in its journal: a split brain. Read-only staging is refused as well,
// since opening the journaled device replays and tags the journal. An
// error reading the journal is left to blockdev.Open, which reports it.
func checkPrimary(ctx context.Context, pool objstore.Pool, vid volume.VolumeID) error {
	owner, err := storage.JournalTagOwner(ctx, pool, vid.Image)
	if err != nil {
		klog.FromContext(ctx).V(2).Info("Could not read the journal's tag owner; opening the image reports the error", "err", err)
		return nil
	}
	if owner == rbdjournal.LocalMirrorUUID {
		return nil
	}
	spec := vid.Pool + "/" + vid.Image
	state := fmt.Sprintf("non-primary: a mirror replica whose journal belongs to the mirror peer with uuid %s (rbd-mirror replays the primary site's writes into it)", owner)
	if owner == rbdjournal.OrphanMirrorUUID {
		state = "demoted: no site is primary"
	}
	return status.Errorf(codes.FailedPrecondition,
		"volume %s: image %s is %s, so it cannot be written here (%v). Promote it on this site first (`rbd mirror image promote %s`, with --force if the primary site is lost), or use it at the primary site. Read-only staging of a non-primary image is not supported either: serving it replays and tags its journal",
		vid, spec, state, storage.ErrNotPrimary, spec)
}

// journalSettings are the journal settings of a volume: the plugin's
// commit age and the volume's laggy-client bound, whose disconnections are
// logged with the volume (no event recorder in the node plugin yet).
func (s *Server) journalSettings(ctx context.Context, r *record) journal.Settings {
	logger := klog.FromContext(ctx)
	return journal.Settings{
		CommitAge:               s.o.JournalCommitAge,
		MaxConcurrentObjectSets: r.JournalMaxObjectSets,
		OnClientDisconnected: func(c journal.LaggyClient) {
			logger.Info("A replicator of this volume fell too far behind and was disconnected from its journal; its copy needs a resync",
				"client", c.ID, "clientObjectSet", c.ObjectSet, "activeSet", c.ActiveSet, "journalMaxConcurrentObjectSets", r.JournalMaxObjectSets)
		},
	}
}
