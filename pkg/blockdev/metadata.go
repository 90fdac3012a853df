package blockdev

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/extentlog"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
	"k8s.io/klog/v2"
)

// JournalMode says what the device journals.
type JournalMode int

const (
	// JournalFull journals every write's data as a librbd event in the
	// image's librbd journal before applying it (rbd-mirror can replay it).
	JournalFull JournalMode = iota
	// JournalMetadata writes data in place first and then journals only
	// its extent and checksum in csi-rbdj's own extent log (pkg/extentlog),
	// like ext4's data=ordered. The image does not carry librbd's
	// journaling feature.
	JournalMetadata
)

// JournalModes are the names ParseJournalMode accepts.
var JournalModes = []string{"full", "metadata"}

func (m JournalMode) String() string {
	switch m {
	case JournalFull:
		return "full"
	case JournalMetadata:
		return "metadata"
	}
	return fmt.Sprintf("JournalMode(%d)", int(m))
}

// ParseJournalMode parses "full" or "metadata".
func ParseJournalMode(s string) (JournalMode, error) {
	switch s {
	case "full":
		return JournalFull, nil
	case "metadata":
		return JournalMetadata, nil
	}
	return 0, fmt.Errorf("unknown journal mode %q (want full or metadata)", s)
}

// ErrJournalModeMismatch: the image was created for the other journal mode.
var ErrJournalModeMismatch = errors.New("image journal mode mismatch")

// Layout of an extent log created at the first open (its entries are
// small: one object set holds hundreds of thousands).
const (
	extentLogOrder      = 24
	extentLogSplayWidth = 1
)

// MetadataReplayStats describe what Open found in the extent log past the
// commit position (metadata mode): the extents that were in flight when the
// previous owner stopped.
type MetadataReplayStats struct {
	// Checked is the number of data entries whose extent was compared with
	// the image.
	Checked int
	// Superseded entries were not checked: a later entry past the commit
	// position overlaps them (its data was written after theirs).
	Superseded int
	// TornExtents counts the checked entries whose extent no longer holds
	// what the entry records (CRC-32C of the data; zeros for discards and
	// write-zeroes): the write was acknowledged but its data did not all
	// stay in place, or a later write that was never acknowledged
	// overwrote part of it. Not zero means the filesystem on the volume
	// should be checked. A metrics collector exports it as a counter.
	TornExtents int
	// TornBytes is the bytes of those extents.
	TornBytes int64
}

// metaState is the metadata-mode state of a Device.
type metaState struct {
	// order keeps writes to overlapping extents in submission order, so
	// that the log's order of two overlapping entries is the order their
	// data reached the image. Its data fields are unused: reads go to the
	// image, which already holds every acknowledged write.
	order pendingSet
	stats MetadataReplayStats
}

// openMetadata opens (creating it at the first open) the image's extent
// log and replays it. Called by Open as owner of the image.
func (d *Device) openMetadata(ctx context.Context) error {
	if d.img.Features()&clsrbd.FeatureJournaling != 0 {
		return fmt.Errorf("%w: journalMode metadata, but the image carries librbd's journaling feature (it was created for journalMode full)", ErrJournalModeMismatch)
	}
	d.meta = &metaState{}
	ok, err := extentlog.Exists(ctx, d.pool, d.img.ID())
	if err != nil {
		return err
	}
	if !ok {
		err := extentlog.Create(ctx, d.pool, d.img.ID(), extentLogOrder, extentLogSplayWidth)
		if err != nil && !errors.Is(err, objstore.ErrExists) {
			return err
		}
	}
	j, err := extentlog.Open(ctx, d.pool, d.img.ID(), d.o.ClientID, d.o.Journal)
	if err != nil {
		return err
	}
	d.j = j
	// A data write completes before its entry is appended, and the
	// append is a synced operation of the same pool client: it makes the
	// lazily written data durable (objstore.WriteOp.SetLazy).
	d.img.SetLazyWrites(true)
	if err := d.start(ctx); err != nil {
		_ = j.Close(context.WithoutCancel(ctx))
		d.j = nil
		return err
	}
	return nil
}

// JournalMode is the device's journal mode.
func (d *Device) JournalMode() JournalMode {
	if d.meta != nil {
		return JournalMetadata
	}
	return JournalFull
}

