// Package blockdev is the journaled block device: an RBD image whose every
// write is first appended to the image's journal as a librbd event, then
// applied to the image's data objects, then committed. It implements the
// interface fuseloop exposes to the kernel.
//
// Invariants (DESIGN.md "The journaled write path"):
//   - a change is applied to the image only once its journal entry and every
//     earlier one are durable (the journal future completed);
//   - changes to overlapping extents reach the image in journal order;
//   - a read returns the latest acknowledged write, even while its apply is
//     still in flight (the pending set is laid over what the image holds);
//   - Flush returns once every earlier acknowledged write is durable;
//   - Open replays what lies past the commit position before anything else,
//     then starts a new epoch (tag) whose predecessor records where the old
//     epoch ended, so a stale writer's later entries are never replayed.
package blockdev

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
	"github.com/csi-rbdj/csi-rbdj/pkg/extentlog"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
	"k8s.io/klog/v2"
)

// AckPolicy says when a write is acknowledged.
type AckPolicy int

const (
	// AckApplied acknowledges a write once it is in the journal and in the
	// image (the conservative policy).
	AckApplied AckPolicy = iota
	// AckJournaled acknowledges a write once its journal entry is durable;
	// the image is updated in the background while reads see the change
	// through the pending set.
	AckJournaled
	// AckWriteBack acknowledges a write once it is queued, in order, for
	// the journal (a volatile write cache: Flush is the guarantee point;
	// writeback.go says what it promises).
	AckWriteBack
)

func (p AckPolicy) String() string {
	switch p {
	case AckApplied:
		return "applied"
	case AckJournaled:
		return "journaled"
	case AckWriteBack:
		return "writeback"
	}
	return fmt.Sprintf("AckPolicy(%d)", int(p))
}

// AckPolicies lists every AckPolicy.
var AckPolicies = []AckPolicy{AckApplied, AckJournaled, AckWriteBack}

// ParseAckPolicy parses "applied", "journaled" or "writeback".
func ParseAckPolicy(s string) (AckPolicy, error) {
	for _, p := range AckPolicies {
		if s == p.String() {
			return p, nil
		}
	}
	return 0, fmt.Errorf("unknown ack policy %q (want applied, journaled or writeback)", s)
}

// Errors callers branch on.
var (
	ErrNotJournaled = errors.New("image does not have the journaling feature")
	ErrOutOfRange   = errors.New("I/O beyond the end of the device")
	ErrClosed       = errors.New("device closed")
	ErrFailed       = errors.New("device failed")
	// ErrLocked: another live client owns the image (its exclusive lock).
	ErrLocked = exclusivelock.ErrLocked
)

