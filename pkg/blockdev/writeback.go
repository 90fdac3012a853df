package blockdev

import (
	"context"
	"fmt"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
)

// The write-back ack policy (AckWriteBack).
//
// A write is acknowledged once it is queued for the journal: appended, in
// order, to the journaler's queue and registered in the pending set under
// one lock (submit), so that reads see it at once and the journal order is
// the acknowledgement order. Its journal entry becomes durable in the
// background. This is the contract of a disk with a volatile write cache
// (and of librbd's default write-around cache): a FLUSH is the guarantee
// point. What the device promises:
//
//   - Flush returns once every write acknowledged before it is durable:
//     Flush appends an AioFlush entry and waits for its future, and journal
//     futures complete strictly in append order. The loop device advertises
//     a volatile write cache without FUA (queue/write_cache "write back",
//     queue/fua 0), so the block layer turns a FUA write into the write
//     followed by a FLUSH, which reaches Flush as an fsync of the FUSE file.
//   - Reads see every acknowledged write (the pending set).
//   - A crash loses only writes after the last completed Flush, and what
//     survives is a prefix of the acknowledged writes in their order: the
//     journal's replay stops at the first entry missing from any splay
//     object (what lies beyond was never consistent), so the journal keeps
//     a prefix; the image only ever receives an entry after its future
//     completed, i.e. after it and every earlier entry are durable, so the
//     image holds no write past that prefix; the commit position moves only
//     over applied entries, in order. Replay re-applies the prefix past the
//     commit position in journal order over an image that holds the entries
//     before it and some of those after it (overlapping ones in order): a
//     byte's final value is then the one of the last entry of the prefix
//     that covers it, as if the prefix had been applied once, in order.
//   - An append that fails after the acknowledgement fails the device:
//     later I/O and the next Flush return errors (the journal fails every
//     later future too), like a disk that lost its cache.
//
// How much may be acknowledged but not durable ("dirty") is bounded per
// device (Options.MaxDirtyBytes) and, through a NodeBudget shared by every
// device of the process, node-wide: writers wait beyond either bound. The
// dirty bytes are a subset of the pending bytes (journaled or being
// journaled, not yet applied), whose data the device holds in memory: the
// NodeBudget bounds those node-wide too, so memory stays bounded however
// many volumes one node plugin serves.
//
// A node plugin restart that keeps the FUSE connection (pkg/fuseholder)
// may hand the connection over after a crash only if no acknowledged write
// can have been lost. With a Ring (wbring.go: the write-back buffer in a
// memfd the holder keeps too) none is: the successor re-journals what the
// ring holds past its durable position before it serves. Without one,
// such connections are marked as not acknowledging durably
// (pkg/nodeserver/holder.go) and a crash aborts them (EIO in the pods,
// never silently lost writes); a planned stop drains the journal first
// and hands over as usual.

const defaultMaxDirtyBytes = 24 << 20 // librbd's rbd_cache_max_dirty

// Node-wide defaults (NewNodeBudget with zero values). A node's memory is
// what bounds them, not a volume's throughput (each volume has its own
// 64 MiB and 24 MiB bounds, which two volumes writing flat out still get
// in full): a pending byte is held once (the journal entry's encoding,
// which the pending set refers to), and the plugin's other memory (FUSE
// request buffers, journal batches, the garbage collector's headroom under
// the soft memory limit, librados) must fit beside it in about 1 GiB
// however many volumes it serves. With 512 MiB, 50 volumes writing 1 MiB
// blocks peaked at 2.6–5.2 GiB.
const (
	DefaultNodeMaxPendingBytes = 128 << 20
	DefaultNodeMaxDirtyBytes   = 64 << 20
)

// nodeBytesPerRequest sets the node-wide bound on pending requests from
// the byte bound: one request per 32 KiB. A pending request costs memory
// beyond its data, about 10–20 KiB (the goroutine that applies it, its
// stack, its futures and pending-set entry): bounded by bytes alone, 512 MiB
// of 4 KiB writes were 80000 goroutines and 2.5 GiB with 50 volumes.
const (
	nodeBytesPerRequest = 32 << 10
	minNodeRequests     = 64
)

