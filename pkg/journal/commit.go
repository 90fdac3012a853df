package journal

import (
	"context"
	"errors"
	"fmt"
	"time"

	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Commit positions and trimming (Ceph's JournalMetadata commit tracking and
// JournalTrimmer): applied entries move this client's commit position, which
// is written to the header in the background, and object sets that every
// connected client has passed are removed.

// CommitPosition returns the commit position as known in memory (it may be
// newer than the one written to the header).
func (j *Journaler) CommitPosition() clsjournal.ObjectSetPosition {
	j.mu.Lock()
	defer j.mu.Unlock()
	return clonePosition(j.commitPos)
}

func clonePosition(p clsjournal.ObjectSetPosition) clsjournal.ObjectSetPosition {
	return clsjournal.ObjectSetPosition{ObjectPositions: append([]clsjournal.ObjectPosition(nil), p.ObjectPositions...)}
}

// Committed reports that the entry with commitTid has been applied. The
// commit position moves past it once every earlier entry is committed too.
func (j *Journaler) Committed(commitTid uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	moved := false
	for _, e := range j.commits.commit(commitTid) {
		j.advanceCommitPositionLocked(e)
		moved = true
	}
	if moved {
		j.commitDirty = true
		select {
		case j.commitKick <- struct{}{}:
		default:
		}
	}
}

func (j *Journaler) advanceCommitPositionLocked(e *commitEntry) {
	w := uint64(j.splayWidth)
	pos := clsjournal.ObjectPosition{ObjectNumber: e.objectNumber, TagTid: e.tagTid, EntryTid: e.entryTid}
	out := make([]clsjournal.ObjectPosition, 0, w)
	out = append(out, pos)
	for _, p := range j.commitPos.ObjectPositions {
		if p.ObjectNumber%w != e.objectNumber%w && uint64(len(out)) < w {
			out = append(out, p)
		}
	}
	j.commitPos.ObjectPositions = out
}

// commitLoop owns the background flush of the commit position: at most
// CommitAge after it first moves.
func (j *Journaler) commitLoop() {
	defer j.wg.Done()
	for {
		select {
		case <-j.bg.Done():
			return
		case <-j.commitKick:
		}
		select {
		case <-j.bg.Done():
			return // Close flushes
		case <-time.After(j.s.CommitAge):
		}
		if err := j.FlushCommitPosition(j.bg); err != nil && j.bg.Err() == nil {
			j.log.Error(err, "Journal commit position flush failed", "journal", j.id, "client", j.clientID)
		}
	}
}

// FlushCommitPosition writes the in-memory commit position to the header
// (if it moved), notifies watchers and trims object sets no client needs.
func (j *Journaler) FlushCommitPosition(ctx context.Context) error {
	j.commitMu.Lock()
	defer j.commitMu.Unlock()
	j.mu.Lock()
	if !j.commitDirty {
		j.mu.Unlock()
		return nil
	}
	pos := clonePosition(j.commitPos)
	j.commitDirty = false
	j.mu.Unlock()

	op := &objstore.WriteOp{}
	clsjournal.ClientCommit(op, j.clientID, pos)
	octx, cancel := j.opCtx(ctx)
	err := j.pool.Operate(octx, j.headerOID, op)
	cancel()
	if err != nil {
		j.mu.Lock()
		j.commitDirty = true
		j.mu.Unlock()
		return fmt.Errorf("journal %s: commit position of client %q: %w", j.id, j.clientID, err)
	}
	j.notifyUpdate(ctx)
	if err := j.refresh(ctx); err != nil {
		return err
	}
	if err := j.disconnectLaggyLocked(ctx); err != nil {
		return err
	}
	return j.trimLocked(ctx)
}

// connectedCommitsLocked returns the commit positions of the clients that
// trimming waits for, the connected ones, and whether one of them has not
// committed anything yet (it holds the whole journal). Called with mu held.
func (j *Journaler) connectedCommitsLocked() (commits [][]clsjournal.ObjectPosition, anyEmpty bool) {
	for _, c := range j.clients {
		switch {
		case c.State == clsjournal.ClientStateDisconnected:
		case len(c.CommitPosition.ObjectPositions) == 0:
			anyEmpty = true
		default:
			commits = append(commits, c.CommitPosition.ObjectPositions)
		}
	}
	return commits, anyEmpty
}

// trimLocked removes the object sets that every connected client has
// passed (JournalTrimmer). Called with commitMu held.
func (j *Journaler) trimLocked(ctx context.Context) error {
	j.mu.Lock()
	minSet, activeSet, w := j.minimumSet, j.activeSet, uint64(j.splayWidth)
	minCommitSet := activeSet
	commits, anyEmpty := j.connectedCommitsLocked()
	if anyEmpty {
		minCommitSet = minSet
	} else {
		for _, ps := range commits {
			for _, p := range ps {
				minCommitSet = min(minCommitSet, p.ObjectNumber/w)
			}
		}
	}
	j.mu.Unlock()
	if minCommitSet <= minSet {
		return nil
	}
	for set := minSet; set < minCommitSet; set++ {
		for i := uint64(0); i < w; i++ {
			octx, cancel := j.opCtx(ctx)
			err := removeObject(octx, j.dataPool, j.DataOID(set*w+i))
			cancel()
			if err != nil {
				return fmt.Errorf("journal %s: trim set %d: %w", j.id, set, err)
			}
		}
	}
	op := &objstore.WriteOp{}
	clsjournal.SetMinimumSet(op, minCommitSet)
	octx, cancel := j.opCtx(ctx)
	err := j.pool.Operate(octx, j.headerOID, op)
	cancel()
	if err != nil && !errors.Is(err, objstore.ErrStale) {
		return fmt.Errorf("journal %s: set minimum set %d: %w", j.id, minCommitSet, err)
	}
	j.mu.Lock()
	if minCommitSet > j.minimumSet {
		j.minimumSet = minCommitSet
	}
	j.mu.Unlock()
	j.log.V(4).Info("Journal trimmed", "journal", j.id, "minimumSet", minCommitSet)
	j.notifyUpdate(ctx)
	return nil
}
