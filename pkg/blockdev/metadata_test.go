package blockdev

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
	"github.com/csi-rbdj/csi-rbdj/pkg/extentlog"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
)

func newMetadataImage(t testing.TB, pool objstore.Pool, name string) {
	t.Helper()
	if err := image.Create(context.Background(), pool, name, testSize, image.CreateOptions{Order: 20, Features: metadataFeatures}); err != nil {
		t.Fatal(err)
	}
}

// openMetadataDevice opens a journalMode metadata device (o, in metadata
// mode) on a new image "vol" of a new local pool.
func openMetadataDevice(t *testing.T, o Options) (objstore.Pool, *Device) {
	t.Helper()
	pool := openPool(t, t.TempDir())
	newMetadataImage(t, pool, "vol")
	o.JournalMode = JournalMetadata
	return pool, openDevice(t, pool, "vol", o)
}

// TestMetadataModel: random writes, discards and write-zeroes on a
// metadata-mode device read back as a reference model says, before and
// after a reopen; a clean close leaves nothing to check.
func TestMetadataModel(t *testing.T) {
	ctx := context.Background()
	pool, d := openMetadataDevice(t, Options{})
	if d.JournalMode() != JournalMetadata {
		t.Fatalf("mode %v", d.JournalMode())
	}
	model := make([]byte, testSize)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 300; i++ {
		off := r.Int64N(testSize - (1 << 20))
		n := 1 + r.Int64N(1<<20)
		switch r.IntN(4) {
		case 0:
			if err := d.Discard(ctx, off, n); err != nil {
				t.Fatal(err)
			}
			clear(model[off : off+n])
		case 1:
			if err := d.WriteZeroes(ctx, off, n); err != nil {
				t.Fatal(err)
			}
			clear(model[off : off+n])
		default:
			b := make([]byte, n)
			for j := range b {
				b[j] = byte(r.Uint32())
			}
			if _, err := d.WriteAt(ctx, b, off); err != nil {
				t.Fatal(err)
			}
			copy(model[off:], b)
		}
		if i%50 == 0 {
			if err := d.Flush(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !bytes.Equal(readAll(t, d, testSize), model) {
		t.Fatal("device differs from the model")
	}
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	d = openDevice(t, pool, "vol", Options{JournalMode: JournalMetadata})
	if !bytes.Equal(readAll(t, d, testSize), model) {
		t.Fatal("reopened device differs from the model")
	}
	if st := d.MetadataReplayStats(); st != (MetadataReplayStats{}) {
		t.Errorf("replay after a clean close: %+v", st)
	}
}

// TestMetadataModeMismatch: an image is served only in the mode it was
// created for.
func TestMetadataModeMismatch(t *testing.T) {
	ctx := context.Background()
	pool := openPool(t, t.TempDir())
	newImage(t, pool, "full", 22)
	newMetadataImage(t, pool, "meta")
	if _, err := Open(ctx, pool, "full", Options{JournalMode: JournalMetadata}); !errors.Is(err, ErrJournalModeMismatch) {
		t.Errorf("metadata open of a full image: %v, want ErrJournalModeMismatch", err)
	}
	if _, err := Open(ctx, pool, "meta", Options{}); !errors.Is(err, ErrNotJournaled) {
		t.Errorf("full open of a metadata image: %v, want ErrNotJournaled", err)
	}
}

// logEntries appends entries to vol's extent log as a crashed owner would
// have left them (past the commit position, in a new epoch).
func logEntries(t *testing.T, pool objstore.Pool, name string, es []extentlog.Entry) {
	t.Helper()
	ctx := context.Background()
	img, err := image.Open(ctx, pool, name)
	if err != nil {
		t.Fatal(err)
	}
	j, err := extentlog.Open(ctx, pool, img.ID(), extentlog.ImageClientID, Options{}.Journal)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close(ctx)
	c, err := j.Client()
	if err != nil {
		t.Fatal(err)
	}
	var cd rbdjournal.ClientData
	if err := cephenc.Unmarshal(c.Data, &cd); err != nil {
		t.Fatal(err)
	}
	tag, err := j.AllocateTag(ctx, cd.Meta.(rbdjournal.ImageClientMeta).TagClass, cephenc.Marshal(rbdjournal.TagData{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		j.Append(tag.Tid, e.Encode())
	}
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestMetadataReplayFindsTornExtents: the entries past the commit position
// are compared with the image; extents that do not hold what their entry
// says are counted as torn, entries overlapped by later ones are not
// checked.
func TestMetadataReplayFindsTornExtents(t *testing.T) {
	ctx := context.Background()
	pool, d := openMetadataDevice(t, Options{})
	a := bytes.Repeat([]byte{0xaa}, 4096)
	for _, off := range []int64{0, 8192, 16384, 65536} {
		if _, err := d.WriteAt(ctx, a, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	crcA := extentlog.Checksum(a)
	logEntries(t, pool, "vol", []extentlog.Entry{
		{Kind: extentlog.KindWrite, Offset: 0, Length: 4096, CRC: crcA},                             // intact
		{Kind: extentlog.KindWrite, Offset: 8192, Length: 4096, CRC: crcA + 1},                      // torn
		{Kind: extentlog.KindWrite, Offset: 16384, Length: 4096, CRC: crcA + 1},                     // superseded by the next
		{Kind: extentlog.KindWrite, Offset: 16384, Length: 2048, CRC: extentlog.Checksum(a[:2048])}, // intact
		{Kind: extentlog.KindDiscard, Offset: 65536, Length: 4096},                                  // torn: not zeros
		{Kind: extentlog.KindZero, Offset: 1 << 20, Length: 4096},                                   // intact
		{Kind: extentlog.KindOp, Op: cephenc.Marshal(rbdjournal.EventEntry{Event: rbdjournal.ResizeEvent{OpTid: 1, Size: testSize}})},
		{Kind: extentlog.KindOp, Op: []byte("not an event")}, // not data
	})
	d = openDevice(t, pool, "vol", Options{JournalMode: JournalMetadata})
	want := MetadataReplayStats{Checked: 5, Superseded: 1, TornExtents: 2, TornBytes: 8192}
	if st := d.MetadataReplayStats(); st != want {
		t.Errorf("replay stats %+v, want %+v", st, want)
	}
	// Checked entries are committed: the next open finds nothing.
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	d = openDevice(t, pool, "vol", Options{JournalMode: JournalMetadata})
	if st := d.MetadataReplayStats(); st != (MetadataReplayStats{}) {
		t.Errorf("second replay %+v", st)
	}
}

// TestMetadataRelogsHotRegions: intents the previous owner left
// uncommitted (it stopped with those regions hot: data there may have
// changed without an exact entry) are logged by the next owner as
// unknown regions, which the changed-extent listing reports whole, and
// are then committed; a clean close leaves none behind.
func TestMetadataRelogsHotRegions(t *testing.T) {
	ctx := context.Background()
	pool := openPool(t, t.TempDir())
	newMetadataImage(t, pool, "vol")
	d := openDevice(t, pool, "vol", Options{JournalMode: JournalMetadata})
	id, obj := d.img.ID(), uint64(d.img.ObjectSize())
	if err := extentlog.RegisterConsumer(ctx, pool, id, "backup"); err != nil {
		t.Fatal(err)
	}
	// Writes into two regions: their intents are committed by the close.
	for _, off := range []int64{0, int64(obj) + 4096} {
		if _, err := d.WriteAt(ctx, make([]byte, 4096), off); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// A crashed owner: an intent for the third region, an exact entry in
	// it, and an intent for the last region that lies beyond the image
	// (the image shrank): not logged.
	logEntries(t, pool, "vol", []extentlog.Entry{
		{Kind: extentlog.KindIntent, Offset: 2 * obj, Length: obj},
		{Kind: extentlog.KindWrite, Offset: 2*obj + 8192, Length: 4096, CRC: extentlog.Checksum(make([]byte, 4096))},
		{Kind: extentlog.KindIntent, Offset: 1 << 40, Length: obj},
	})
	d = openDevice(t, pool, "vol", Options{JournalMode: JournalMetadata})
	if st := d.MetadataReplayStats(); st != (MetadataReplayStats{Checked: 1}) {
		t.Errorf("replay stats %+v, want the exact entry checked (intents are not)", st)
	}
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	ch, err := extentlog.ChangedExtents(ctx, pool, id, "backup", extentlog.Position{}, extentlog.Position{})
	if err != nil {
		t.Fatal(err)
	}
	var unknown []extentlog.Extent
	for _, c := range ch.Entries {
		if c.Entry.Kind == extentlog.KindIntent {
			t.Errorf("intent listed as a change: %+v", c)
		}
		if c.Entry.Kind == extentlog.KindUnknown {
			unknown = append(unknown, extentlog.Extent{Offset: c.Entry.Offset, Length: c.Entry.Length})
		}
	}
	if want := []extentlog.Extent{{Offset: 2 * obj, Length: obj}}; !slices.Equal(unknown, want) {
		t.Errorf("unknown regions %v, want %v", unknown, want)
	}
	want := []extentlog.Extent{{Offset: 0, Length: 4096}, {Offset: obj + 4096, Length: 4096}, {Offset: 2 * obj, Length: obj}}
	if !slices.Equal(ch.Extents, want) {
		t.Errorf("changed extents %v, want %v", ch.Extents, want)
	}
	// The intents were committed once the unknown entries were durable:
	// the next open finds nothing to check or log again.
	d = openDevice(t, pool, "vol", Options{JournalMode: JournalMetadata})
	if st := d.MetadataReplayStats(); st != (MetadataReplayStats{}) {
		t.Errorf("second replay %+v", st)
	}
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	again, err := extentlog.ChangedExtents(ctx, pool, id, "backup", ch.Last, extentlog.Position{})
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Entries) != 0 {
		t.Errorf("the second open logged %v", again.Entries)
	}
}

// TestMetadataChangedExtents: a registered consumer lists exactly the
// extents written since a position, and advancing it drops them.
func TestMetadataChangedExtents(t *testing.T) {
	ctx := context.Background()
	pool, d := openMetadataDevice(t, Options{})
	id := d.img.ID()
	if err := extentlog.RegisterConsumer(ctx, pool, id, "backup"); err != nil {
		t.Fatal(err)
	}
	if _, err := extentlog.ChangedExtents(ctx, pool, id, "nobody", extentlog.Position{}, extentlog.Position{}); !errors.Is(err, extentlog.ErrNoConsumer) {
		t.Errorf("unregistered consumer: %v", err)
	}
	write := func(off, n int64) {
		if _, err := d.WriteAt(ctx, make([]byte, n), off); err != nil {
			t.Fatal(err)
		}
	}
	write(0, 4096)
	write(4096, 4096) // adjacent: merged
	// A write is acknowledged before its exact entry is durable; a flush
	// makes the entries of every acknowledged write durable.
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	mid, err := extentlog.ChangedExtents(ctx, pool, id, "backup", extentlog.Position{}, extentlog.Position{})
	if err != nil {
		t.Fatal(err)
	}
	write(1<<20, 512)
	if err := d.WriteZeroes(ctx, 2<<20, 8192); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	all, err := extentlog.ChangedExtents(ctx, pool, id, "backup", extentlog.Position{}, extentlog.Position{})
	if err != nil {
		t.Fatal(err)
	}
	wantAll := []extentlog.Extent{{Offset: 0, Length: 8192}, {Offset: 1 << 20, Length: 512}, {Offset: 2 << 20, Length: 8192}}
	if !slices.Equal(all.Extents, wantAll) || len(all.Entries) != 4 {
		t.Errorf("all changes %v (%d entries), want %v", all.Extents, len(all.Entries), wantAll)
	}
	since, err := extentlog.ChangedExtents(ctx, pool, id, "backup", mid.Last, extentlog.Position{})
	if err != nil {
		t.Fatal(err)
	}
	if want := wantAll[1:]; !slices.Equal(since.Extents, want) {
		t.Errorf("changes since %v: %v, want %v", mid.Last, since.Extents, want)
	}
	upTo, err := extentlog.ChangedExtents(ctx, pool, id, "backup", extentlog.Position{}, mid.Last)
	if err != nil {
		t.Fatal(err)
	}
	if want := wantAll[:1]; !slices.Equal(upTo.Extents, want) {
		t.Errorf("changes up to %v: %v, want %v", mid.Last, upTo.Extents, want)
	}
	if err := extentlog.AdvanceConsumer(ctx, pool, id, "backup", mid.Last); err != nil {
		t.Fatal(err)
	}
	rest, err := extentlog.ChangedExtents(ctx, pool, id, "backup", extentlog.Position{}, extentlog.Position{})
	if err != nil {
		t.Fatal(err)
	}
	if want := wantAll[1:]; !slices.Equal(rest.Extents, want) {
		t.Errorf("after advancing to %v: %v, want %v", mid.Last, rest.Extents, want)
	}
}

// TestMetadataResizeJournaled: a resize performed by a metadata-mode owner
// (requested through the lock, as `rbd resize` and the controller do) is
// recorded in the extent log as op entries carrying librbd's resize events.
func TestMetadataResizeJournaled(t *testing.T) {
	ctx := context.Background()
	pool, d := openMetadataDevice(t, Options{})
	id := d.img.ID()
	if err := extentlog.RegisterConsumer(ctx, pool, id, "backup"); err != nil {
		t.Fatal(err)
	}
	if err := exclusivelock.ProxyResize(ctx, pool, clsrbd.HeaderOID(id), 2*testSize); err != nil {
		t.Fatal(err)
	}
	if d.Size() != 2*testSize {
		t.Fatalf("size %d after the resize", d.Size())
	}
	if _, err := d.WriteAt(ctx, []byte("past the old end"), testSize+4096); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	ch, err := extentlog.ChangedExtents(ctx, pool, id, "backup", extentlog.Position{}, extentlog.Position{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ch.Ops) != 2 || len(ch.Entries) != 1 {
		t.Fatalf("%d op entries, %d data entries; want 2 (resize, op finish) and 1", len(ch.Ops), len(ch.Entries))
	}
	var ev rbdjournal.EventEntry
	if err := cephenc.Unmarshal(ch.Ops[0].Entry.Op, &ev); err != nil {
		t.Fatal(err)
	}
	if r, ok := ev.Event.(rbdjournal.ResizeEvent); !ok || r.Size != 2*testSize {
		t.Errorf("first op entry holds %#v, want a resize to %d", ev.Event, 2*testSize)
	}
}

// TestInsertMerged: inserting extents one by one gives what merging them
// all at once gives, and overlapsAny agrees with a linear scan.
func TestInsertMerged(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for round := 0; round < 200; round++ {
		var all, merged []extentlog.Extent
		for i := 0; i < 1+r.IntN(40); i++ {
			x := extentlog.Extent{Offset: r.Uint64N(1000), Length: r.Uint64N(50)}
			probe := extentlog.Extent{Offset: r.Uint64N(1000), Length: 1 + r.Uint64N(50)}
			linear := false
			for _, m := range merged {
				if m.Offset < probe.Offset+probe.Length && probe.Offset < m.Offset+m.Length {
					linear = true
				}
			}
			if got := overlapsAny(merged, probe); got != linear {
				t.Fatalf("overlapsAny(%v, %v) = %v", merged, probe, got)
			}
			all = append(all, x)
			merged = insertMerged(merged, x)
			if want := extentlog.MergeExtents(all); !slices.Equal(merged, want) {
				t.Fatalf("after inserting %v: %v, want %v", all, merged, want)
			}
		}
	}
}

// TestMetadataSnapshot: a snapshot of a metadata-mode device holds every
// write acknowledged before it (the data is in place), its operation is
// logged as op entries, and a reopen (replaying them) keeps it.
func TestMetadataSnapshot(t *testing.T) {
	ctx := context.Background()
	pool, d := openMetadataDevice(t, Options{Journal: journal.Settings{CommitAge: time.Hour}})
	id := d.img.ID()
	if err := extentlog.RegisterConsumer(ctx, pool, id, "backup"); err != nil {
		t.Fatal(err)
	}
	before, after := bytes.Repeat([]byte{0xb4}, 65536), bytes.Repeat([]byte{0xaf}, 65536)
	if _, err := d.WriteAt(ctx, before, 1<<20); err != nil {
		t.Fatal(err)
	}
	snapID, err := d.CreateSnapshot(ctx, clsrbd.SnapshotNamespace{}, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(ctx, after, 1<<20); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		img, err := image.Open(ctx, pool, "vol")
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(before))
		if _, err := img.ReadAtSnap(ctx, got, 1<<20, snapID); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, before) {
			t.Fatalf("%s: the snapshot does not hold the write acknowledged before it", when)
		}
	}
	check("served")
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	ch, err := extentlog.ChangedExtents(ctx, pool, id, "backup", extentlog.Position{}, extentlog.Position{})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, op := range ch.Ops {
		var ev rbdjournal.EventEntry
		if err := cephenc.Unmarshal(op.Entry.Op, &ev); err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, ev.Event.Type().String())
	}
	if len(kinds) != 2 || len(ch.Entries) != 2 {
		t.Errorf("log holds ops %v and %d data entries; want a snapshot create and its finish, and 2 writes", kinds, len(ch.Entries))
	}
	// Between snapshots: s2 after the second write; a third write after it.
	d = openDevice(t, pool, "vol", Options{JournalMode: JournalMetadata})
	check("reopened")
	if _, err := d.CreateSnapshot(ctx, clsrbd.SnapshotNamespace{}, "s2"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(ctx, after[:4096], 4<<20); err != nil {
		t.Fatal(err)
	}
	between, err := extentlog.ChangedBetweenSnapshots(ctx, pool, id, "backup", "s1", "s2")
	if err != nil {
		t.Fatal(err)
	}
	if want := []extentlog.Extent{{Offset: 1 << 20, Length: 65536}}; !slices.Equal(between.Extents, want) {
		t.Errorf("changed between s1 and s2: %v, want %v", between.Extents, want)
	}
	upToS1, err := extentlog.ChangedBetweenSnapshots(ctx, pool, id, "backup", "", "s1")
	if err != nil {
		t.Fatal(err)
	}
	if want := []extentlog.Extent{{Offset: 1 << 20, Length: 65536}}; !slices.Equal(upToS1.Extents, want) || len(upToS1.Entries) != 1 {
		t.Errorf("changed up to s1: %v (%d entries), want %v in 1", upToS1.Extents, len(upToS1.Entries), want)
	}
	if _, err := extentlog.ChangedBetweenSnapshots(ctx, pool, id, "backup", "s1", "nope"); !errors.Is(err, extentlog.ErrSnapshotNotLogged) {
		t.Errorf("unknown snapshot: %v", err)
	}
	if d.MetadataReplayStats().TornExtents != 0 {
		t.Errorf("torn extents after a clean close: %+v", d.MetadataReplayStats())
	}
}

// TestMetadataRegionsCoolAndRedeclare: an idle hot region cools down (its
// intent committed) within a couple of cooler ticks, and a region that
// stays busy is re-declared (a fresh intent) rather than holding the
// commit position behind its first intent.
func TestMetadataRegionsCoolAndRedeclare(t *testing.T) {
	ctx := context.Background()
	pool := openPool(t, t.TempDir())
	newMetadataImage(t, pool, "vol")
	d := openDevice(t, pool, "vol", Options{JournalMode: JournalMetadata})
	obj := d.img.ObjectSize()
	for _, off := range []int64{0, obj} {
		if _, err := d.WriteAt(ctx, make([]byte, 4096), off); err != nil {
			t.Fatal(err)
		}
	}
	d.mu.Lock()
	busy := d.meta.hot[1]
	if busy == nil || d.meta.hot[0] == nil {
		d.mu.Unlock()
		t.Fatalf("hot regions after two writes: %v", d.meta.hot)
	}
	first := busy.intent
	busy.inflight++ // a write that stays in flight
	d.mu.Unlock()
	deadline := time.Now().Add(4*coolInterval + 2*time.Second)
	for {
		d.mu.Lock()
		_, idleHot := d.meta.hot[0]
		redeclared := busy.intent != first
		stillHot := d.meta.hot[1] == busy
		d.mu.Unlock()
		if !idleHot && redeclared && stillHot {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: idle region still hot %v, busy region re-declared %v, still hot %v", 4*coolInterval, idleHot, redeclared, stillHot)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The first intent was committed once the fresh one was durable: the
	// commit position moved past it.
	waitUntil := time.Now().Add(2 * time.Second)
	for {
		ps := d.j.CommitPosition().ObjectPositions
		if len(ps) > 0 && ps[0].TagTid == first.TagTid && ps[0].EntryTid >= first.EntryTid {
			break
		}
		if time.Now().After(waitUntil) {
			t.Fatalf("commit position %+v not past the first intent %d:%d", ps, first.TagTid, first.EntryTid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.mu.Lock()
	busy.inflight--
	d.mu.Unlock()
}