// NodeBudget bounds the pending and dirty bytes, and the pending requests,
// of every device sharing it (one per node plugin process), on top of each
// device's own bounds. Room that frees up goes to the waiting device that
// holds the least of it (first come, first served within a device), so no
// volume starves another (weighted.go says why arrival order alone did
// not do). Its methods are safe for concurrent use.
type NodeBudget struct {
	pending, dirty, requests *weighted
}

// NewNodeBudget returns a budget of maxPending pending bytes and maxDirty
// dirty bytes (0: the defaults). maxDirty is capped at maxPending (a dirty
// byte is a pending byte).
func NewNodeBudget(maxPending, maxDirty int64) *NodeBudget {
	if maxPending <= 0 {
		maxPending = DefaultNodeMaxPendingBytes
	}
	if maxDirty <= 0 {
		maxDirty = DefaultNodeMaxDirtyBytes
	}
	maxDirty = min(maxDirty, maxPending)
	return &NodeBudget{pending: newWeighted(maxPending), dirty: newWeighted(maxDirty),
		requests: newWeighted(max(maxPending/nodeBytesPerRequest, minNodeRequests))}
}

// NodeBudgetStats is a snapshot of a NodeBudget.
type NodeBudgetStats struct {
	PendingBytes, MaxPendingBytes int64
	DirtyBytes, MaxDirtyBytes     int64
	// PendingRequests: the requests holding pending bytes, and their bound.
	PendingRequests, MaxPendingRequests int64
	// Waits and Wait: acquisitions that waited at the node-wide bounds
	// (pending bytes or requests, dirty bytes), and their summed wait.
	Waits uint64
	Wait  time.Duration
}

// Stats returns the bytes held and the bounds.
func (b *NodeBudget) Stats() NodeBudgetStats {
	var st NodeBudgetStats
	var w1, w2, w3 uint64
	var d1, d2, d3 time.Duration
	st.PendingBytes, w1, d1 = b.pending.stats()
	st.DirtyBytes, w2, d2 = b.dirty.stats()
	st.PendingRequests, w3, d3 = b.requests.stats()
	st.MaxPendingBytes, st.MaxDirtyBytes, st.MaxPendingRequests = b.pending.size, b.dirty.size, b.requests.size
	st.Waits, st.Wait = w1+w2+w3, d1+d2+d3
	return st
}

// nodeShares is one device's part of a NodeBudget: its share of each of
// the node's semaphores, which serve the device holding the least first.
type nodeShares struct {
	pending, dirty, requests *share
}

func (b *NodeBudget) newShares() *nodeShares {
	return &nodeShares{pending: b.pending.newShare(), dirty: b.dirty.newShare(), requests: b.requests.newShare()}
}

// budget is what one request holds: its pending bytes (device and node),
// and with AckWriteBack its dirty bytes (device and node).
type budget struct {
	weight    int64
	writeBack bool
	dirtyHeld bool
	// ringSeq, ringEnd: the request's ring record (0: none).
	ringSeq, ringEnd uint64
}

// acquireBudget takes a request's pending bytes and, with AckWriteBack, its
// dirty bytes: device bounds first, then node-wide. A holder never needs
// another acquisition to release what it holds (pending bytes go when the
// request is applied, dirty bytes when its entries are durable), so waiting
// here cannot deadlock.
func (d *Device) acquireBudget(ctx context.Context, weight int64) (*budget, error) {
	b := &budget{weight: weight, writeBack: d.o.AckPolicy == AckWriteBack && d.dirty != nil}
	if err := d.inflight.acquire(ctx, weight); err != nil {
		return nil, err
	}
	if n := d.node; n != nil {
		if err := n.requests.acquire(ctx, 1); err != nil {
			d.inflight.release(weight)
			return nil, err
		}
		if err := n.pending.acquire(ctx, weight); err != nil {
			n.requests.release(1)
			d.inflight.release(weight)
			return nil, err
		}
	}
	if b.writeBack {
		if err := d.dirty.acquire(ctx, weight); err != nil {
			d.releasePending(weight)
			return nil, err
		}
		if n := d.node; n != nil {
			if err := n.dirty.acquire(ctx, weight); err != nil {
				d.dirty.release(weight)
				d.releasePending(weight)
				return nil, err
			}
		}
		b.dirtyHeld = true
	}
	return b, nil
}