// Options configure a Device. Zero values select defaults.
type Options struct {
	AckPolicy AckPolicy
	// MaxPayload caps the data bytes of one journal event; a larger write
	// becomes several events. librbd uses 16 KiB; bigger is faster.
	MaxPayload int
	// MaxPendingBytes bounds the written bytes journaled but not yet
	// applied; writers wait beyond it (backpressure).
	MaxPendingBytes int64
	// MaxDirtyBytes (AckWriteBack only) bounds the written bytes
	// acknowledged but not yet durable in the journal; writers wait beyond
	// it. 0: 24 MiB (librbd's rbd_cache_max_dirty).
	MaxDirtyBytes int64
	// Node, when set, is the node-wide bound of pending and dirty bytes
	// shared by every device of the process (writeback.go), on top of this
	// device's own.
	Node *NodeBudget
	// Ring (AckWriteBack, full journal mode) is the write-back ring that
	// outlives this process (wbring.go): Open first re-journals the
	// records a dead predecessor left past its durable position, then
	// every write-back request is recorded there before it is
	// acknowledged. The caller owns it (and closes it after Close).
	Ring *Ring
	// ApplyLinger (AckJournaled only) is how long a journaled write waits
	// before it is applied to the image, for later writes to the same data
	// object to join its operation: the image then costs the store far
	// fewer operations. Reads see the write meanwhile (the pending set) and
	// Flush does not wait for it (the journal holds it). 0 selects the
	// default; negative applies at once.
	ApplyLinger time.Duration
	// Journal tunes batching and commit-position flushing.
	Journal journal.Settings
	// ClientID is the journal client (librbd's is "").
	ClientID string
	// Unjournaled serves the image without a journal (benchmark baseline).
	Unjournaled bool
	// JournalMode selects the write path (metadata.go): the image must
	// have been created for it (full: librbd's journaling feature;
	// metadata: without it).
	JournalMode JournalMode
	// Fencer fences a dead lock holder before its lock is broken.
	Fencer exclusivelock.Fencer
	// LockDescription is recorded with the lock (e.g. the node's name).
	LockDescription string
	// LockRefusedWait is how long a librbd client that refuses to give
	// up the image's lock is asked again (exclusivelock.Options.RefusedWait:
	// rbd-mirror holds an image it replayed into until it notices the
	// promotion). Zero: Open fails at the first refusal.
	LockRefusedWait time.Duration
	// DeadOwners are client addresses known dead (this node plugin's own
	// previous incarnation): their locks are broken without waiting for
	// their watches to time out.
	DeadOwners []string
	// OwnerTimeout is how long a lock holder that still watches the image
	// has to answer a lock request before it counts as frozen and is
	// fenced (exclusivelock.Options.OwnerTimeout; 0: its default).
	OwnerTimeout time.Duration
	// OnResize is called (not under any lock of the device) after the
	// device grew because the image did (a resize by the controller, seen
	// through a header update or performed as lock owner): the kernel-side
	// device follows it (fuseloop.Device.Resize).
	OnResize func(newSize int64)
}

const (
	defaultApplyLinger     = 200 * time.Millisecond
	defaultMaxPayload      = 256 << 10
	defaultMaxPendingBytes = 64 << 20
)

// Device is an open journaled image. Its methods are safe for concurrent use.
type Device struct {
	img  *image.Image
	pool objstore.Pool
	lock *exclusivelock.Lock // nil when opened read-only (readonly.go)
	j    *journal.Journaler  // nil when unjournaled or read-only
	tag  uint64
	o    Options
	size atomic.Int64
	// log is the logger of Open's context (it carries the request's values,
	// e.g. the volume id); bg is Open's context without its cancellation,
	// for work that must outlive the request (applying journaled writes,
	// header refreshes) but keep its values.
	log klog.Logger
	bg  context.Context

	readOnly    bool                // OpenReadOnly: no lock, no journal, no writes
	meta        *metaState          // metadata mode (metadata.go); nil in full mode
	owner       ownerState          // header refresh and owner-side requests (owner.go)
	snaps       snapState           // snapshots as owner, and their replay (snapshot.go)
	replayStats journal.ReplayStats // what Open replayed
	counters    deviceCounters      // Stats (stats.go)

	maxAppend uint64

	mu      sync.Mutex
	pending pendingSet
	closed  bool
	failed  error

	// inflight bounds MaxPendingBytes: each write holds its bytes of it.
	inflight *weighted
	// dirty bounds MaxDirtyBytes (AckWriteBack; nil otherwise): each write
	// holds its bytes of it until its journal entries are durable.
	dirty *weighted
	// node is this device's share of Options.Node (nil without one).
	node *nodeShares
	// ring records write-back requests before they are acknowledged
	// (Options.Ring; nil unless AckWriteBack in full journal mode).
	ring *Ring
	wg   sync.WaitGroup // apply goroutines
}

