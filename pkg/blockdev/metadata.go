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

	// hot are the regions (data objects) with a durable, uncommitted
	// KindIntent entry: data there may be written before its exact entry
	// is durable (see metaWrite). Guarded by
	// Device.mu.
	hot map[uint64]*hotRegion
	// intents are the uncommitted intents replay found: the previous
	// owner stopped with these regions hot. Open re-logs them as
	// KindUnknown, then commits them.
	intents []metaReplayEntry
	// commits carries exact entries to the committer, which commits each
	// once it is durable; closed by metaClose. stopped counts the
	// committer and the cooler until they return.
	commits chan *journal.Future
	// sync makes the log's completed appends durable (extentlog.OpenLazy:
	// on the local store they are lazy); a flush calls it.
	sync    func(context.Context) error
	stop    chan struct{}
	stopped sync.WaitGroup
}

// hotRegion is a region with an intent in the log.
type hotRegion struct {
	objNo uint64
	// intent is the region's current intent entry (durable once it
	// completes); declared when it was appended.
	intent   *journal.Future
	declared time.Time
	// inflight counts the writes into the region that have not yet
	// queued their exact entry; last is the region's last exact entry
	// (futures complete in order: once it is durable, all are).
	inflight int
	last     *journal.Future
}

// Hot regions (metadata mode). A write into a region without an intent
// first appends one and waits until it is durable; the intent is committed
// once nothing is in flight in the region and its exact entries are
// durable (the region cools down), so the uncommitted intents a crash
// leaves name every region where data may have changed without a durable
// exact entry.
const (
	// maxHotRegions bounds the hot set (softly: a region with writes in
	// flight stays hot): a crash re-logs at most about this many regions
	// as changed with unknown content.
	maxHotRegions = 16
	// coolInterval is how often idle regions are cooled down and busy
	// ones re-declared (a fresh intent, then the old one committed), so
	// that the commit position, and the log's trimming, never wait
	// behind a region that stays busy for long.
	coolInterval = time.Second
	// wideRegions: a request spanning more regions (a discard of the
	// whole device) does not make them hot: its extent is logged as
	// KindUnknown, durable, before the data is changed.
	wideRegions = 4
	// metaLogFlushAge is how long an exact entry may wait for others to
	// join its append (journal.Settings.FlushAge of the extent log):
	// nothing waits for it but a flush, which sends it at once. Each
	// append is a store operation between the data writes (a local
	// store's committer takes them one at a time): at 5 ms a 64 KiB QD4
	// stream on the local store paid 0.05-0.07 operations per write for
	// them, at 20 ms 0.015-0.023 (BenchmarkMetadataSeqWrite, ops/write).
	metaLogFlushAge = 20 * time.Millisecond
)

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
	// Only a flush, a new region's intent and management operations wait
	// for the log (they send it at once: Journaler.Kick, Flush); the exact
	// entries of acknowledged writes wait up to metaLogFlushAge for others
	// to join their append.
	ls := d.o.Journal
	if ls.FlushAge == 0 {
		ls.FlushAge = metaLogFlushAge
	}
	// On the local store the log's appends are lazy (extentlog.OpenLazy),
	// so an entry costs no log sync of its own: "durable" below means that
	// its future completed, which makes it durable no later than this
	// client's next synced operation, and nothing that operation writes
	// can outlive it in a crash (the store's log is one sequence). Each
	// wait for an entry is followed by such an operation before anything
	// relies on the entry: the data write after an intent, the commit
	// position update after exact entries (the committer, cooling down),
	// the snapshot or resize after its op entry, and d.meta.sync in a
	// flush and in Close. On Ceph every append is durable when it
	// completes.
	j, sync, err := extentlog.OpenLazy(ctx, d.pool, d.img.ID(), d.o.ClientID, ls)
	if err != nil {
		return err
	}
	d.j, d.meta.sync = j, sync
	// A write is acknowledged once its data is durable, without waiting
	// for a later synced operation: no lazy data writes
	// (objstore.WriteOp.SetLazy; on Ceph every write is durable anyway).
	d.img.SetLazyWrites(false)
	d.meta.hot = map[uint64]*hotRegion{}
	if err := d.start(ctx); err != nil {
		_ = j.Close(context.WithoutCancel(ctx))
		d.j = nil
		return err
	}
	if err := d.relogIntents(ctx); err != nil {
		_ = j.Close(context.WithoutCancel(ctx))
		d.j = nil
		return err
	}
	d.meta.commits = make(chan *journal.Future, 1024)
	d.meta.stop = make(chan struct{})
	d.meta.stopped.Add(2)
	go d.committer()
	go d.cooler()
	return nil
}

