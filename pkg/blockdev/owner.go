package blockdev

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
)

// What the device does as the image's lock owner, beyond I/O:
//   - it re-reads the image header after header updates and after its
//     header watch was lost (notifications may have been missed), before
//     the next I/O (librbd's refresh_seq), and grows with the image;
//   - it performs the resizes librbd clients proxy to the lock owner
//     (`rbd resize` while the volume is served), journaling them as librbd
//     does (a ResizeEvent, then an OpFinishEvent), so that rbd-mirror
//     replays them. Shrinking a served volume is refused (EBUSY): the
//     filesystem on it would lose data;
//   - it creates and removes the snapshots librbd clients proxy to the
//     lock owner (`rbd snap create/rm`, rbd-mirror's sync points), as
//     librbd's owner does (snapshot.go).

// refreshTimeout bounds a background header refresh.
const refreshTimeout = 30 * time.Second

// ownerState is the Device's owner-side state.
type ownerState struct {
	ready      atomic.Bool   // the device owns the lock (Open got past Acquire)
	seenSeq    atomic.Uint64 // the lock's UpdateSeq as of the last refresh
	refreshing atomic.Bool   // a background refresh is queued or running
	refreshMu  sync.Mutex    // one refresh at a time
	resizeMu   sync.Mutex    // one proxied resize at a time
	opTid      atomic.Uint64 // journal op tids (librbd's Journal::allocate_op_tid)
}

// startOwner reads the header once the lock is held (the previous owner
// may have changed it) and starts following header updates.
func (d *Device) startOwner(ctx context.Context) error {
	if err := d.refresh(ctx); err != nil {
		return err
	}
	d.owner.ready.Store(true)
	return nil
}

// headerUpdated is the lock's OnHeaderUpdate: it refreshes in the
// background, so that an idle device follows the image too. I/O does not
// wait for it: check refreshes first if the sequence moved.
func (d *Device) headerUpdated() {
	if !d.owner.ready.Load() || !d.owner.refreshing.CompareAndSwap(false, true) {
		return
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		d.owner.refreshing.Store(false)
		return
	}
	d.wg.Add(1)
	d.mu.Unlock()
	go func() {
		defer d.wg.Done()
		d.owner.refreshing.Store(false)
		ctx, cancel := context.WithTimeout(d.bg, refreshTimeout)
		defer cancel()
		if err := d.refresh(ctx); err != nil {
			d.log.Error(err, "Refreshing the image header after an update failed; retried before the next I/O", "image", d.img.Name())
		}
	}()
}

// refreshIfNeeded refreshes before an I/O if the header may have changed
// since the last refresh. A failed refresh is logged and retried on the
// next I/O; the I/O goes on with the header as last read (if the client
// was fenced, the I/O fails on its own).
func (d *Device) refreshIfNeeded(ctx context.Context) {
	if d.lock == nil || d.lock.UpdateSeq() == d.owner.seenSeq.Load() {
		return
	}
	// A lost lock (this client was fenced, or the lock broken) also moves
	// the sequence: stop taking I/O rather than try it.
	if err := d.lock.Err(); err != nil {
		d.fail(err)
		return
	}
	if err := d.refresh(ctx); err != nil {
		d.log.V(1).Info("Refreshing the image header before an I/O failed", "image", d.img.Name(), "err", err)
	}
}

// Refresh re-reads the image header now. The device grows if the image
// did (Options.OnResize is told).
func (d *Device) Refresh(ctx context.Context) error { return d.refresh(ctx) }

func (d *Device) refresh(ctx context.Context) error {
	grown, err := d.refreshLocked(ctx)
	if err != nil {
		return err
	}
	if grown > 0 {
		if f := d.o.OnResize; f != nil {
			f(grown)
		}
	}
	return nil
}

// refreshLocked re-reads the header under refreshMu; it returns the new
// size if the device grew, else 0.
func (d *Device) refreshLocked(ctx context.Context) (int64, error) {
	d.owner.refreshMu.Lock()
	defer d.owner.refreshMu.Unlock()
	var seq uint64
	if d.lock != nil {
		seq = d.lock.UpdateSeq()
	}
	if err := d.img.Refresh(ctx); err != nil {
		return 0, err
	}
	d.owner.seenSeq.Store(seq)
	size, cur := d.img.Size(), d.size.Load()
	switch {
	case size > cur:
		d.size.Store(size)
		d.log.Info("Journaled device grew with its image", "image", d.img.Name(), "from", cur, "to", size)
		return size, nil
	case size < cur:
		d.log.Error(nil, "The image shrank under a served device; I/O past its new end fails", "image", d.img.Name(), "deviceSize", cur, "imageSize", size)
	}
	return 0, nil
}

