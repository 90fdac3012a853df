package nodeserver

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// Disaster recovery on the node: images that are not primary here are
// served read-only without owning them, or not at all; the journal's
// laggy-client bound applies.

// servedUnowned decides how a volume is served: owned (false: the
// journaled device, lock, replay, new epoch) or read-only without owning
// the image (true: blockdev.OpenReadOnly). An image whose journal belongs
// to another site — a mirror replica (rbd-mirror replays the primary's
// writes into it and holds its lock) or a demoted image — is served only
// read-only, and only unowned: owning it would replay and tag its journal
// (a split brain). A read-write staging of it is refused. A staging that
// was served unowned stays unowned when it is served again after a
// restart. MULTI_NODE_READER_ONLY is served only unowned (several nodes
// cannot own one image). An error reading the journal is left to
// blockdev.Open, which reports it.
func (s *Server) servedUnowned(ctx context.Context, pool objstore.Pool, vid volume.VolumeID, r *record, mode blockdev.JournalMode) (bool, error) {
	if r.Unowned {
		return true, nil
	}
	multi := r.AccessMode == csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY.String()
	primary := func() (bool, error) {
		if multi {
			return false, status.Errorf(codes.FailedPrecondition,
				"volume %s: access mode MULTI_NODE_READER_ONLY is served only for a non-primary mirror image (read by any number of nodes without owning it); image %s/%s is primary here, and a primary image is served by the one node that holds its lock: use a SINGLE_NODE_* mode",
				vid, vid.Pool, vid.Image)
		}
		return false, nil
	}
	if mode != blockdev.JournalFull { // a metadata-mode image is never mirrored
		return primary()
	}
	owner, err := storage.JournalTagOwner(ctx, pool, vid.Image)
	if err != nil {
		klog.FromContext(ctx).V(2).Info("Could not read the journal's tag owner; opening the image reports the error", "err", err)
		return primary()
	}
	if owner == rbdjournal.LocalMirrorUUID {
		return primary()
	}
	state := nonPrimaryState(owner, primarySite(ctx, pool, owner))
	if r.ReadOnly {
		klog.FromContext(ctx).Info("Serving a non-primary image read-only, without its lock or journal", "image", vid.Pool+"/"+vid.Image, "state", state)
		return true, nil
	}
	spec := vid.Pool + "/" + vid.Image
	return false, status.Errorf(codes.FailedPrecondition,
		"volume %s: image %s is %s, so it cannot be written here (%v). Promote it on this site first (`rbd mirror image promote %s`, with --force if the primary site is lost), or use it at the primary site; a read-only staging (access mode SINGLE_NODE_READER_ONLY or MULTI_NODE_READER_ONLY) serves it here read-only without touching it",
		vid, spec, state, storage.ErrNotPrimary, spec)
}

// nonPrimaryState describes a non-primary image by its journal's tag owner
// and the site name of that mirror peer ("" if unknown).
func nonPrimaryState(owner, site string) string {
	if owner == rbdjournal.OrphanMirrorUUID {
		return "demoted: no site is primary"
	}
	if site != "" {
		return fmt.Sprintf("non-primary: a mirror replica of primary site %q (its journal belongs to that site's mirror uuid %s; rbd-mirror replays the primary site's writes into it)", site, owner)
	}
	return fmt.Sprintf("non-primary: a mirror replica whose journal belongs to the mirror peer with uuid %s (rbd-mirror replays the primary site's writes into it)", owner)
}

// primarySite names the mirror peer whose pool has mirror uuid owner (the
// pool's peer list: rbd mirror pool info), or "" if it is not known; an
// error reading the list only costs the name.
func primarySite(ctx context.Context, pool objstore.Pool, owner string) string {
	peers, err := clsrbd.MirrorPeerList(ctx, pool)
	if err != nil {
		klog.FromContext(ctx).V(2).Info("Could not list the pool's mirror peers to name the primary site", "err", err)
		return ""
	}
	for _, p := range peers {
		if p.MirrorUUID == owner && p.SiteName != "" {
			return p.SiteName
		}
	}
	return ""
}

// unownedMountable refuses to mount a volume served unowned whose device
// holds no filesystem: it is never formatted (nor is its marker read or
// cleared: nothing is written to a non-primary image).
func unownedMountable(r *record, existingFormat string) error {
	if existingFormat != "" {
		return nil
	}
	return status.Errorf(codes.FailedPrecondition,
		"volume %s is served read-only from a non-primary mirror image, and its device %s reads as blank (no filesystem or partition signature): the replica holds no filesystem yet (rbd-mirror has not replicated it, or the primary was never formatted); a read-only staging never formats",
		r.VolumeID, r.Device)
}

// unownedMountOptions are the mount options of a filesystem on a device
// served unowned, besides "ro": no journal recovery, which would write
// (the primary site's mount keeps the filesystem's journal dirty, and the
// read-only loop device refuses writes: ext4 would refuse to mount).
// What the filesystem journal holds beyond its checkpoint is not seen.
func unownedMountOptions(fsType string) []string {
	switch fsType {
	case "ext4", "ext3":
		return []string{"noload"}
	case "xfs":
		return []string{"norecovery"}
	}
	return nil
}

// journalSettings are the journal settings of a volume: the plugin's
// commit age and the volume's laggy-client bound, whose disconnections are
// logged with the volume and recorded as a Warning event on its
// PersistentVolume (when the plugin has an event recorder and the volume
// context names the PV).
func (s *Server) journalSettings(ctx context.Context, r *record) journal.Settings {
	logger := klog.FromContext(ctx)
	return journal.Settings{
		CommitAge:               s.o.JournalCommitAge,
		MaxConcurrentObjectSets: r.JournalMaxObjectSets,
		OnClientDisconnected: func(c journal.LaggyClient) {
			reportDisconnected(logger, s.o.Events, r, c)
		},
	}
}

// ReasonReplicatorDisconnected is the reason of the event recorded when the
// laggy-client bound disconnects a replicator.
const ReasonReplicatorDisconnected = "ReplicatorDisconnected"

// reportDisconnected logs a replicator's disconnection and records it as an
// event on the volume's PV. It does not block (the journal calls it with
// its commit lock held; the recorder sends in the background).
func reportDisconnected(logger klog.Logger, events EventRecorder, r *record, c journal.LaggyClient) {
	logger.Info("A replicator of this volume fell too far behind and was disconnected from its journal; its copy needs a resync",
		"client", c.ID, "clientObjectSet", c.ObjectSet, "activeSet", c.ActiveSet, "journalMaxConcurrentObjectSets", r.JournalMaxObjectSets, "pv", r.PVName)
	if events == nil || r.PVName == "" {
		return
	}
	events.PersistentVolumeEvent(r.PVName, corev1.EventTypeWarning, ReasonReplicatorDisconnected, fmt.Sprintf(
		"journal client %q (rbd-mirror's, for a mirror peer) fell more than journalMaxConcurrentObjectSets=%d object sets behind (its set %d, active set %d) and was disconnected, so the journal no longer keeps entries for it: the replica on that site needs a resync (csi-addons ResyncVolume there, or `rbd mirror image resync`)",
		c.ID, r.JournalMaxObjectSets, c.ObjectSet, c.ActiveSet))
}