// relogIntents appends, in the new epoch, a KindUnknown entry for each
// region the previous owner left hot (its intent uncommitted: data there
// may have changed without an exact entry), waits until they are durable,
// and only then commits those intents, so that the log never lacks a
// record of them: the changed-extent listing reports them.
func (d *Device) relogIntents(ctx context.Context) error {
	in := d.meta.intents
	d.meta.intents = nil
	if len(in) == 0 {
		return nil
	}
	size := uint64(d.size.Load())
	var payloads [][]byte
	for _, me := range in {
		off, end := me.e.Offset, min(me.e.End(), size)
		if off >= end {
			continue // beyond a shrunk image
		}
		payloads = append(payloads, extentlog.Entry{Kind: extentlog.KindUnknown, Offset: off, Length: end - off, Timestamp: time.Now()}.Encode())
	}
	if len(payloads) > 0 {
		fs := d.j.AppendBatch(d.tag, payloads)
		d.j.Kick()
		if err := fs[len(fs)-1].Wait(ctx); err != nil {
			return fmt.Errorf("log the regions hot at the last stop: %w", err)
		}
		for _, f := range fs {
			d.j.Committed(f.CommitTid)
		}
	}
	for _, me := range in {
		d.j.Committed(me.commitTid)
	}
	d.log.Info("Logged the regions hot at the last stop as changed (content unknown)", "image", d.img.Name(), "regions", len(payloads))
	return nil
}

// committer commits each exact entry once it is durable, in order. Owned
// by the device: metaClose closes commits and waits.
func (d *Device) committer() {
	defer d.meta.stopped.Done()
	for f := range d.meta.commits {
		if err := f.Wait(d.bg); err != nil {
			// Acknowledged, data in place, entry lost: the region's
			// intent stays uncommitted (it does not cool down without
			// durable entries), so the next owner logs it as unknown.
			d.fail(fmt.Errorf("extent log append failed: %w", err))
			continue
		}
		d.j.Committed(f.CommitTid)
	}
}

// cooler cools down idle hot regions and re-declares busy ones every
// coolInterval. Owned by the device: metaClose stops it.
func (d *Device) cooler() {
	defer d.meta.stopped.Done()
	t := time.NewTicker(coolInterval)
	defer t.Stop()
	for {
		select {
		case <-d.meta.stop:
			return
		case <-t.C:
		}
		d.mu.Lock()
		var busy []*hotRegion
		for _, r := range d.meta.hot {
			if !d.coolLocked(r) && time.Since(r.declared) >= 2*coolInterval && done(r.intent) {
				busy = append(busy, r)
			}
		}
		// A fresh intent for each busy region, appended under d.mu:
		// exact entries appended after it are covered by it, those
		// before it are durable once it is.
		fs := make([]*journal.Future, len(busy))
		for i, r := range busy {
			fs[i] = d.j.Append(d.tag, intentEntry(r.objNo, d.img.Order()))
		}
		d.mu.Unlock()
		if len(busy) > 0 {
			d.j.Kick()
		}
		for i, r := range busy {
			if fs[i].Wait(d.bg) != nil {
				return // the journal failed; the device fails with it
			}
			d.mu.Lock()
			old := r.intent
			r.intent, r.declared = fs[i], time.Now()
			cooled := d.meta.hot[r.objNo] != r // by a writer meanwhile
			d.mu.Unlock()
			d.j.Committed(old.CommitTid)
			if cooled {
				d.j.Committed(fs[i].CommitTid)
			}
		}
	}
}