// resizeAsOwner is the lock's Resize: a resize a librbd client proxied to
// this owner. It returns errors carrying an errno (the requester's result).
func (d *Device) resizeAsOwner(ctx context.Context, size uint64, allowShrink bool) error {
	if !d.owner.ready.Load() || !d.snaps.open.Load() { // not while replaying
		return fmt.Errorf("resize %s: the device is still opening: %w", d.img.Name(), syscall.EAGAIN)
	}
	// Close waits for a resize in progress (it uses the journal).
	d.mu.Lock()
	closed, failed := d.closed, d.failed
	if !closed && failed == nil {
		d.wg.Add(1)
	}
	d.mu.Unlock()
	if closed || failed != nil {
		return fmt.Errorf("resize %s: device closed or failed: %w", d.img.Name(), syscall.EBUSY)
	}
	defer d.wg.Done()
	d.owner.resizeMu.Lock()
	defer d.owner.resizeMu.Unlock()
	if err := d.refresh(ctx); err != nil {
		return fmt.Errorf("resize %s: %w", d.img.Name(), err)
	}
	cur := d.size.Load()
	switch {
	case size > math.MaxInt64:
		return fmt.Errorf("resize %s to %d: %w", d.img.Name(), size, syscall.EINVAL)
	case int64(size) == cur:
		return nil
	case int64(size) < cur:
		return fmt.Errorf("resize %s from %d to %d: shrinking a served volume is refused: %w", d.img.Name(), cur, size, syscall.EBUSY)
	}
	// Journal the operation as librbd's owner does (rbd-mirror replays it):
	// the op event is durable before the header changes, and its result
	// follows.
	var opTid uint64
	var commit []uint64
	if d.j != nil {
		opTid = d.owner.opTid.Add(1)
		tid, err := d.appendOpEvent(ctx, rbdjournal.ResizeEvent{OpTid: opTid, Size: size})
		if err != nil {
			return fmt.Errorf("resize %s: journal the resize: %w", d.img.Name(), err)
		}
		commit = append(commit, tid)
	}
	// Only while the lock is still ours: a fenced owner's resize must not
	// land after a new owner took over.
	op := &objstore.WriteOp{}
	d.lock.Guard(op)
	clsrbd.SetSize(op, size)
	err := d.pool.Operate(ctx, clsrbd.HeaderOID(d.img.ID()), op)
	if d.j != nil {
		tid, jerr := d.appendOpEvent(ctx, rbdjournal.OpFinishEvent{OpTid: opTid, R: objstore.Result(err)})
		if jerr != nil && err == nil {
			err = fmt.Errorf("journal the end of the resize: %w", jerr)
		}
		if jerr == nil {
			commit = append(commit, tid)
		}
		for _, t := range commit {
			d.j.Committed(t)
		}
	}
	if err != nil {
		return fmt.Errorf("resize %s to %d: %w", d.img.Name(), size, err)
	}
	if err := d.refresh(ctx); err != nil {
		return fmt.Errorf("resize %s: %w", d.img.Name(), err)
	}
	// Other watchers (librbd clients, the requester) re-read the header.
	if err := d.lock.NotifyHeaderUpdate(ctx); err != nil {
		d.log.V(1).Info("Header update notification after a resize failed", "image", d.img.Name(), "err", err)
	}
	return nil
}

// appendOpEvent journals a management event and waits until it is durable;
// it returns the entry's commit tid.
func (d *Device) appendOpEvent(ctx context.Context, ev rbdjournal.Event) (uint64, error) {
	payload := d.opPayload(ev) // metadata.go
	d.mu.Lock()
	f := d.j.Append(d.tag, payload)
	d.mu.Unlock()
	if err := d.j.Flush(ctx); err != nil {
		return 0, err
	}
	if err := f.Wait(ctx); err != nil {
		return 0, err
	}
	return f.CommitTid, nil
}