// MetadataReplayStats reports what Open checked in metadata mode (zero in
// full mode).
func (d *Device) MetadataReplayStats() MetadataReplayStats {
	if d.meta == nil {
		return MetadataReplayStats{}
	}
	return d.meta.stats
}

// metaWrite is the metadata-mode write path: the data goes to the image,
// then its entry is appended, and the write is acknowledged once the entry
// is durable (both ack policies: the data is in place by then). kind is
// extentlog.KindWrite (data), KindDiscard or KindZero (length bytes).
func (d *Device) metaWrite(ctx context.Context, op string, kind extentlog.Kind, off, length int64, data []byte) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return fmt.Errorf("%s on %s: %w", op, d.img.Name(), ErrClosed)
	}
	d.wg.Add(1)
	w := d.meta.order.add(off, off+length, nil)
	d.mu.Unlock()
	defer d.wg.Done()
	defer func() {
		d.mu.Lock()
		d.meta.order.remove(w)
		d.mu.Unlock()
	}()
	for _, ch := range w.waitFor {
		<-ch
	}
	// The data reaches the image even if the request's context ends: an
	// abandoned write must not leave the extent half written while a
	// later overlapping write proceeds.
	wctx := context.WithoutCancel(ctx)
	var err error
	e := extentlog.Entry{Kind: kind, Offset: uint64(off), Length: uint64(length), Timestamp: time.Now()}
	switch kind {
	case extentlog.KindWrite:
		e.CRC = extentlog.Checksum(data)
		_, err = d.img.WriteAt(wctx, data, off)
	case extentlog.KindDiscard:
		err = d.img.Discard(wctx, off, length)
	case extentlog.KindZero:
		err = d.img.WriteZeroes(wctx, off, length)
	}
	if err != nil {
		// Not acknowledged and not logged: the extent's content is
		// undefined, as after a failed write to a disk.
		return fmt.Errorf("%s %s %d+%d: %w", op, d.img.Name(), off, length, err)
	}
	d.mu.Lock()
	f := d.j.Append(d.tag, e.Encode())
	d.mu.Unlock()
	if err := f.Wait(wctx); err != nil {
		d.fail(fmt.Errorf("log %s %d+%d: %w", op, off, length, err))
		return fmt.Errorf("%s %s: %w", op, d.img.Name(), err)
	}
	d.j.Committed(f.CommitTid)
	return nil
}

// metaFlush: every acknowledged write is durable already (its entry is,
// and appending it made its data durable), so a flush only waits for the
// log's pending appends and the image.
func (d *Device) metaFlush(ctx context.Context) error {
	if err := d.j.Flush(ctx); err != nil {
		return fmt.Errorf("flush %s: %w", d.img.Name(), err)
	}
	return d.img.Flush(ctx)
}

// opPayload encodes a management event for the device's journal: the
// librbd event itself in full mode, wrapped in an extent log op entry in
// metadata mode (recorded, never replayed as data).
func (d *Device) opPayload(ev rbdjournal.Event) []byte {
	payload := cephenc.Marshal(rbdjournal.EventEntry{Event: ev, Timestamp: time.Now()})
	if d.meta == nil {
		return payload
	}
	return extentlog.Entry{Kind: extentlog.KindOp, Timestamp: time.Now(), Op: payload}.Encode()
}

// metaReplayer checks the entries past the commit position: it gathers
// them, and wait compares each one's extent with the image.
type metaReplayer struct {
	d       *Device
	entries []metaReplayEntry
}

type metaReplayEntry struct {
	e         extentlog.Entry
	pos       extentlog.Position
	commitTid uint64
}

func (r *metaReplayer) entry(_ context.Context, re journal.ReplayEntry) error {
	e, err := extentlog.Decode(re.Data)
	if err != nil {
		return fmt.Errorf("extent log entry %d:%d: %w", re.TagTid, re.EntryTid, err)
	}
	r.entries = append(r.entries, metaReplayEntry{e: e, pos: extentlog.Position{Tag: re.TagTid, Entry: re.EntryTid}, commitTid: re.CommitTid})
	return nil
}

