package blockdev

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
)

// Snapshots as the lock owner (librbd's operation/SnapshotCreateRequest and
// SnapshotRemoveRequest, reached through ImageWatcher's SnapCreate and
// SnapRemove payloads, or directly through CreateSnapshot/RemoveSnapshot).
//
// Creating a snapshot:
//  1. new writes wait (librbd's block_writes), and every write acknowledged
//     before is applied to the image (the pending set drains): the
//     snapshot holds every acknowledged write;
//  2. the SnapCreate event is journaled (op tid) and durable — after every
//     earlier write's entry;
//  3. a self-managed snapshot id is allocated from the pool and the
//     snapshot added to the header with rbd.snapshot_add (guarded by the
//     exclusive lock; ESTALE — a concurrent snapshot took a newer id —
//     allocates again, as librbd does);
//  4. the header is re-read: from now on every data write carries the new
//     snapshot context, so the store clones an object before its first
//     overwrite (the snapshot stays a point-in-time image);
//  5. the OpFinish event (the result) is journaled, then writes resume —
//     so that no write lies between SnapCreate and OpFinish in the journal
//     (librbd resumes writes before OpFinish; its replay copes with that);
//  6. the other watchers are told the header changed.
//
// Removing one follows librbd's order: SnapRemove is journaled, the
// snapshot moved to the trash namespace (rbd.snapshot_trash_add), its
// children checked (a snapshot with clone v2 children stays in the trash),
// its id released from the pool (clones trimmed), its record removed
// (rbd.snapshot_remove), OpFinish journaled.
//
// Replay (librbd's journal/Replay.cc): a SnapCreate or SnapRemove event is
// executed when its OpFinish arrives with result 0, ignoring EEXIST
// (create) and ENOENT (remove), as librbd's replay does; without an
// OpFinish, or with an error, the operation is not replayed. Both events
// and OpFinish are barriers: entries before them are applied first.

// snapState is the Device's snapshot state.
type snapState struct {
	// open is set once Open has replayed the journal and started its
	// epoch: before, an operation would journal into no epoch (and race
	// the replay).
	open atomic.Bool

	// blocked, while a snapshot is being made, is closed when writes may
	// go on (guarded by Device.mu).
	blocked chan struct{}

	replayMu  sync.Mutex
	replayOps map[replayOp]rbdjournal.Event // SnapCreate/SnapRemove waiting for their OpFinish
}

// replayOp names an operation in the journal: op tids restart with each
// owner's epoch (tag).
type replayOp struct{ tag, opTid uint64 }

// ErrSnapshotExists and ErrSnapshotNotFound are returned (wrapped, carrying
// EEXIST and ENOENT for librbd requesters) by CreateSnapshot and
// RemoveSnapshot.
var (
	ErrSnapshotExists   = fmt.Errorf("snapshot exists: %w", syscall.EEXIST)
	ErrSnapshotNotFound = fmt.Errorf("%w: %w", image.ErrSnapshotNotFound, syscall.ENOENT)
)

// CreateSnapshot makes snapshot ns/name of the served image as librbd's
// lock owner does; the snapshot holds every write acknowledged before
// CreateSnapshot was called. It returns the snapshot's id.
func (d *Device) CreateSnapshot(ctx context.Context, ns clsrbd.SnapshotNamespace, name string) (uint64, error) {
	if err := d.enterOwnerOp("snapshot create"); err != nil {
		return 0, err
	}
	defer d.wg.Done()
	d.owner.resizeMu.Lock() // one maintenance operation at a time
	defer d.owner.resizeMu.Unlock()
	if err := d.refresh(ctx); err != nil {
		return 0, fmt.Errorf("snapshot %s@%s: %w", d.img.Name(), name, err)
	}
	if name == "" {
		return 0, fmt.Errorf("snapshot of %s: empty name: %w", d.img.Name(), syscall.EINVAL)
	}
	// librbd's Operations::snap_create checks the name before proxying;
	// the owner checks again (snapshot_add fails with EEXIST too).
	if _, err := d.img.Snapshot(ctx, ns, name); err == nil {
		return 0, fmt.Errorf("snapshot %s@%s (%s): %w", d.img.Name(), name, ns, ErrSnapshotExists)
	} else if !errors.Is(err, image.ErrSnapshotNotFound) {
		return 0, err
	}
	return d.createSnapshot(ctx, ns, name, true)
}

