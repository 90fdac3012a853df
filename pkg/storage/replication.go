package storage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
)

// PeerReplication is how far one rbd-mirror peer is behind the primary's
// journal: what csi-addons GetVolumeReplicationInfo reports.
//
// It is read from the primary's own journal, not from rbd-mirror's status:
// rbd-mirror registers a journal client per peer (id: the peer pool's
// mirror uuid) and commits in it the position of the last entry it has
// applied to the replica, which is the exact replication point; the status
// description rbd-mirror publishes is refreshed only every 30 s and has no
// timestamps in journal mode.
type PeerReplication struct {
	// MirrorUUID is the peer's journal client id.
	MirrorUUID string
	// Disconnected: the client fell behind the journal's laggy-client
	// bound and was disconnected; the replica needs a resync.
	Disconnected bool
	// EntriesBehind and BytesBehind count the journal entries (and their
	// payload bytes) the peer has not replayed yet.
	EntriesBehind int
	BytesBehind   int64
	// SetsBehind is how many journal object sets lie between the peer's
	// commit position and the active set.
	SetsBehind uint64
	// Counted: EntriesBehind, BytesBehind and OldestPending were counted.
	// A peer more than MaxCountedSets object sets behind is not (reading
	// that much of the journal for a status call costs too much): only
	// SetsBehind says how far it is.
	Counted bool
	// OldestPending is the timestamp of the oldest entry the peer has not
	// replayed: the replica holds every write journaled before it. Zero
	// when EntriesBehind is 0.
	OldestPending time.Time
}

// MaxCountedSets bounds how many object sets JournalReplication reads to
// count a peer's backlog.
const MaxCountedSets = 2

// LastSync is the time up to which the replica holds the primary's writes:
// now when the peer has replayed everything, else the journal time of the
// oldest entry it has not. ok is false when that is not known (the
// backlog was not counted, or its oldest entry has no timestamp).
func (p PeerReplication) LastSync(now time.Time) (t time.Time, ok bool) {
	switch {
	case !p.Counted:
		return time.Time{}, false
	case p.EntriesBehind == 0:
		return now, true
	}
	return p.OldestPending, !p.OldestPending.IsZero()
}

// ErrNoMirrorPeer: the primary's journal has no rbd-mirror peer client
// (rbd-mirror has not bootstrapped the replica yet, or no peer is
// configured).
var ErrNoMirrorPeer = errors.New("no rbd-mirror peer has registered with the image's journal")

// JournalReplication reports, for each rbd-mirror peer registered with the
// journal of image name, how far it is behind. It reads the journal only
// (works on both backends) and changes nothing: the entries past the
// peer's commit position are read and counted, never committed.
func JournalReplication(ctx context.Context, pool objstore.Pool, name string) ([]PeerReplication, error) {
	id, err := imageID(ctx, pool, name)
	if err != nil {
		return nil, err
	}
	peers, err := journalReplication(ctx, pool, id)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", name, err)
	}
	return peers, nil
}

// journalReplication is JournalReplication for journal id.
func journalReplication(ctx context.Context, pool objstore.Pool, id string) ([]PeerReplication, error) {
	oid := journal.HeaderOID(id)
	_, splay, _, err := clsjournal.GetImmutableMetadata(ctx, pool, oid)
	if err != nil {
		return nil, fmt.Errorf("journal metadata: %w", err)
	}
	minSet, activeSet, clients, err := clsjournal.GetMutableMetadata(ctx, pool, oid)
	if err != nil {
		return nil, fmt.Errorf("journal clients: %w", err)
	}
	var peers []PeerReplication
	for _, c := range clients {
		if !isMirrorPeer(c) {
			continue
		}
		p := PeerReplication{MirrorUUID: c.ID, Disconnected: c.State == clsjournal.ClientStateDisconnected, SetsBehind: activeSet - minSet}
		if pos := c.CommitPosition.ObjectPositions; len(pos) > 0 && splay > 0 {
			p.SetsBehind = activeSet - min(activeSet, pos[0].ObjectNumber/uint64(splay))
		}
		if !p.Disconnected && p.SetsBehind <= MaxCountedSets {
			if err := countBacklog(ctx, pool, id, &p); err != nil {
				return nil, err
			}
		}
		peers = append(peers, p)
	}
	if len(peers) == 0 {
		return nil, ErrNoMirrorPeer
	}
	return peers, nil
}

// isMirrorPeer reports whether c is an rbd-mirror peer's client.
func isMirrorPeer(c clsjournal.Client) bool {
	var cd rbdjournal.ClientData
	if err := cephenc.Unmarshal(c.Data, &cd); err != nil {
		return false
	}
	m, ok := cd.Meta.(rbdjournal.UnknownClientMeta)
	return ok && m.Type == rbdjournal.MirrorPeerClientMetaType
}

// countBacklog reads the journal from peer p's commit position (opening it
// as that client, never committing) and counts what p has not replayed.
func countBacklog(ctx context.Context, pool objstore.Pool, id string, p *PeerReplication) error {
	j, err := journal.Open(ctx, pool, id, p.MirrorUUID, journal.Options{})
	if err != nil {
		return fmt.Errorf("open journal as peer %s: %w", p.MirrorUUID, err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = j.Close(cctx) // nothing was committed: nothing to write
	}()
	_, err = j.Replay(ctx, journal.ReplayOptions{}, func(_ context.Context, e journal.ReplayEntry) error {
		if p.EntriesBehind == 0 {
			var ev rbdjournal.EventEntry
			if cephenc.Unmarshal(e.Data, &ev) == nil {
				p.OldestPending = ev.Timestamp
			}
		}
		p.EntriesBehind++
		p.BytesBehind += int64(len(e.Data))
		return nil
	})
	if err != nil {
		return fmt.Errorf("read journal past peer %s's position: %w", p.MirrorUUID, err)
	}
	p.Counted = true
	return nil
}

// imageID is image name's id; image.ErrNotFound if there is no such image.
func imageID(ctx context.Context, pool objstore.Pool, name string) (string, error) {
	id, _, err := headerOf(ctx, pool, name)
	if errors.Is(err, objstore.ErrNotFound) {
		return "", fmt.Errorf("%w: %w", image.ErrNotFound, err)
	}
	return id, err
}

// ResyncRequested reports whether a resync of image name was requested
// (rbd mirror image resync sets it in the image's journal client; the
// local rbd-mirror then re-creates the image from the primary).
func ResyncRequested(ctx context.Context, pool objstore.Pool, name string) (bool, error) {
	id, err := imageID(ctx, pool, name)
	if err != nil {
		return false, err
	}
	c, err := clsjournal.GetClient(ctx, pool, journal.HeaderOID(id), rbdjournal.LocalMirrorUUID)
	if errors.Is(err, objstore.ErrNotFound) {
		// The image is being removed (rbd-mirror deletes a replica to
		// resync it) between the reads.
		return false, fmt.Errorf("image %q: journal image client: %w: %w", name, image.ErrNotFound, err)
	}
	if err != nil {
		return false, fmt.Errorf("image %q: journal image client: %w", name, err)
	}
	var cd rbdjournal.ClientData
	if err := cephenc.Unmarshal(c.Data, &cd); err != nil {
		return false, fmt.Errorf("image %q: journal image client data: %w", name, err)
	}
	m, ok := cd.Meta.(rbdjournal.ImageClientMeta)
	return ok && m.ResyncRequested, nil
}