func done(f *journal.Future) bool {
	select {
	case <-f.Done():
		return f.Err() == nil
	default:
		return false
	}
}

// coolLocked commits r's intent and drops r from the hot set if nothing
// is in flight in it and its exact entries are durable. Called with d.mu
// held.
func (d *Device) coolLocked(r *hotRegion) bool {
	if r.inflight > 0 || !done(r.intent) || (r.last != nil && !done(r.last)) {
		return false
	}
	delete(d.meta.hot, r.objNo)
	d.j.Committed(r.intent.CommitTid)
	return true
}

func intentEntry(objNo uint64, order uint8) []byte {
	return extentlog.Entry{Kind: extentlog.KindIntent, Offset: objNo << order, Length: 1 << order, Timestamp: time.Now()}.Encode()
}

// enterRegions makes the regions of [off, end) hot (appending and waiting
// for their intents where needed) and counts the caller in flight there;
// the caller leaves them with leaveRegions. A request spanning more than
// wideRegions regions instead logs its extent as KindUnknown and waits
// until that is durable (nil regions).
func (d *Device) enterRegions(ctx context.Context, off, end int64) ([]*hotRegion, error) {
	order := d.img.Order()
	first, last := uint64(off)>>order, uint64(end-1)>>order
	if last-first+1 > wideRegions {
		d.mu.Lock()
		f := d.j.Append(d.tag, extentlog.Entry{Kind: extentlog.KindUnknown, Offset: uint64(off), Length: uint64(end - off), Timestamp: time.Now()}.Encode())
		d.mu.Unlock()
		d.j.Kick()
		d.meta.commits <- f // committed once durable, even if ctx ends first
		if err := f.Wait(ctx); err != nil {
			return nil, err
		}
		return nil, nil
	}
	var rs, wait []*hotRegion
	d.mu.Lock()
	for n := first; n <= last; n++ {
		r := d.meta.hot[n]
		if r == nil {
			r = d.heatLocked(n)
		}
		r.inflight++
		rs = append(rs, r)
		if !done(r.intent) {
			wait = append(wait, r)
		}
	}
	// A write into the last quarter of a region declares the next one
	// too, without waiting: a sequential stream then finds it hot.
	next := last + 1
	ahead := uint64(end-1)-last<<order >= 3<<order/4 && next<<order < uint64(d.size.Load()) && d.meta.hot[next] == nil
	if ahead {
		d.heatLocked(next)
	}
	d.mu.Unlock()
	if len(wait) > 0 || ahead {
		d.j.Kick() // an intent, maybe another writer's: harmless twice
	}
	for _, r := range wait {
		if err := r.intent.Wait(ctx); err != nil {
			d.leaveRegions(rs, nil)
			return nil, err
		}
	}
	return rs, nil
}

// heatLocked appends an intent for region n and makes it hot, first
// cooling regions down if the hot set is full (those that can be: the
// bound is soft). Called with d.mu held.
func (d *Device) heatLocked(n uint64) *hotRegion {
	if len(d.meta.hot) >= maxHotRegions {
		for _, o := range d.meta.hot {
			if d.coolLocked(o) && len(d.meta.hot) < maxHotRegions {
				break
			}
		}
	}
	r := &hotRegion{objNo: n, declared: time.Now()}
	r.intent = d.j.Append(d.tag, intentEntry(n, d.img.Order()))
	d.meta.hot[n] = r
	return r
}

// leaveRegions counts the caller out of rs; last, if set, is its exact
// entry. Called with d.mu held.
func (d *Device) leaveRegionsLocked(rs []*hotRegion, last *journal.Future) {
	for _, r := range rs {
		r.inflight--
		if last != nil {
			r.last = last
		}
	}
}