// RemoveSnapshot removes snapshot ns/name as librbd's lock owner does.
func (d *Device) RemoveSnapshot(ctx context.Context, ns clsrbd.SnapshotNamespace, name string) error {
	if err := d.enterOwnerOp("snapshot remove"); err != nil {
		return err
	}
	defer d.wg.Done()
	d.owner.resizeMu.Lock()
	defer d.owner.resizeMu.Unlock()
	if err := d.refresh(ctx); err != nil {
		return fmt.Errorf("remove snapshot %s@%s: %w", d.img.Name(), name, err)
	}
	info, err := d.img.Snapshot(ctx, ns, name)
	if errors.Is(err, image.ErrSnapshotNotFound) {
		return fmt.Errorf("remove snapshot %s@%s (%s): %w", d.img.Name(), name, ns, ErrSnapshotNotFound)
	}
	if err != nil {
		return err
	}
	return d.removeSnapshot(ctx, info, true)
}

// snapCreateAsOwner and snapRemoveAsOwner are the lock's SnapCreate and
// SnapRemove: requests librbd clients proxied to this owner.
func (d *Device) snapCreateAsOwner(ctx context.Context, ns rbdnotify.SnapshotNamespace, name string, _ uint64) error {
	_, err := d.CreateSnapshot(ctx, ns, name)
	return err
}

func (d *Device) snapRemoveAsOwner(ctx context.Context, ns rbdnotify.SnapshotNamespace, name string) error {
	return d.RemoveSnapshot(ctx, ns, name)
}

// enterOwnerOp registers an owner operation with Close (d.wg); the caller
// calls d.wg.Done.
func (d *Device) enterOwnerOp(what string) error {
	if d.readOnly {
		return fmt.Errorf("%s on %s: %w", what, d.img.Name(), ErrReadOnly)
	}
	if !d.owner.ready.Load() || !d.snaps.open.Load() {
		return fmt.Errorf("%s on %s: the device is still opening: %w", what, d.img.Name(), syscall.EAGAIN)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || d.failed != nil {
		return fmt.Errorf("%s on %s: device closed or failed: %w", what, d.img.Name(), syscall.EBUSY)
	}
	d.wg.Add(1)
	return nil
}

// blockWrites makes new writes wait until the returned function is called.
func (d *Device) blockWrites() (resume func()) {
	ch := make(chan struct{})
	d.mu.Lock()
	d.snaps.blocked = ch
	d.mu.Unlock()
	return func() {
		d.mu.Lock()
		d.snaps.blocked = nil
		d.mu.Unlock()
		close(ch)
	}
}

// waitWritable waits while a snapshot is being made. Called with d.mu
// held; it returns with d.mu held.
func (d *Device) waitWritable(ctx context.Context) error {
	for d.snaps.blocked != nil {
		ch := d.snaps.blocked
		d.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			d.mu.Lock()
			return ctx.Err()
		}
		d.mu.Lock()
	}
	return nil
}

