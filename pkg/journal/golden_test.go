package journal

import (
	"bytes"
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc/cephenctest"
	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
)

func goldenOmap(t *testing.T, name string) map[string][]byte {
	t.Helper()
	return cephenctest.ReadHexMap(t, filepath.Join(goldenDir, name, "journal-header-omap.json"))
}

// loadGolden writes librbd's header omap and data objects into a local pool
// (pool id 1, as on the cluster that produced them).
func loadGolden(t *testing.T, name string) (objstore.Pool, string) {
	t.Helper()
	pool := newPool(t)
	if pool.ID() != 1 {
		t.Fatalf("pool id %d, want 1", pool.ID())
	}
	id, objs := goldenObjects(t, name)
	ctx := context.Background()
	op := &objstore.WriteOp{}
	op.Create(true)
	op.SetOmap(goldenOmap(t, name))
	if err := pool.Operate(ctx, HeaderOID(id), op); err != nil {
		t.Fatal(err)
	}
	for n, b := range objs {
		op := &objstore.WriteOp{}
		op.WriteFull(b)
		if err := pool.Operate(ctx, DataOIDPrefix(1, id)+string(rune('0'+n)), op); err != nil {
			t.Fatal(err)
		}
	}
	return pool, id
}

// TestGoldenReplay replays journals librbd left behind: after a crash, the
// six events of the README; after a clean close, nothing.
func TestGoldenReplay(t *testing.T) {
	type want struct {
		typ    rbdjournal.EventType
		off    uint64
		length uint64
		fill   byte
	}
	tests := []struct {
		name string
		want []want
	}{
		{"golden-crash", []want{
			{rbdjournal.EventTypeAioWrite, 0, 4096, 0x11},
			{rbdjournal.EventTypeAioWrite, 1 << 20, 4096, 0x22},
			{rbdjournal.EventTypeAioWrite, 8 << 20, 16340, 0x33},
			{rbdjournal.EventTypeAioWrite, 8<<20 + 16340, 4140, 0x33},
			{rbdjournal.EventTypeAioFlush, 0, 0, 0},
			{rbdjournal.EventTypeAioWrite, 16 << 20, 512, 0x44},
		}},
		{"golden-clean", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool, id := loadGolden(t, tc.name)
			j, err := Open(context.Background(), pool, id, "", Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer j.Close(context.Background())
			got, _ := replayAll(t, j)
			if len(got) != len(tc.want) {
				t.Fatalf("replayed %d entries, want %d", len(got), len(tc.want))
			}
			for i, e := range got {
				if e.TagTid != 1 || e.EntryTid != uint64(i) {
					t.Errorf("entry %d: tag %d tid %d", i, e.TagTid, e.EntryTid)
				}
				var ev rbdjournal.EventEntry
				if err := cephenc.Unmarshal(e.Data, &ev); err != nil {
					t.Fatalf("entry %d: %v", i, err)
				}
				w := tc.want[i]
				if ev.Event.Type() != w.typ {
					t.Fatalf("entry %d: %v, want %v", i, ev.Event.Type(), w.typ)
				}
				if w.typ != rbdjournal.EventTypeAioWrite {
					continue
				}
				aw := ev.Event.(rbdjournal.AioWriteEvent)
				if aw.Offset != w.off || aw.Length != w.length || !bytes.Equal(aw.Data, bytes.Repeat([]byte{w.fill}, int(w.length))) {
					t.Errorf("entry %d: write %d+%d, want %d+%d of %#x", i, aw.Offset, aw.Length, w.off, w.length, w.fill)
				}
			}
		})
	}
}

// TestGoldenBytes drives our journaler through what librbd did for
// golden-clean — create the journal, register client "" with its image
// client meta, allocate tag 0 (new class) and tag 1, append the same six
// payloads, commit them — and compares every header omap value and every
// data object with librbd's bytes.
func TestGoldenBytes(t *testing.T) {
	pool := newPool(t)
	id, golden := goldenObjects(t, "golden-clean")
	writeGoldenClean(t, pool, id, golden)
	checkGoldenClean(t, pool, id, golden)
}

