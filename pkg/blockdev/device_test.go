package blockdev

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local/localtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
	"golang.org/x/sync/errgroup"
)

func openPool(t testing.TB, dir string) objstore.Pool {
	t.Helper()
	_, p := localtest.Open(t, dir, local.Options{})
	return p
}

const testSize = 32 << 20

func newImage(t testing.TB, pool objstore.Pool, name string, order uint8) {
	t.Helper()
	if err := image.Create(context.Background(), pool, name, testSize, image.CreateOptions{Order: order}); err != nil {
		t.Fatal(err)
	}
}

func openDevice(t testing.TB, pool objstore.Pool, name string, o Options) *Device {
	t.Helper()
	if o.Journal.CommitAge == 0 {
		o.Journal.CommitAge = 20 * time.Millisecond
	}
	d, err := Open(context.Background(), pool, name, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close(context.Background()) })
	return d
}

// newDevice creates image "vol" (testSize, 4 MiB objects) in pool and opens
// it with o, as openDevice does.
func newDevice(t testing.TB, pool objstore.Pool, o Options) *Device {
	t.Helper()
	newImage(t, pool, "vol", 22)
	return openDevice(t, pool, "vol", o)
}

func readAll(t testing.TB, d interface {
	ReadAt(context.Context, []byte, int64) (int, error)
}, size int) []byte {
	t.Helper()
	b := make([]byte, size)
	if _, err := d.ReadAt(context.Background(), b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestModel runs random concurrent I/O against the device and a reference
// byte slice, with both ack policies, checks every read, then reopens the
// device (replay) and compares the whole image.
func TestModel(t *testing.T) {
	for _, policy := range AckPolicies {
		t.Run(policy.String(), func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			pool := openPool(t, dir)
			newImage(t, pool, "vol", 20) // 1 MiB objects: plenty of cross-object I/O
			d := openDevice(t, pool, "vol", Options{AckPolicy: policy, MaxPayload: 16 << 10})
			model := make([]byte, testSize)
			// Each worker owns a region, so the model needs no locking.
			const workers = 8
			region := int64(testSize / workers)
			var g errgroup.Group
			for w := 0; w < workers; w++ {
				g.Go(func() error {
					r := rand.New(rand.NewPCG(uint64(w), 99))
					base := int64(w) * region
					for i := 0; i < 150; i++ {
						off := base + r.Int64N(region-300<<10)
						n := int64(1 + r.IntN(300<<10))
						switch r.IntN(6) {
						case 0, 1, 2:
							b := make([]byte, n)
							for k := range b {
								b[k] = byte(r.Uint32())
							}
							if _, err := d.WriteAt(ctx, b, off); err != nil {
								return err
							}
							copy(model[off:], b)
						case 3:
							if err := d.Discard(ctx, off, n); err != nil {
								return err
							}
							clear(model[off : off+n])
						case 4:
							if err := d.WriteZeroes(ctx, off, n); err != nil {
								return err
							}
							clear(model[off : off+n])
						case 5:
							b := make([]byte, n)
							if _, err := d.ReadAt(ctx, b, off); err != nil {
								return err
							}
							if !bytes.Equal(b, model[off:off+n]) {
								return fmt.Errorf("worker %d op %d: read %d+%d differs from what was written", w, i, off, n)
							}
						}
						if i%25 == 0 {
							if err := d.Flush(ctx); err != nil {
								return err
							}
						}
					}
					return nil
				})
			}
			if err := g.Wait(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(readAll(t, d, testSize), model) {
				t.Fatal("device differs from the model")
			}
			if err := d.Close(ctx); err != nil {
				t.Fatal(err)
			}
			d2 := openDevice(t, openPool(t, dir), "vol", Options{AckPolicy: policy})
			if !bytes.Equal(readAll(t, d2, testSize), model) {
				t.Fatal("reopened device differs from the model")
			}
		})
	}
}

// TestOverlappingWritesKeepJournalOrder fires many concurrent writes at one
// block; the image must end with the last one journaled.
func TestOverlappingWritesKeepJournalOrder(t *testing.T) {
	for _, policy := range AckPolicies {
		t.Run(policy.String(), func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			pool := openPool(t, dir)
			d := newDevice(t, pool, Options{AckPolicy: policy})
			var wg sync.WaitGroup
			for round := 0; round < 20; round++ {
				for i := 0; i < 16; i++ {
					wg.Add(1)
					go func(i int) {
						defer wg.Done()
						d.WriteAt(ctx, bytes.Repeat([]byte{byte(i + 1)}, 8192), 4096)
					}(i)
				}
				wg.Wait()
				// Whatever order the journal got, the image must hold the
				// last journaled write once everything is applied.
				if err := d.Close(ctx); err != nil {
					t.Fatal(err)
				}
				j, err := journal.Open(ctx, pool, d.img.ID(), "inspect", journal.Options{})
				if err != nil {
					t.Fatal(err)
				}
				j.Close(ctx)
				got := make([]byte, 8192)
				img, _ := image.Open(ctx, pool, "vol")
				img.ReadAt(ctx, got, 4096)
				if !bytes.Equal(got, bytes.Repeat(got[:1], 8192)) {
					t.Fatalf("round %d: block mixes two writes", round)
				}
				d = openDevice(t, pool, "vol", Options{AckPolicy: policy})
				if !bytes.Equal(readAll(t, d, 16384)[4096:12288], got) {
					t.Fatalf("round %d: replay changed the block", round)
				}
			}
		})
	}
}

// journalWrites appends events as a previous owner would and leaves them
// uncommitted (that owner "crashed").
func journalWrites(t *testing.T, pool objstore.Pool, name string, tagClass uint64, evs []rbdjournal.Event, pred *rbdjournal.TagPredecessor) uint64 {
	t.Helper()
	td := rbdjournal.TagData{}
	if pred != nil {
		td.Predecessor = *pred
	}
	return journalWritesTag(t, pool, name, tagClass, td, evs)
}

// journalWritesTag is journalWrites in a new epoch whose tag carries td.
func journalWritesTag(t *testing.T, pool objstore.Pool, name string, tagClass uint64, td rbdjournal.TagData, evs []rbdjournal.Event) uint64 {
	t.Helper()
	ctx := context.Background()
	img, err := image.Open(ctx, pool, name)
	if err != nil {
		t.Fatal(err)
	}
	j, err := journal.Open(ctx, pool, img.ID(), "", journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close(ctx)
	tag, err := j.AllocateTag(ctx, tagClass, cephenc.Marshal(td))
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		j.Append(tag.Tid, cephenc.Marshal(rbdjournal.EventEntry{Event: ev, Timestamp: time.Now()}))
	}
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	return tag.Tid
}

func TestReplayOnOpen(t *testing.T) {
	ctx := context.Background()
	pool := openPool(t, t.TempDir())
	newImage(t, pool, "vol", 22)
	journalWrites(t, pool, "vol", 0, []rbdjournal.Event{
		rbdjournal.AioWriteEvent{Offset: 0, Length: 4096, Data: bytes.Repeat([]byte{0x11}, 4096)},
		rbdjournal.AioWriteEvent{Offset: 5 << 20, Length: 3, Data: []byte("abc")},
		rbdjournal.AioFlushEvent{},
		rbdjournal.AioWriteSameEvent{Offset: 1024, Length: 1024, Data: make([]byte, 512)},
		rbdjournal.AioWriteSameEvent{Offset: 8 << 20, Length: 1536, Data: bytes.Repeat([]byte{7}, 512)},
		rbdjournal.AioDiscardEvent{Offset: 3000, Length: 96},
	}, nil)
	d := openDevice(t, pool, "vol", Options{})
	got := readAll(t, d, 9<<20)
	want := make([]byte, 9<<20)
	copy(want, bytes.Repeat([]byte{0x11}, 4096))
	clear(want[1024:2048])
	clear(want[3000:3096])
	copy(want[5<<20:], "abc")
	copy(want[8<<20:], bytes.Repeat([]byte{7}, 1536))
	if !bytes.Equal(got, want) {
		t.Fatal("replayed image differs")
	}
	if c, _ := d.j.Client(); len(c.CommitPosition.ObjectPositions) == 0 {
		t.Fatal("commit position did not move after replay")
	}
	// The device's epoch records where the replayed one ended.
	tag, err := d.j.GetTag(ctx, d.Tag())
	if err != nil {
		t.Fatal(err)
	}
	var td rbdjournal.TagData
	if err := cephenc.Unmarshal(tag.Data, &td); err != nil {
		t.Fatal(err)
	}
	if !td.Predecessor.CommitValid || td.Predecessor.TagTid != d.Tag()-1 || td.Predecessor.EntryTid != 5 {
		t.Fatalf("new tag's predecessor %+v", td.Predecessor)
	}
}

// TestStaleEpochNotReplayed builds seed 002's hazard: a new owner took over
// (replayed the old epoch, started its own) and crashed before committing
// anything of its epoch; meanwhile the old owner, still alive, appended the
// next entry of its old epoch. That entry follows the commit position in
// tid order, so only the new epoch's predecessor shows it is stale.
func TestStaleEpochNotReplayed(t *testing.T) {
	ctx := context.Background()
	pool := openPool(t, t.TempDir())
	newImage(t, pool, "vol", 22)
	oldTag := journalWrites(t, pool, "vol", 0, []rbdjournal.Event{
		rbdjournal.AioWriteEvent{Offset: 0, Length: 4, Data: []byte("old1")},
	}, nil)
	// The new owner: replays old1, commits it, starts its epoch, writes
	// "new!" to the journal and crashes before applying or committing it.
	d := openDevice(t, pool, "vol", Options{})
	newTag := d.Tag()
	d.Close(ctx)
	img, _ := image.Open(ctx, pool, "vol")
	j, err := journal.Open(ctx, pool, img.ID(), "", journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ev := func(off uint64, s string) []byte {
		return cephenc.Marshal(rbdjournal.EventEntry{Event: rbdjournal.AioWriteEvent{Offset: off, Length: uint64(len(s)), Data: []byte(s)}, Timestamp: time.Now()})
	}
	if err := j.Append(newTag, ev(0, "new!")).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	j.Close(ctx)
	// The zombie's next entry of the old epoch: tid 1, splay object 1.
	zombie := journal.Entry{TagTid: oldTag, EntryTid: 1, Data: ev(100, "ZOMB")}.AppendEncoded(nil)
	op := &objstore.WriteOp{}
	op.Append(zombie)
	if err := pool.Operate(ctx, journal.DataOIDPrefix(pool.ID(), img.ID())+"1", op); err != nil {
		t.Fatal(err)
	}

	d = openDevice(t, pool, "vol", Options{})
	got := readAll(t, d, 104)
	if string(got[:4]) != "new!" {
		t.Fatalf("the new owner's journaled write was not replayed: %q", got[:4])
	}
	if !bytes.Equal(got[100:104], make([]byte, 4)) {
		t.Fatalf("image holds %q at 100: a stale epoch's entry was replayed over newer data", got[100:104])
	}
}

func TestCorruptJournalFailsOpenAndChangesNothing(t *testing.T) {
	ctx := context.Background()
	pool := openPool(t, t.TempDir())
	newImage(t, pool, "vol", 22)
	journalWrites(t, pool, "vol", 0, []rbdjournal.Event{
		rbdjournal.AioWriteEvent{Offset: 0, Length: 4, Data: []byte("aaaa")},
		rbdjournal.AioWriteEvent{Offset: 4, Length: 4, Data: []byte("bbbb")},
		rbdjournal.AioWriteEvent{Offset: 8, Length: 4, Data: []byte("cccc")},
		rbdjournal.AioWriteEvent{Offset: 12, Length: 4, Data: []byte("dddd")},
		rbdjournal.AioWriteEvent{Offset: 16, Length: 4, Data: []byte("eeee")},
	}, nil)
	img, _ := image.Open(ctx, pool, "vol")
	oid := journal.DataOIDPrefix(pool.ID(), img.ID()) + "0"
	// Flip a byte inside the first entry of object 0 (entry 4 follows it).
	rd := &objstore.ReadOp{}
	res := rd.Read(0, 0)
	if err := pool.Read(ctx, oid, rd); err != nil {
		t.Fatal(err)
	}
	b := bytes.Clone(res.Data())
	b[40] ^= 0xff
	op := &objstore.WriteOp{}
	op.WriteFull(b)
	if err := pool.Operate(ctx, oid, op); err != nil {
		t.Fatal(err)
	}
	header := func() map[string][]byte {
		op := &objstore.ReadOp{}
		r := op.GetOmapVals("", "", 1000)
		if err := pool.Read(ctx, journal.HeaderOID(img.ID()), op); err != nil {
			t.Fatal(err)
		}
		m := map[string][]byte{}
		for _, kv := range r.Page().Entries {
			m[kv.Key] = kv.Value
		}
		return m
	}
	before := header()
	_, err := Open(ctx, pool, "vol", Options{})
	var ce *journal.CorruptionError
	if !errors.As(err, &ce) || ce.Object != oid || ce.Offset != 0 || !strings.Contains(err.Error(), oid) {
		t.Fatalf("open: %v; want a corruption error naming %s at offset 0", err, oid)
	}
	if got := readAll(t, img, 32); !bytes.Equal(got, make([]byte, 32)) {
		t.Fatalf("image changed by a failed open: %q", got)
	}
	after := header()
	if len(before) != len(after) {
		t.Fatalf("journal header changed by a failed open: %d -> %d keys", len(before), len(after))
	}
	for k, v := range before {
		if !bytes.Equal(after[k], v) {
			t.Fatalf("journal header key %s changed by a failed open", k)
		}
	}
}

func TestBadInput(t *testing.T) {
	ctx := context.Background()
	pool := openPool(t, t.TempDir())
	d := newDevice(t, pool, Options{})
	buf := make([]byte, 4096)
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"write past end", func() error { _, err := d.WriteAt(ctx, buf, testSize-100); return err }()},
		{"read past end", func() error { _, err := d.ReadAt(ctx, buf, testSize); return err }()},
		{"negative offset", func() error { _, err := d.WriteAt(ctx, buf, -1); return err }()},
		{"discard past end", d.Discard(ctx, testSize-10, 20)},
		{"zeroes past end", d.WriteZeroes(ctx, 0, testSize+1)},
	} {
		if !errors.Is(tc.err, ErrOutOfRange) {
			t.Errorf("%s: %v, want ErrOutOfRange", tc.name, tc.err)
		}
	}
	// Nothing of that was journaled.
	if d.j.CommitPosition().ObjectPositions != nil {
		t.Fatal("out-of-range I/O reached the journal")
	}
	if err := image.Create(ctx, pool, "plain", 1<<20, image.CreateOptions{Features: clsrbd.FeatureLayering}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, pool, "plain", Options{}); !errors.Is(err, ErrNotJournaled) {
		t.Fatalf("open unjournaled image: %v", err)
	}
	d.Close(ctx)
	if _, err := d.WriteAt(ctx, buf, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
}