// drain waits until every change pending now is applied to the image.
func (d *Device) drain(ctx context.Context) error {
	d.mu.Lock()
	var chans []chan struct{}
	for _, w := range d.pending.all() {
		chans = append(chans, w.applied)
	}
	if d.meta != nil {
		// Metadata mode: the writes in flight, each done once its data
		// is in place and its exact entry queued (before the snapshot's
		// op entry).
		for _, w := range d.meta.order.all() {
			chans = append(chans, w.applied)
		}
	}
	d.mu.Unlock()
	for _, ch := range chans {
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// A failed apply leaves its change out of the image: the snapshot
	// would miss an acknowledged write.
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failed != nil {
		return fmt.Errorf("%w: %w", ErrFailed, d.failed)
	}
	return nil
}

// createSnapshot runs the steps of a snapshot creation; journaled is false
// while replaying (the events are in the journal already).
func (d *Device) createSnapshot(ctx context.Context, ns clsrbd.SnapshotNamespace, name string, journaled bool) (uint64, error) {
	start := time.Now()
	resume := d.blockWrites()
	defer resume()
	if err := d.drain(ctx); err != nil {
		return 0, fmt.Errorf("snapshot %s@%s: wait for acknowledged writes: %w", d.img.Name(), name, err)
	}
	journaled = journaled && d.j != nil
	var opTid uint64
	var commit []uint64
	if journaled {
		opTid = d.owner.opTid.Add(1)
		tid, err := d.appendOpEvent(ctx, rbdjournal.SnapCreateEvent{OpTid: opTid, Namespace: ns, Name: name})
		if err != nil {
			return 0, fmt.Errorf("snapshot %s@%s: journal the snapshot: %w", d.img.Name(), name, err)
		}
		commit = append(commit, tid)
	}
	id, err := d.addSnapshot(ctx, ns, name)
	if err == nil {
		// From here on writes carry the new snapshot context.
		if rerr := d.refresh(ctx); rerr != nil {
			// Writes must not go on with the old context: the snapshot
			// would change with them.
			d.fail(fmt.Errorf("snapshot %s@%s added but the header could not be re-read: %w", d.img.Name(), name, rerr))
			err = rerr
		}
	}
	if journaled {
		if jerr := d.finishOp(ctx, opTid, err, commit); jerr != nil && err == nil {
			err = fmt.Errorf("journal the end of the snapshot: %w", jerr)
		}
	}
	if err != nil {
		return 0, fmt.Errorf("snapshot %s@%s: %w", d.img.Name(), name, err)
	}
	if d.lock != nil {
		if err := d.lock.NotifyHeaderUpdate(ctx); err != nil {
			d.log.V(1).Info("Header update notification after a snapshot failed", "image", d.img.Name(), "err", err)
		}
	}
	d.log.Info("Snapshot created by the lock owner", "image", d.img.Name(), "snapshot", name, "namespace", ns.String(), "id", id, "opTid", opTid, "duration", time.Since(start).Round(time.Millisecond))
	return id, nil
}

// finishOp journals an operation's OpFinish and commits its entries.
func (d *Device) finishOp(ctx context.Context, opTid uint64, opErr error, commit []uint64) error {
	tid, err := d.appendOpEvent(ctx, rbdjournal.OpFinishEvent{OpTid: opTid, R: objstore.Result(opErr)})
	if err == nil {
		commit = append(commit, tid)
	}
	for _, t := range commit {
		d.j.Committed(t)
	}
	return err
}

// addSnapshot allocates a snapshot id and records the snapshot in the
// header (SnapshotCreateRequest's allocate_snap_id and create_snap).
func (d *Device) addSnapshot(ctx context.Context, ns clsrbd.SnapshotNamespace, name string) (uint64, error) {
	sn, err := objstore.Snapper(d.pool)
	if err != nil {
		return 0, err
	}
	for attempt := 0; ; attempt++ {
		id, err := sn.SelfManagedSnapCreate(ctx)
		if err != nil {
			return 0, fmt.Errorf("allocate a snapshot id: %w", err)
		}
		op := &objstore.WriteOp{}
		if d.lock != nil {
			d.lock.Guard(op)
		}
		clsrbd.SnapshotAdd(op, id, name, ns)
		err = d.pool.Operate(ctx, clsrbd.HeaderOID(d.img.ID()), op)
		if err == nil {
			return id, nil
		}
		if errors.Is(err, objstore.ErrStale) && attempt < 10 {
			continue // a newer snapshot id was recorded meanwhile
		}
		// librbd releases the id of a snapshot it failed to add.
		if rerr := sn.SelfManagedSnapRemove(context.WithoutCancel(ctx), id); rerr != nil {
			d.log.V(1).Info("Releasing an unused snapshot id failed", "image", d.img.Name(), "id", id, "err", rerr)
		}
		return 0, fmt.Errorf("add snapshot %q: %w", name, err)
	}
}

// removeSnapshot runs the steps of a snapshot removal.
func (d *Device) removeSnapshot(ctx context.Context, info clsrbd.SnapshotInfo, journaled bool) error {
	start := time.Now()
	journaled = journaled && d.j != nil
	var opTid uint64
	var commit []uint64
	if journaled {
		opTid = d.owner.opTid.Add(1)
		tid, err := d.appendOpEvent(ctx, rbdjournal.SnapRemoveEvent{OpTid: opTid, Namespace: info.Namespace, Name: info.Name})
		if err != nil {
			return fmt.Errorf("remove snapshot %s@%s: journal the removal: %w", d.img.Name(), info.Name, err)
		}
		commit = append(commit, tid)
	}
	err := d.deleteSnapshot(ctx, info)
	if rerr := d.refresh(ctx); rerr != nil && err == nil {
		err = rerr
	}
	if journaled {
		if jerr := d.finishOp(ctx, opTid, err, commit); jerr != nil && err == nil {
			err = fmt.Errorf("journal the end of the removal: %w", jerr)
		}
	}
	if err != nil {
		return fmt.Errorf("remove snapshot %s@%s: %w", d.img.Name(), info.Name, err)
	}
	if d.lock != nil {
		if err := d.lock.NotifyHeaderUpdate(ctx); err != nil {
			d.log.V(1).Info("Header update notification after a snapshot removal failed", "image", d.img.Name(), "err", err)
		}
	}
	d.log.Info("Snapshot removed by the lock owner", "image", d.img.Name(), "snapshot", info.Name, "namespace", info.Namespace.String(), "id", info.ID, "opTid", opTid, "duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// deleteSnapshot is SnapshotRemoveRequest: trash, get, release the id,
// remove the record.
func (d *Device) deleteSnapshot(ctx context.Context, info clsrbd.SnapshotInfo) error {
	hdr := clsrbd.HeaderOID(d.img.ID())
	trashed := false
	if info.Namespace.Type != rbdnotify.SnapNamespaceTrash {
		op := &objstore.WriteOp{}
		if d.lock != nil {
			d.lock.Guard(op)
		}
		clsrbd.SnapshotTrashAdd(op, info.ID)
		err := d.pool.Operate(ctx, hdr, op)
		switch {
		case err == nil, errors.Is(err, objstore.ErrExists):
			trashed = true
		case errors.Is(err, objstore.ErrNotSupp):
			// trash / clone v2 not supported by the OSD
		default:
			return fmt.Errorf("move the snapshot to the trash: %w", err)
		}
	}
	cur, err := clsrbd.SnapshotGet(ctx, d.pool, hdr, info.ID)
	if err != nil {
		return fmt.Errorf("get the snapshot: %w", err)
	}
	if cur.ChildCount > 0 {
		// Clone v2 children keep it; it stays in the trash until the last
		// one is gone. Only an error if it could not be trashed.
		if trashed {
			return nil
		}
		return fmt.Errorf("snapshot has %d clone children: %w", cur.ChildCount, objstore.ErrBusy)
	}
	if sn, err := objstore.Snapper(d.pool); err == nil {
		if err := sn.SelfManagedSnapRemove(ctx, info.ID); err != nil && !errors.Is(err, objstore.ErrNotFound) {
			return fmt.Errorf("release snapshot id %d: %w", info.ID, err)
		}
	}
	op := &objstore.WriteOp{}
	if d.lock != nil {
		d.lock.Guard(op)
	}
	clsrbd.SnapshotRemove(op, info.ID)
	if err := d.pool.Operate(ctx, hdr, op); err != nil {
		return fmt.Errorf("remove the snapshot record: %w", err)
	}
	return nil
}

// replaySnapEvent applies a replayed SnapCreate, SnapRemove or OpFinish
// event (Replay.cc): the operation runs when its OpFinish says it
// succeeded.
func (d *Device) replaySnapEvent(ctx context.Context, tag uint64, ev rbdjournal.Event) error {
	s := &d.snaps
	s.replayMu.Lock()
	defer s.replayMu.Unlock()
	if s.replayOps == nil {
		s.replayOps = map[replayOp]rbdjournal.Event{}
	}
	switch ev := ev.(type) {
	case rbdjournal.SnapCreateEvent:
		s.replayOps[replayOp{tag, ev.OpTid}] = ev
	case rbdjournal.SnapRemoveEvent:
		s.replayOps[replayOp{tag, ev.OpTid}] = ev
	case rbdjournal.OpFinishEvent:
		key := replayOp{tag, ev.OpTid}
		op, ok := s.replayOps[key]
		delete(s.replayOps, key)
		if !ok || ev.R < 0 {
			return nil
		}
		if err := d.refresh(ctx); err != nil {
			return err
		}
		switch op := op.(type) {
		case rbdjournal.SnapCreateEvent:
			_, err := d.img.Snapshot(ctx, op.Namespace, op.Name)
			if err == nil {
				return nil // made before the crash (librbd ignores EEXIST)
			}
			if !errors.Is(err, image.ErrSnapshotNotFound) {
				return err
			}
			_, err = d.createSnapshot(ctx, op.Namespace, op.Name, false)
			if errors.Is(err, objstore.ErrExists) {
				return nil
			}
			return err
		case rbdjournal.SnapRemoveEvent:
			info, err := d.img.Snapshot(ctx, op.Namespace, op.Name)
			if errors.Is(err, image.ErrSnapshotNotFound) {
				return nil // removed before the crash (librbd ignores ENOENT)
			}
			if err != nil {
				return err
			}
			if err := d.deleteSnapshot(ctx, info); err != nil {
				return err
			}
			return d.refresh(ctx)
		}
	}
	return nil
}
