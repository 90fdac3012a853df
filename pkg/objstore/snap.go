package objstore

import (
	"context"
	"fmt"
)

// Self-managed snapshots, as RBD uses them: the pool allocates snapshot ids
// (SelfManagedSnapCreate) and forgets them (SelfManagedSnapRemove); a
// writer sends a snapshot context with each write (WriteOp.SetSnapContext)
// so that the store preserves an object's state as of each snapshot the
// write is the first to follow (clone-on-write), and readers read an object
// as of a snapshot (ReadOp.SetSnap).
//
// Object semantics follow Ceph's OSD (PrimaryLogPG::make_writeable and
// find_object_context):
//   - a write (any modifying operation, removal included) whose snapshot
//     context's Seq is newer than the object's first preserves the object
//     as it was: a clone named by Seq covering the context's snapshots
//     newer than the object's last seq (if there are any and the object
//     existed), then records Seq as the object's seq;
//   - a read at snapshot S returns the head if S is newer than the object's
//     seq, else the oldest clone covering S, else ErrNotFound (the object
//     did not exist at S);
//   - removing a snapshot id from the pool trims it from every object's
//     clones; a clone left covering no snapshot is deleted.

// SnapContext is what a writer sends so that the store preserves snapshots:
// the newest snapshot id the writer knows of (Seq) and the snapshots that
// exist, newest first. The zero value means "no snapshots".
type SnapContext struct {
	Seq   uint64
	Snaps []uint64
}

// Valid reports whether c is well formed (Ceph's SnapContext::is_valid):
// snapshots strictly descending, non-zero, none newer than Seq.
func (c SnapContext) Valid() bool {
	prev := c.Seq + 1
	if c.Seq == ^uint64(0) {
		return false
	}
	for _, s := range c.Snaps {
		if s == 0 || s >= prev {
			return false
		}
		prev = s
	}
	return true
}

func (c SnapContext) String() string { return fmt.Sprintf("%d%v", c.Seq, c.Snaps) }

// SetSnapContext makes the write preserve the snapshots of sc. Without it
// (or with the zero SnapContext) a write preserves nothing, as a librados
// write with an empty snapshot context.
func (op *WriteOp) SetSnapContext(sc SnapContext) { op.snapc = sc }

// SnapContext returns the write's snapshot context.
func (op *WriteOp) SnapContext() SnapContext { return op.snapc }

// SetSnap makes the read see every object as of snapshot id (0: the head,
// the default). Only data reads, stat and xattr/omap reads are meaningful
// at a snapshot; class methods see the snapshot's object too.
func (op *ReadOp) SetSnap(id uint64) { op.snap = id }

// Snap returns the snapshot the read sees (0: the head).
func (op *ReadOp) Snap() uint64 { return op.snap }

// SelfManagedSnapper is implemented by pools that allocate self-managed
// snapshot ids (both backends do).
type SelfManagedSnapper interface {
	// SelfManagedSnapCreate allocates a new snapshot id, newer than every
	// id allocated before in the pool (librados
	// selfmanaged_snap_create).
	SelfManagedSnapCreate(ctx context.Context) (uint64, error)
	// SelfManagedSnapRemove removes snapshot id: reads at it fail
	// afterwards and objects' clones are trimmed of it (librados
	// selfmanaged_snap_remove). Removing a removed id is not an error.
	SelfManagedSnapRemove(ctx context.Context, id uint64) error
}

// Snapper returns p's self-managed snapshot interface, or an error carrying
// ErrNotSupp if p has none.
func Snapper(p Pool) (SelfManagedSnapper, error) {
	if s, ok := p.(SelfManagedSnapper); ok {
		return s, nil
	}
	return nil, fmt.Errorf("pool %s: self-managed snapshots: %w", p.Name(), ErrNotSupp)
}
