package journal

import (
	"context"
	"fmt"

	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"k8s.io/klog/v2"
)

// LaggyClient describes a registered client the journaler disconnected
// because it fell Settings.MaxConcurrentObjectSets object sets behind.
type LaggyClient struct {
	// ID is the client's id (rbd-mirror registers the peer's mirror uuid).
	ID string
	// ObjectSet is the set of its commit position (0 if it committed none).
	ObjectSet uint64
	// ActiveSet is the journal's active set when it was disconnected.
	ActiveSet uint64
}

// laggyClientsLocked returns the registered clients (other than this
// journaler's own, and not already disconnected) whose commit position is
// more than Settings.MaxConcurrentObjectSets sets behind the active set, as
// librbd's JournalMetadata::schedule_laggy_clients_disconnect picks them:
// a client's set is that of the first (newest) object position of its
// commit position, 0 if it has none. Called with j.mu held.
func (j *Journaler) laggyClientsLocked() []LaggyClient {
	max := uint64(j.s.MaxConcurrentObjectSets)
	if max == 0 {
		return nil
	}
	w := uint64(j.splayWidth)
	var laggy []LaggyClient
	for id, c := range j.clients {
		if id == j.clientID || c.State == clsjournal.ClientStateDisconnected {
			continue
		}
		var set uint64
		if ps := c.CommitPosition.ObjectPositions; len(ps) > 0 {
			set = ps[0].ObjectNumber / w
		}
		if j.activeSet > set+max {
			laggy = append(laggy, LaggyClient{ID: id, ObjectSet: set, ActiveSet: j.activeSet})
		}
	}
	return laggy
}

// disconnectLaggyLocked flags every laggy client DISCONNECTED (cls journal
// client_update_state), so that it no longer holds back trimming: a
// replicator that stays away (a dead rbd-mirror) cannot make the journal
// grow without bound. Such a client must resync (rbd-mirror notices the
// state and, like after librbd's disconnect, needs `rbd mirror image
// resync` on its side). Each disconnection is logged and reported to
// Settings.OnClientDisconnected. Called with commitMu held, before
// trimLocked.
func (j *Journaler) disconnectLaggyLocked(ctx context.Context) error {
	j.mu.Lock()
	laggy := j.laggyClientsLocked()
	j.mu.Unlock()
	if len(laggy) == 0 {
		return nil
	}
	for _, c := range laggy {
		op := &objstore.WriteOp{}
		clsjournal.ClientUpdateState(op, c.ID, clsjournal.ClientStateDisconnected)
		octx, cancel := j.opCtx(ctx)
		err := j.pool.Operate(octx, j.headerOID, op)
		cancel()
		if err != nil {
			return fmt.Errorf("journal %s: disconnect laggy client %q: %w", j.id, c.ID, err)
		}
		// V(2): the owner reports it through OnClientDisconnected with its
		// own context (the node plugin: with the volume); without one it
		// is logged at the default level.
		logger := klog.FromContext(ctx)
		if j.s.OnClientDisconnected != nil {
			logger = logger.V(2)
		}
		logger.Info("Disconnected a journal client that fell too far behind; it no longer holds back trimming and must resync (rbd-mirror: rbd mirror image resync on its site)",
			"journal", j.id, "client", c.ID, "clientObjectSet", c.ObjectSet, "activeSet", c.ActiveSet,
			"maxConcurrentObjectSets", j.s.MaxConcurrentObjectSets)
		if j.s.OnClientDisconnected != nil {
			j.s.OnClientDisconnected(c)
		}
	}
	j.notifyUpdate(ctx)
	return j.refresh(ctx)
}
