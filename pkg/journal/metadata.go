package journal

import (
	"context"
	"errors"
	"fmt"
	"time"

	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// The journal's metadata (Ceph's JournalMetadata): the header's clients,
// tags and object-set window as last read, the updates this client makes to
// them, and the header watch that tells when another client changed them.

// refresh re-reads the header's mutable metadata.
func (j *Journaler) refresh(ctx context.Context) error {
	ctx, cancel := j.opCtx(ctx)
	defer cancel()
	minSet, activeSet, clients, err := clsjournal.GetMutableMetadata(ctx, j.pool, j.headerOID)
	if err != nil {
		return fmt.Errorf("refresh %s: %w", j.headerOID, err)
	}
	m := make(map[string]clsjournal.Client, len(clients))
	for _, c := range clients {
		m[c.ID] = c
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.minimumSet = minSet
	// Another instance can only have moved the active set forward.
	if activeSet > j.activeSet {
		j.activeSet = activeSet
	}
	j.clients = m
	j.trimLagLocked()
	return nil
}

// Clients returns the registered clients as last seen.
func (j *Journaler) Clients() []clsjournal.Client {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make([]clsjournal.Client, 0, len(j.clients))
	for _, c := range j.clients {
		out = append(out, c)
	}
	return out
}

// Client returns this journaler's client as last seen.
func (j *Journaler) Client() (clsjournal.Client, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	c, ok := j.clients[j.clientID]
	if !ok {
		return clsjournal.Client{}, fmt.Errorf("journal %s client %q: %w", j.id, j.clientID, ErrClientNotRegistered)
	}
	return c, nil
}

// RegisterClient registers this journaler's client with data.
func (j *Journaler) RegisterClient(ctx context.Context, data []byte) error {
	op := &objstore.WriteOp{}
	clsjournal.ClientRegister(op, j.clientID, data)
	return j.updateHeader(ctx, "register client "+j.clientID, op)
}

// UpdateClientData replaces this client's data.
func (j *Journaler) UpdateClientData(ctx context.Context, data []byte) error {
	op := &objstore.WriteOp{}
	clsjournal.ClientUpdateData(op, j.clientID, data)
	return j.updateHeader(ctx, "update client "+j.clientID, op)
}

// UnregisterClient unregisters this journaler's client.
func (j *Journaler) UnregisterClient(ctx context.Context) error {
	op := &objstore.WriteOp{}
	clsjournal.ClientUnregister(op, j.clientID)
	return j.updateHeader(ctx, "unregister client "+j.clientID, op)
}

// updateHeader applies op to the header, refreshes and notifies watchers.
func (j *Journaler) updateHeader(ctx context.Context, what string, op *objstore.WriteOp) error {
	octx, cancel := j.opCtx(ctx)
	err := j.pool.Operate(octx, j.headerOID, op)
	cancel()
	if err != nil {
		return fmt.Errorf("journal %s: %s: %w", j.id, what, err)
	}
	if err := j.refresh(ctx); err != nil {
		return err
	}
	j.notifyUpdate(ctx)
	return nil
}

// notifyUpdate tells other users of the journal to refresh. Failure is not
// an error for the caller: watchers that miss it refresh on their own.
func (j *Journaler) notifyUpdate(ctx context.Context) {
	if _, err := j.pool.Notify(ctx, j.headerOID, nil, j.s.NotifyTimeout); err != nil {
		j.log.V(4).Info("Journal header notify failed", "journal", j.id, "err", err)
	}
}

// AllocateTag creates a new tag of tagClass (clsjournal.TagClassNew for a
// new class) with data, and returns it.
func (j *Journaler) AllocateTag(ctx context.Context, tagClass uint64, data []byte) (clsjournal.Tag, error) {
	for attempt := 0; ; attempt++ {
		octx, cancel := j.opCtx(ctx)
		tid, err := clsjournal.GetNextTagTid(octx, j.pool, j.headerOID)
		if err == nil {
			op := &objstore.WriteOp{}
			clsjournal.TagCreate(op, tid, tagClass, data)
			err = j.pool.Operate(octx, j.headerOID, op)
			if errors.Is(err, objstore.ErrStale) && attempt < 16 {
				cancel()
				continue // another client allocated tid first
			}
		}
		if err != nil {
			cancel()
			return clsjournal.Tag{}, fmt.Errorf("journal %s: allocate tag: %w", j.id, err)
		}
		tag, err := clsjournal.GetTag(octx, j.pool, j.headerOID, tid)
		cancel()
		if err != nil {
			return clsjournal.Tag{}, fmt.Errorf("journal %s: allocate tag: %w", j.id, err)
		}
		j.notifyUpdate(ctx)
		return tag, nil
	}
}

// GetTag returns tag tid.
func (j *Journaler) GetTag(ctx context.Context, tid uint64) (clsjournal.Tag, error) {
	ctx, cancel := j.opCtx(ctx)
	defer cancel()
	t, err := clsjournal.GetTag(ctx, j.pool, j.headerOID, tid)
	if errors.Is(err, objstore.ErrNotFound) {
		return t, fmt.Errorf("journal %s tag %d: %w", j.id, tid, ErrNotFound)
	}
	return t, err
}

// Tags lists the tags of tagClass (nil: every class) that this client may
// still need.
func (j *Journaler) Tags(ctx context.Context, tagClass *uint64) ([]clsjournal.Tag, error) {
	ctx, cancel := j.opCtx(ctx)
	defer cancel()
	return clsjournal.TagList(ctx, j.pool, j.headerOID, j.clientID, tagClass)
}

type watchHandler struct{ j *Journaler }

func (h watchHandler) HandleNotify(_ context.Context, n *objstore.Notification) {
	n.Ack(nil)
	select {
	case h.j.refreshCh <- struct{}{}:
	default:
	}
}

func (h watchHandler) HandleWatchError(_ context.Context, err error) {
	h.j.log.Info("Journal header watch lost; re-registering", "journal", h.j.id, "err", err)
	select {
	case h.j.rewatchCh <- struct{}{}:
	default:
	}
}

// refreshLoop owns re-watching and refreshing on notifications.
func (j *Journaler) refreshLoop() {
	defer j.wg.Done()
	backoff := 100 * time.Millisecond
	for {
		select {
		case <-j.bg.Done():
			return
		case <-j.refreshCh:
		case <-j.rewatchCh:
			if old := j.watch; old != nil {
				_ = old.Close(j.bg)
			}
			for {
				w, err := j.pool.Watch(j.bg, j.headerOID, watchHandler{j})
				if err == nil {
					j.watch = w // only this goroutine and Close (after wg.Wait) touch it
					backoff = 100 * time.Millisecond
					break
				}
				j.log.Error(err, "Journal header re-watch failed", "journal", j.id)
				select {
				case <-j.bg.Done():
					return
				case <-time.After(backoff):
				}
				if backoff < 5*time.Second {
					backoff *= 2
				}
			}
		}
		// A notification or a lost watch: what we know may be stale.
		if err := j.refresh(j.bg); err != nil {
			if j.bg.Err() == nil {
				j.log.Error(err, "Journal refresh failed", "journal", j.id)
			}
			continue
		}
		j.mu.Lock()
		j.rec.kickAllLocked(j)
		j.mu.Unlock()
	}
}