// check compares the gathered entries with the image and commits them.
// Newest first, an entry overlapped by a newer one is superseded (its data
// may since have been overwritten); the others are read back, up to
// replayCheckParallelism at once.
func (r *metaReplayer) check(ctx context.Context) error {
	d := r.d
	st := &d.meta.stats
	var newer []extentlog.Extent // merged extents of the newer entries
	var todo []metaReplayEntry
	for i := len(r.entries) - 1; i >= 0; i-- {
		e := r.entries[i].e
		if e.Kind == extentlog.KindOp {
			continue
		}
		ext := extentlog.Extent{Offset: e.Offset, Length: e.Length}
		switch {
		case overlapsAny(newer, ext):
			st.Superseded++
		case e.End() <= uint64(d.size.Load()):
			todo = append(todo, r.entries[i])
		}
		newer = insertMerged(newer, ext)
	}
	st.Checked = len(todo)
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	sem := make(chan struct{}, replayCheckParallelism)
	for _, me := range todo {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			e := me.e
			b := make([]byte, e.Length)
			_, err := d.img.ReadAt(ctx, b, int64(e.Offset))
			intact := false
			if e.Kind == extentlog.KindWrite {
				intact = extentlog.Checksum(b) == e.CRC
			} else {
				intact = allZero(b)
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				if firstErr == nil {
					firstErr = fmt.Errorf("check extent %d+%d of entry %v: %w", e.Offset, e.Length, me.pos, err)
				}
			case !intact:
				st.TornExtents++
				st.TornBytes += int64(e.Length)
				klog.FromContext(ctx).Info("Torn extent: an acknowledged change in flight at the last stop is not all in place",
					"image", d.img.Name(), "kind", e.Kind.String(), "offset", e.Offset, "length", e.Length, "position", me.pos.String(), "written", e.Timestamp)
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		// Nothing committed: the next open checks again.
		return firstErr
	}
	// Snapshot operations replay as in full mode (replaySnapEvent: an
	// operation whose OpFinish says it succeeded is made sure of); the
	// data they cover is already in place.
	for _, me := range r.entries {
		if me.e.Kind != extentlog.KindOp {
			continue
		}
		var ev rbdjournal.EventEntry
		if err := cephenc.Unmarshal(me.e.Op, &ev); err != nil {
			// Not data: skipped, as librbd skips an event it cannot read.
			klog.FromContext(ctx).Info("Extent log op entry not understood; skipped", "image", d.img.Name(), "position", me.pos.String(), "err", err)
			continue
		}
		switch ev.Event.(type) {
		case rbdjournal.SnapCreateEvent, rbdjournal.SnapRemoveEvent, rbdjournal.OpFinishEvent:
			if err := d.replaySnapEvent(ctx, me.pos.Tag, ev.Event); err != nil {
				return fmt.Errorf("replay op entry %v: %w", me.pos, err)
			}
		}
	}
	for _, me := range r.entries {
		d.j.Committed(me.commitTid)
	}
	return nil
}

// replayCheckParallelism bounds the extents read back at once by replay.
const replayCheckParallelism = 32

// insertMerged adds x to the sorted, merged extents, joining the ones it
// overlaps or touches.
func insertMerged(merged []extentlog.Extent, x extentlog.Extent) []extentlog.Extent {
	if x.Length == 0 {
		return merged
	}
	end := x.Offset + x.Length
	i := sort.Search(len(merged), func(k int) bool { return merged[k].Offset+merged[k].Length >= x.Offset })
	j := sort.Search(len(merged), func(k int) bool { return merged[k].Offset > end })
	if i < j {
		x.Offset = min(x.Offset, merged[i].Offset)
		end = max(end, merged[j-1].Offset+merged[j-1].Length)
		x.Length = end - x.Offset
	}
	out := append(merged[:i:i], x)
	return append(out, merged[j:]...)
}

// overlapsAny reports whether x overlaps one of the sorted, merged
// extents.
func overlapsAny(merged []extentlog.Extent, x extentlog.Extent) bool {
	lo, hi := 0, len(merged)
	for lo < hi { // first extent ending after x.Offset
		m := (lo + hi) / 2
		if merged[m].Offset+merged[m].Length <= x.Offset {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo < len(merged) && merged[lo].Offset < x.Offset+x.Length
}

// replayHandler returns the handler and the completion of the replay of
// the device's journal in its mode.
func (d *Device) replayHandler(ctx context.Context) (func(context.Context, journal.ReplayEntry) error, func() error) {
	if d.meta == nil {
		rp := newReplayer(d)
		return rp.entry, rp.wait
	}
	mr := &metaReplayer{d: d}
	return mr.entry, func() error { return mr.check(ctx) }
}