// Open opens image name in pool as a journaled device: replays its journal,
// then starts a new epoch. The caller must own the image (exclusive lock).
func Open(ctx context.Context, pool objstore.Pool, name string, o Options) (*Device, error) {
	if o.MaxPayload <= 0 {
		o.MaxPayload = defaultMaxPayload
	}
	if o.MaxPendingBytes <= 0 {
		o.MaxPendingBytes = defaultMaxPendingBytes
	}
	if o.ApplyLinger == 0 {
		o.ApplyLinger = defaultApplyLinger
	}
	if o.MaxDirtyBytes <= 0 {
		o.MaxDirtyBytes = defaultMaxDirtyBytes
	}
	o.MaxDirtyBytes = min(o.MaxDirtyBytes, o.MaxPendingBytes)
	if o.AckPolicy == AckWriteBack && (o.Unjournaled || o.JournalMode == JournalMetadata) {
		// Metadata mode acknowledges once the data is durable in place
		// (its exact entry follows, batched: metadata.go), and an
		// unjournaled device has no queue: neither acknowledges earlier.
		// Their acknowledgements keep every promise of write-back (and
		// more).
		klog.FromContext(ctx).Info("Ack policy writeback is served as journaled in this mode", "image", name, "journalMode", o.JournalMode, "unjournaled", o.Unjournaled)
		o.AckPolicy = AckJournaled
	}
	img, err := image.Open(ctx, pool, name)
	if err != nil {
		return nil, fmt.Errorf("open device %s: %w", name, err)
	}
	if !o.Unjournaled && o.JournalMode == JournalFull && img.Features()&clsrbd.FeatureJournaling == 0 {
		return nil, fmt.Errorf("open device %s: %w", name, ErrNotJournaled)
	}
	d := &Device{img: img, pool: pool, o: o, log: klog.FromContext(ctx), bg: context.WithoutCancel(ctx), inflight: newWeighted(o.MaxPendingBytes)}
	if o.AckPolicy == AckWriteBack {
		d.dirty = newWeighted(o.MaxDirtyBytes)
	}
	if o.Node != nil {
		d.node = o.Node.newShares()
	}
	d.size.Store(img.Size())
	// Own the image before touching its journal: replaying while another
	// writer appends would race it.
	lk, err := exclusivelock.Acquire(ctx, pool, clsrbd.HeaderOID(img.ID()), exclusivelock.Options{
		Fencer: o.Fencer, Description: o.LockDescription, Dead: o.DeadOwners, OwnerTimeout: o.OwnerTimeout,
		RefusedWait: o.LockRefusedWait, OnHeaderUpdate: d.headerUpdated, Resize: d.resizeAsOwner,
		SnapCreate: d.snapCreateAsOwner, SnapRemove: d.snapRemoveAsOwner,
	})
	if err != nil {
		return nil, fmt.Errorf("open device %s: %w", name, err)
	}
	d.lock = lk
	// The previous owner may have changed the header: read it as owner.
	if err := d.startOwner(ctx); err != nil {
		lk.Release(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("open device %s: %w", name, err)
	}
	if o.Unjournaled {
		d.snaps.open.Store(true)
		return d, nil
	}
	if o.JournalMode == JournalMetadata {
		if err := d.openMetadata(ctx); err != nil {
			lk.Release(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("open device %s: %w", name, err)
		}
		d.snaps.open.Store(true) // owner operations may journal now
		return d, nil
	}
	j, err := journal.Open(ctx, pool, img.ID(), o.ClientID, journal.Options{Settings: o.Journal})
	if err != nil {
		lk.Release(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("open device %s: %w", name, err)
	}
	d.j = j
	// The journal holds every write until the commit position moves past
	// it, and that move is a synced operation of the same client: image
	// writes need no sync of their own.
	img.SetLazyWrites(true)
	d.maxAppend = rbdjournal.MaxAppendSize(j.Order(), uint64(o.MaxPayload)+rbdjournal.AioWriteFixedSize)
	if err := d.start(ctx); err != nil {
		_ = j.Close(context.WithoutCancel(ctx))
		lk.Release(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("open device %s: %w", name, err)
	}
	if o.Ring != nil {
		if err := d.rejournal(ctx, o.Ring); err != nil {
			_ = d.Close(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("open device %s: %w", name, err)
		}
		if o.AckPolicy == AckWriteBack {
			d.ring = o.Ring
		}
	}
	d.snaps.open.Store(true) // owner operations may journal now
	return d, nil
}

// start replays the journal and begins a new epoch.
func (d *Device) start(ctx context.Context) error {
	c, err := d.j.Client()
	if err != nil {
		return err
	}
	var cd rbdjournal.ClientData
	if err := cephenc.Unmarshal(c.Data, &cd); err != nil {
		return fmt.Errorf("journal client %q data: %w", d.o.ClientID, err)
	}
	meta, ok := cd.Meta.(rbdjournal.ImageClientMeta)
	if !ok {
		return fmt.Errorf("journal client %q is not an image client", d.o.ClientID)
	}
	epochEnd, err := extentlog.EpochEnds(ctx, d.j, &meta.TagClass)
	if err != nil {
		return err
	}
	if err := d.checkTagOwner(ctx, meta.TagClass); err != nil { // readonly.go
		return err
	}
	start := time.Now()
	entry, wait := d.replayHandler(ctx) // metadata.go
	st, err := d.j.Replay(ctx, journal.ReplayOptions{EpochEnd: epochEnd}, entry)
	if werr := wait(); err == nil {
		err = werr
	}
	if err != nil {
		return err
	}
	d.replayStats = st
	d.counters.replayDuration = time.Since(start)
	if err := d.j.FlushCommitPosition(ctx); err != nil {
		return err
	}
	// The new epoch records where the old one ended: its predecessor.
	td := rbdjournal.TagData{MirrorUUID: rbdjournal.LocalMirrorUUID}
	if ps := d.j.CommitPosition().ObjectPositions; len(ps) > 0 {
		td.Predecessor = rbdjournal.TagPredecessor{CommitValid: true, TagTid: ps[0].TagTid, EntryTid: ps[0].EntryTid}
	}
	tag, err := d.j.AllocateTag(ctx, meta.TagClass, cephenc.Marshal(td))
	if err != nil {
		return err
	}
	d.tag = tag.Tid
	// Not with AckWriteBack: a change overlapping a pending one is applied
	// only once that one is, and each would linger on its own, so a chain
	// of overwrites of the same blocks (a filesystem's metadata) applies
	// at one linger per link; write-back produces such chains far faster
	// than they drain (measured: a planned stop draining for 8 s instead
	// of 0.2 s with ext4). The image still combines writes under load.
	if d.o.AckPolicy == AckJournaled && d.o.ApplyLinger > 0 && d.meta == nil {
		d.img.SetWriteLinger(d.o.ApplyLinger)
	}
	d.log.Info("Journaled device started", "image", d.img.Name(), "journal", d.j.ID(), "tag", d.tag,
		"replayedEntries", st.Entries, "replayedBytes", st.Bytes, "staleEntries", st.StaleEntries,
		"droppedEntries", st.Dropped, "replayTime", time.Since(start), "journalMode", d.JournalMode(),
		"tornExtents", d.MetadataReplayStats().TornExtents)
	return nil
}

func (d *Device) applyEvent(ctx context.Context, ev rbdjournal.Event) error {
	switch ev := ev.(type) {
	case rbdjournal.AioWriteEvent:
		if _, err := d.img.WriteAt(ctx, ev.Data, int64(ev.Offset)); err != nil {
			return fmt.Errorf("replay write %d+%d: %w", ev.Offset, len(ev.Data), err)
		}
	case rbdjournal.AioDiscardEvent:
		if err := d.img.Discard(ctx, int64(ev.Offset), int64(ev.Length)); err != nil {
			return fmt.Errorf("replay discard %d+%d: %w", ev.Offset, ev.Length, err)
		}
	case rbdjournal.AioWriteSameEvent:
		if err := d.writeSame(ctx, int64(ev.Offset), int64(ev.Length), ev.Data); err != nil {
			return fmt.Errorf("replay write-same %d+%d: %w", ev.Offset, ev.Length, err)
		}
	case rbdjournal.AioFlushEvent, rbdjournal.OpFinishEvent:
		// Nothing to apply: a flush is a barrier the journal order already
		// keeps (replayed snapshot operations: see replaySnapEvent).
	default:
		// Maintenance operations (snapshots, resize, ...) are applied by
		// librbd's management path, not by the data path.
		d.log.Info("Journal event skipped by the data path", "image", d.img.Name(), "event", ev.Type())
	}
	return nil
}

func (d *Device) writeSame(ctx context.Context, off, length int64, pattern []byte) error {
	if allZero(pattern) {
		return d.img.WriteZeroes(ctx, off, length)
	}
	const chunk = 1 << 20
	buf := make([]byte, 0, chunk)
	for len(buf)+len(pattern) <= chunk {
		buf = append(buf, pattern...)
	}
	for length > 0 {
		n := min(length, int64(len(buf)))
		if _, err := d.img.WriteAt(ctx, buf[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Size is the device size in bytes. It grows when the image does (see
// Refresh).
func (d *Device) Size() int64 { return d.size.Load() }

// Name is the image name.
func (d *Device) Name() string { return d.img.Name() }

// Tag is the journal tag (epoch) of this device's writes.
func (d *Device) Tag() uint64 { return d.tag }

// ReplayStats reports what Open replayed from the journal.
func (d *Device) ReplayStats() journal.ReplayStats { return d.replayStats }

// Journal returns the device's journaler (nil when unjournaled).
func (d *Device) Journal() *journal.Journaler { return d.j }

// Err returns why the device stopped serving writes, or nil.
func (d *Device) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failed != nil {
		return d.failed
	}
	if d.lock != nil {
		if err := d.lock.Err(); err != nil {
			return err
		}
	}
	if d.j != nil {
		if err := d.j.Err(); err != nil {
			return err
		}
	}
	return nil
}

func (d *Device) check(ctx context.Context, op string, off, length int64) error {
	if err := d.checkWritable(op); err != nil { // readonly.go
		return err
	}
	// A header update (or a lost watch: a possibly missed one) is applied
	// before the next I/O.
	d.refreshIfNeeded(ctx)
	if size := d.size.Load(); off < 0 || length < 0 || off > size || length > size-off {
		return fmt.Errorf("%s %d+%d on %d-byte device %s: %w", op, off, length, size, d.img.Name(), ErrOutOfRange)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("%s on %s: %w", op, d.img.Name(), ErrClosed)
	}
	if d.failed != nil {
		return fmt.Errorf("%s on %s: %w: %w", op, d.img.Name(), ErrFailed, d.failed)
	}
	return nil
}

func (d *Device) fail(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failed == nil {
		d.failed = err
		d.log.Error(err, "Journaled device failed; I/O now returns errors until it is reopened (the journal keeps every acknowledged write)", "image", d.img.Name())
	}
}

// ReadAt reads len(p) bytes at off: the image's data with the pending
// (journaled, not yet applied) changes laid over it.
//
// The pending changes are taken before the image is read, so one of them
// may be applied, and a newer overlapping change applied after it, while
// the read runs: laying the older one over what was read would then return
// stale data (a filesystem rewriting that block loses what the newer write
// held). A newer overlapping change is applied only after the older ones,
// so if every change taken is still pending once the read is done, nothing
// newer than them can be in what was read. Otherwise the read is retried,
// and eventually done with the pending set held still.
func (d *Device) ReadAt(ctx context.Context, p []byte, off int64) (_ int, err error) {
	defer d.track(OpRead, int64(len(p)))(&err)
	if err := d.check(ctx, "read", off, int64(len(p))); err != nil {
		return 0, err
	}
	end := off + int64(len(p))
	for attempt := 0; ; attempt++ {
		d.mu.Lock()
		ws := d.pending.overlapping(off, end)
		if attempt == maxOptimisticReads {
			// Applies remove their change under d.mu: none completes
			// while this read holds it.
			n, err := d.img.ReadAt(ctx, p, off)
			if err == nil {
				overlay(p, off, ws)
			}
			d.mu.Unlock()
			if err != nil {
				return n, fmt.Errorf("read %s %d+%d: %w", d.img.Name(), off, len(p), err)
			}
			return n, nil
		}
		d.mu.Unlock()
		n, err := d.img.ReadAt(ctx, p, off)
		if err != nil {
			return n, fmt.Errorf("read %s %d+%d: %w", d.img.Name(), off, len(p), err)
		}
		if stillPending(ws) {
			overlay(p, off, ws)
			return n, nil
		}
	}
}

// maxOptimisticReads bounds the reads retried because a pending change
// was applied while they ran.
const maxOptimisticReads = 3

func stillPending(ws []*pendingWrite) bool {
	for _, w := range ws {
		select {
		case <-w.applied:
			return false
		default:
		}
	}
	return true
}

// WriteAt journals and applies a write.
func (d *Device) WriteAt(ctx context.Context, p []byte, off int64) (_ int, err error) {
	defer d.track(OpWrite, int64(len(p)))(&err)
	if err := d.check(ctx, "write", off, int64(len(p))); err != nil {
		return 0, err
	}
	if d.j == nil {
		return d.img.WriteAt(ctx, p, off)
	}
	if d.meta != nil {
		if err := d.metaWrite(ctx, "write", extentlog.KindWrite, off, int64(len(p)), p); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	// The caller may reuse p once we return, and a pending change outlives
	// that in AckJournaled and AckWriteBack mode: the data is copied once,
	// into the journal entry's encoding, and the pending change refers to
	// it there (a 1 MiB write held twice, or more, was what bounded how
	// many volumes a node could serve).
	// The budget is taken before the copy is made: writers waiting at the
	// bounds hold only the caller's buffer, not a copy besides (with 50
	// volumes writing 1 MiB blocks, 200 MiB of copies waited).
	b, err := d.acquireBudget(ctx, max(int64(len(p)), 1)) // writeback.go
	if err != nil {
		return 0, err
	}
	changes, err := writeChanges(rbdjournal.SplitWrite(uint64(off), p, d.maxAppend), time.Now())
	if err != nil {
		d.releaseBudget(b)
		return 0, fmt.Errorf("write %s %d+%d: %w", d.img.Name(), off, len(p), err)
	}
	// The ring records p before submitHeld returns (under d.mu).
	if err := d.submitHeld(ctx, "write", changes, b, ringEntry{kind: ringKindWrite, off: off, length: int64(len(p)), data: p}); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Discard journals and applies a discard; the range then reads as zeros.
func (d *Device) Discard(ctx context.Context, off, length int64) (err error) {
	defer d.track(OpDiscard, length)(&err)
	if err := d.check(ctx, "discard", off, length); err != nil {
		return err
	}
	if d.j == nil {
		return d.img.Discard(ctx, off, length)
	}
	if d.meta != nil {
		return d.metaWrite(ctx, "discard", extentlog.KindDiscard, off, length, nil)
	}
	ev := rbdjournal.AioDiscardEvent{Offset: uint64(off), Length: uint64(length)}
	return d.submit(ctx, "discard", []change{{off: off, end: off + length, event: ev}}, 0, ringEntry{kind: ringKindDiscard, off: off, length: length})
}

// WriteZeroes journals and applies a write of zeros (librbd journals it as
// a write-same of a zero block).
func (d *Device) WriteZeroes(ctx context.Context, off, length int64) (err error) {
	defer d.track(OpWriteZeroes, length)(&err)
	if err := d.check(ctx, "write-zeroes", off, length); err != nil {
		return err
	}
	if d.j == nil {
		return d.img.WriteZeroes(ctx, off, length)
	}
	if d.meta != nil {
		return d.metaWrite(ctx, "write-zeroes", extentlog.KindZero, off, length, nil)
	}
	ev := rbdjournal.AioWriteSameEvent{Offset: uint64(off), Length: uint64(length), Data: make([]byte, 512)}
	return d.submit(ctx, "write-zeroes", []change{{off: off, end: off + length, event: ev}}, 0, ringEntry{kind: ringKindZero, off: off, length: length})
}

// Flush returns once every write acknowledged before it is durable. It
// journals an AioFlush event, as librbd does.
func (d *Device) Flush(ctx context.Context) (err error) {
	defer d.track(OpFlush, 0)(&err)
	if err := d.check(ctx, "flush", 0, 0); err != nil {
		return err
	}
	if d.j == nil {
		return d.img.Flush(ctx)
	}
	if d.meta != nil {
		return d.metaFlush(ctx)
	}
	f := d.j.Append(d.tag, cephenc.Marshal(rbdjournal.EventEntry{Event: rbdjournal.AioFlushEvent{}, Timestamp: time.Now()}))
	if err := d.j.Flush(ctx); err != nil {
		return fmt.Errorf("flush %s: %w", d.img.Name(), err)
	}
	if err := f.Wait(ctx); err != nil {
		return fmt.Errorf("flush %s: %w", d.img.Name(), err)
	}
	d.j.Committed(f.CommitTid)
	return d.img.Flush(ctx)
}

// change is one journal event of a request and the extent it changes.
type change struct {
	off, end int64
	data     []byte // nil: zeros
	event    rbdjournal.Event
	// frame, if set, is the event's journal entry already encoded
	// (journal.NewFrame), data pointing into it.
	frame []byte
}

// writeChanges encodes each write event once, into a journal frame, and
// returns the changes whose data refers to the copy in the frame.
func writeChanges(evs []rbdjournal.AioWriteEvent, now time.Time) ([]change, error) {
	changes := make([]change, len(evs))
	for i, ev := range evs {
		e := cephenc.NewEncoder(journal.NewFrame(int(rbdjournal.AioWriteFixedSize) + len(ev.Data)))
		rbdjournal.EventEntry{Event: ev, Timestamp: now}.Encode(e)
		frame := e.Data()
		// Decoding aliases: the decoded event's data is the copy in the
		// frame.
		var ee rbdjournal.EventEntry
		if err := cephenc.Unmarshal(journal.FramePayload(frame), &ee); err != nil {
			return nil, fmt.Errorf("encode write event: %w", err)
		}
		w, ok := ee.Event.(rbdjournal.AioWriteEvent)
		if !ok || w.Offset != ev.Offset || len(w.Data) != len(ev.Data) {
			return nil, fmt.Errorf("encode write event: decoded %T, want the AioWriteEvent encoded", ee.Event)
		}
		changes[i] = change{off: int64(ev.Offset), end: int64(ev.Offset) + int64(len(w.Data)), data: w.Data, event: w, frame: frame}
	}
	return changes, nil
}

// ringEntry is a request as the write-back ring records it.
type ringEntry struct {
	kind        int
	off, length int64
	data        []byte
}

// submit journals a request's changes and waits as the ack policy says.
func (d *Device) submit(ctx context.Context, op string, changes []change, weight int64, re ringEntry) error {
	b, err := d.acquireBudget(ctx, max(weight, 1)) // writeback.go
	if err != nil {
		return err
	}
	return d.submitHeld(ctx, op, changes, b, re)
}

// submitHeld is submit with the request's budget acquired; it releases it
// (on failure, or once the request is applied).
func (d *Device) submitHeld(ctx context.Context, op string, changes []change, b *budget, re ringEntry) (err error) {
	useRing := d.ring != nil && b.writeBack
	now := time.Now()
	var futures []*journal.Future
	pws := make([]*pendingWrite, len(changes))
	payloads := make([][]byte, len(changes))
	framed := len(changes) > 0 && changes[0].frame != nil
	for i, c := range changes {
		if framed {
			payloads[i] = c.frame
		} else {
			payloads[i] = cephenc.Marshal(rbdjournal.EventEntry{Event: c.event, Timestamp: now})
		}
	}
	d.mu.Lock()
	// A snapshot being made holds new writes back (snapshot.go).
	if err := d.waitWritable(ctx); err != nil {
		d.mu.Unlock()
		d.releaseBudget(b)
		return fmt.Errorf("%s %s: %w", op, d.img.Name(), err)
	}
	// Recorded in the ring before it is acknowledged, in journal order
	// (wbring.go).
	if useRing {
		if b.ringSeq, b.ringEnd, err = d.ring.record(re.kind, re.off, re.length, re.data); err != nil {
			d.mu.Unlock()
			d.releaseBudget(b)
			return fmt.Errorf("%s %s: %w", op, d.img.Name(), err)
		}
	}
	// Appending and registering under one lock keeps the pending set in
	// journal order.
	if framed {
		futures = d.j.AppendFrames(d.tag, payloads)
	} else {
		futures = d.j.AppendBatch(d.tag, payloads)
	}
	appended := time.Now()
	if b.writeBack {
		// A journal that already refuses appends (failed, closing) fails
		// the request now rather than acknowledging it.
		select {
		case <-futures[0].Done():
			if err := futures[0].Err(); err != nil {
				d.mu.Unlock()
				d.releaseBudget(b)
				return fmt.Errorf("%s %s: %w", op, d.img.Name(), err)
			}
		default:
		}
	}
	for i, c := range changes {
		pws[i] = d.pending.add(c.off, c.end, c.data)
	}
	d.mu.Unlock()

	done := make(chan error, 1)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer d.releaseBudget(b)
		done <- d.apply(changes, futures, pws, appended, b)
	}()
	switch d.o.AckPolicy {
	case AckApplied:
		if err := <-done; err != nil {
			return fmt.Errorf("%s %s: %w", op, d.img.Name(), err)
		}
		return nil
	case AckWriteBack:
		// Queued in order and visible to reads: acknowledged.
		return nil
	}
	for _, f := range futures {
		if err := f.Wait(ctx); err != nil {
			return fmt.Errorf("%s %s: %w", op, d.img.Name(), err)
		}
	}
	return nil
}

// apply applies each change once its entry is durable and the earlier
// changes it overlaps are applied, then commits it. Owned by Device.wg.
func (d *Device) apply(changes []change, futures []*journal.Future, pws []*pendingWrite, appended time.Time, b *budget) error {
	// Applying must finish even if the request's context ends: the entry is
	// in the journal and must reach the image (or be replayed).
	ctx := d.bg
	if b.writeBack {
		// Futures complete in order and a failure fails every later one:
		// the last one says whether the whole request is durable. Its
		// dirty bytes go now, not after the applies.
		err := futures[len(futures)-1].Wait(ctx)
		d.durable(b)
		if err == nil && b.ringSeq != 0 {
			d.ring.durable(b.ringSeq, b.ringEnd)
		}
		if err != nil && d.ring != nil {
			// A writer waiting for ring space under d.mu would wait for
			// ever (and d.fail needs d.mu).
			d.ring.fail(err)
		}
		if err != nil {
			// Acknowledged and lost: like a disk that lost its cache, the
			// device fails (later I/O and the next Flush return errors).
			d.fail(fmt.Errorf("journal append of an acknowledged write-back write failed: %w", err))
		}
	}
	var firstErr error
	for i, c := range changes {
		w := pws[i]
		err := futures[i].Wait(ctx)
		if i == 0 && err == nil {
			d.observeAppend(appended)
		}
		for _, ch := range w.waitFor {
			<-ch
		}
		if err == nil {
			applyStart := time.Now()
			err = d.applyChange(ctx, c)
			if err != nil {
				d.fail(err)
			} else {
				d.observeApply(applyStart)
			}
		}
		d.mu.Lock()
		if err == nil {
			d.j.Committed(futures[i].CommitTid)
		}
		// On failure the device refuses further I/O; the entry, if it was
		// journaled, stays uncommitted and is replayed on the next open.
		d.pending.remove(w)
		d.mu.Unlock()
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

func (d *Device) applyChange(ctx context.Context, c change) error {
	switch ev := c.event.(type) {
	case rbdjournal.AioWriteEvent:
		_, err := d.img.WriteAt(ctx, ev.Data, int64(ev.Offset))
		return err
	default:
		return d.applyEvent(ctx, ev)
	}
}

// Close waits for every write to be applied, flushes the journal and its
// commit position, and releases the journal. The device cannot be used
// afterwards.
func (d *Device) Close(ctx context.Context) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	d.wg.Wait()
	if d.meta != nil && d.j != nil {
		if err := d.metaClose(ctx); err != nil {
			return fmt.Errorf("close %s: %w", d.img.Name(), err)
		}
	}
	if d.j != nil {
		if err := d.j.Close(ctx); err != nil {
			// Keep the lock: the next owner must find the journal as is
			// and replay it after fencing us.
			return fmt.Errorf("close %s: %w", d.img.Name(), err)
		}
	}
	if d.lock != nil {
		if err := d.lock.Release(ctx); err != nil {
			return fmt.Errorf("close %s: %w", d.img.Name(), err)
		}
	}
	d.log.Info("Journaled device closed", "image", d.img.Name())
	return nil
}

// Owner identifies this device's lock holder (its address is what a
// restarted node plugin passes as DeadOwners).
// (The zero Holder for a read-only device: it holds no lock.)
func (d *Device) Owner() exclusivelock.Holder {
	if d.lock == nil {
		return exclusivelock.Holder{}
	}
	return d.lock.Owner()
}