func (d *Device) leaveRegions(rs []*hotRegion, last *journal.Future) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.leaveRegionsLocked(rs, last)
}

// metaClose stops the committer and the cooler, then cools every region
// down (Close waited for every write; the log is flushed first), so that
// the next owner finds no intent uncommitted.
func (d *Device) metaClose(ctx context.Context) error {
	if d.meta.commits == nil {
		return nil
	}
	close(d.meta.stop)
	close(d.meta.commits)
	d.meta.stopped.Wait()
	if err := d.j.Flush(ctx); err != nil {
		return err
	}
	if err := d.meta.sync(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range d.meta.hot {
		d.coolLocked(r)
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

// metaWrite is the metadata-mode write path. The request's regions are
// made hot first (an intent entry, durable before any data is sent into a
// region without one: enterRegions), then its data goes to the image, then
// its exact entry (extent, CRC-32C of the data, kind) is appended, and the
// write is acknowledged once its data is durable, without waiting for the
// exact entry (both ack policies): a flush waits for the entries. So the
// log never lacks a change the image holds: an exact entry, or, if the
// writer stopped before that was durable, the region's intent, which the
// next owner logs as KindUnknown. kind is extentlog.KindWrite (data),
// KindDiscard or KindZero (length bytes).
func (d *Device) metaWrite(ctx context.Context, op string, kind extentlog.Kind, off, length int64, data []byte) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return fmt.Errorf("%s on %s: %w", op, d.img.Name(), ErrClosed)
	}
	// A snapshot being made holds new writes back (snapshot.go; it
	// drains the writes in order).
	if err := d.waitWritable(ctx); err != nil {
		d.mu.Unlock()
		return fmt.Errorf("%s %s: %w", op, d.img.Name(), err)
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
	rs, err := d.enterRegions(ctx, off, off+length)
	if err != nil {
		if ctx.Err() == nil { // the log failed, not the request
			d.fail(fmt.Errorf("log intent for %s %d+%d: %w", op, off, length, err))
		}
		return fmt.Errorf("%s %s: %w", op, d.img.Name(), err)
	}
	// The data reaches the image even if the request's context ends: an
	// abandoned write must not leave the extent half written while a
	// later overlapping write proceeds.
	wctx := context.WithoutCancel(ctx)
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
		// Not acknowledged: the extent's content is undefined, as after
		// a failed write to a disk. Part of it may have changed: it is
		// logged as such.
		e = extentlog.Entry{Kind: extentlog.KindUnknown, Offset: uint64(off), Length: uint64(length), Timestamp: time.Now()}
	}
	d.mu.Lock()
	f := d.j.Append(d.tag, e.Encode())
	d.leaveRegionsLocked(rs, f)
	d.mu.Unlock()
	d.meta.commits <- f
	if err != nil {
		return fmt.Errorf("%s %s %d+%d: %w", op, d.img.Name(), off, length, err)
	}
	return nil
}

// metaFlush: every acknowledged write's data is durable already; a flush
// waits for the log's pending appends (the exact entries of the writes
// acknowledged before it) and the image.
func (d *Device) metaFlush(ctx context.Context) error {
	if err := d.j.Flush(ctx); err != nil {
		return fmt.Errorf("flush %s: %w", d.img.Name(), err)
	}
	if err := d.meta.sync(ctx); err != nil {
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
		switch e.Kind {
		case extentlog.KindOp, extentlog.KindUnknown:
			continue
		case extentlog.KindIntent:
			// Uncommitted: the region was hot when the previous owner
			// stopped. Not checked (it records no content); Open logs
			// it as unknown and commits it then.
			d.meta.intents = append(d.meta.intents, r.entries[i])
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
		if me.e.Kind != extentlog.KindIntent { // relogIntents commits them
			d.j.Committed(me.commitTid)
		}
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