// writeGoldenClean creates journal id in pool as librbd did for
// golden-clean, whose data objects are golden: create the journal,
// register client "" with its image client meta, allocate tag 0 (new class)
// and tag 1, append the same six payloads, commit them.
func writeGoldenClean(t *testing.T, pool objstore.Pool, id string, golden map[uint64][]byte) {
	t.Helper()
	ctx := context.Background()
	var payloads [][]byte
	for n := uint64(0); n < 6; n++ {
		b := golden[n%4]
		for off := 0; off < len(b); {
			e, k, err := DecodeEntry(b[off:])
			if err != nil {
				t.Fatal(err)
			}
			if e.EntryTid == n {
				payloads = append(payloads, e.Data)
			}
			off += k
		}
	}
	if err := Create(ctx, pool, id, CreateOptions{Order: 24, SplayWidth: 4, DataPoolID: -1}); err != nil {
		t.Fatal(err)
	}
	j, err := Open(ctx, pool, id, "", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close(ctx)
	if err := j.RegisterClient(ctx, cephenc.Marshal(rbdjournal.ClientData{Meta: rbdjournal.ImageClientMeta{TagClass: 0}})); err != nil {
		t.Fatal(err)
	}
	tagData := cephenc.Marshal(rbdjournal.TagData{})
	if tag, err := j.AllocateTag(ctx, clsjournal.TagClassNew, tagData); err != nil || tag.Tid != 0 || tag.TagClass != 0 {
		t.Fatalf("tag 0: %+v %v", tag, err)
	}
	tag, err := j.AllocateTag(ctx, 0, tagData)
	if err != nil || tag.Tid != 1 {
		t.Fatalf("tag 1: %+v %v", tag, err)
	}
	for _, f := range appendAll(t, j, tag.Tid, payloads) {
		j.Committed(f.CommitTid)
	}
	if err := j.FlushCommitPosition(ctx); err != nil {
		t.Fatal(err)
	}
}

// checkGoldenClean compares every header omap value and every data object
// of journal id with librbd's golden-clean bytes (data objects golden).
func checkGoldenClean(t *testing.T, pool objstore.Pool, id string, golden map[uint64][]byte) {
	t.Helper()
	cephenctest.CompareOmap(t, "header omap", headerOmap(t, pool, id), goldenOmap(t, "golden-clean"))
	data := dataByNumber(t, pool, id)
	for n, b := range golden {
		if !bytes.Equal(data[n], b) {
			t.Errorf("data object %d differs from librbd's (%d vs %d bytes)", n, len(data[n]), len(b))
		}
	}
}

// headerOmap returns every omap entry of the journal's header.
func headerOmap(t *testing.T, pool objstore.Pool, id string) map[string][]byte {
	t.Helper()
	op := &objstore.ReadOp{}
	res := op.GetOmapVals("", "", 10000)
	if err := pool.Read(context.Background(), HeaderOID(id), op); err != nil {
		t.Fatal(err)
	}
	if res.Page().More {
		t.Fatal("header omap has more than 10000 keys")
	}
	m := map[string][]byte{}
	for _, kv := range res.Page().Entries {
		m[kv.Key] = kv.Value
	}
	return m
}

// dataByNumber returns the journal's data objects by object number.
func dataByNumber(t *testing.T, pool objstore.Pool, id string) map[uint64][]byte {
	t.Helper()
	prefix := DataOIDPrefix(pool.ID(), id)
	names, err := pool.List(context.Background(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64][]byte{}
	for _, name := range names {
		n, err := strconv.ParseUint(strings.TrimPrefix(name, prefix), 10, 64)
		if err != nil {
			t.Fatalf("data object %s: %v", name, err)
		}
		op := &objstore.ReadOp{}
		r := op.Read(0, 0)
		if err := pool.Read(context.Background(), name, op); err != nil {
			t.Fatal(err)
		}
		out[n] = r.Data()
	}
	return out
}