// durable releases b's dirty bytes (its entries are durable, or failed).
// Idempotent.
func (d *Device) durable(b *budget) {
	if !b.dirtyHeld {
		return
	}
	b.dirtyHeld = false
	if n := d.node; n != nil {
		n.dirty.release(b.weight)
	}
	d.dirty.release(b.weight)
}

// releaseBudget releases everything b still holds (the request is applied,
// or failed).
func (d *Device) releaseBudget(b *budget) {
	d.durable(b)
	d.releasePending(b.weight)
}

func (d *Device) releasePending(weight int64) {
	if n := d.node; n != nil {
		n.pending.release(weight)
		n.requests.release(1)
	}
	d.inflight.release(weight)
}

// rejournal journals again, in order, the requests ring holds past its
// durable position (a dead predecessor acknowledged them; some may be in
// the journal already: wbring.go says why applying them again is right),
// waits until they are durable, and records that in the ring. Called by
// Open after the replay, before the device serves.
func (d *Device) rejournal(ctx context.Context, ring *Ring) error {
	recs := ring.Pending()
	if len(recs) == 0 {
		return nil
	}
	start := time.Now()
	var bytes int64
	for _, rec := range recs {
		var err error
		switch rec.Kind {
		case ringKindWrite:
			var changes []change
			for _, ev := range rbdjournal.SplitWrite(uint64(rec.Off), rec.Data, d.maxAppend) {
				changes = append(changes, change{off: int64(ev.Offset), end: int64(ev.Offset) + int64(len(ev.Data)), data: ev.Data, event: ev})
			}
			err = d.submitRejournal(ctx, changes, int64(len(rec.Data)))
		case ringKindDiscard:
			ev := rbdjournal.AioDiscardEvent{Offset: uint64(rec.Off), Length: uint64(rec.Length)}
			err = d.submitRejournal(ctx, []change{{off: rec.Off, end: rec.Off + rec.Length, event: ev}}, 0)
		case ringKindZero:
			ev := rbdjournal.AioWriteSameEvent{Offset: uint64(rec.Off), Length: uint64(rec.Length), Data: make([]byte, 512)}
			err = d.submitRejournal(ctx, []change{{off: rec.Off, end: rec.Off + rec.Length, event: ev}}, 0)
		}
		if err != nil {
			return fmt.Errorf("re-journal write-back record %d (%d+%d): %w", rec.Seq, rec.Off, rec.Length, err)
		}
		bytes += rec.Length
	}
	if err := d.Flush(ctx); err != nil {
		return fmt.Errorf("re-journal write-back records: %w", err)
	}
	last := recs[len(recs)-1]
	ring.durable(last.Seq, last.end)
	d.log.Info("Re-journaled the write-back requests a dead predecessor acknowledged", "image", d.img.Name(),
		"records", len(recs), "firstSeq", recs[0].Seq, "lastSeq", last.Seq, "bytes", bytes, "duration", time.Since(start))
	return nil
}

// submitRejournal submits re-journaled changes as a journaled write (not
// recorded in the ring again: they already are).
func (d *Device) submitRejournal(ctx context.Context, changes []change, weight int64) error {
	for _, c := range changes {
		if err := d.check(ctx, "re-journal", c.off, c.end-c.off); err != nil {
			return err
		}
	}
	return d.submit(ctx, "re-journal", changes, weight, ringEntry{})
}
