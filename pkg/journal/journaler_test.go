package journal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local/localtest"
)

// openCluster opens a local cluster in dir as a new client instance.
func openCluster(t testing.TB, dir string) objstore.Pool {
	t.Helper()
	_, p := localtest.Open(t, dir, local.Options{})
	return p
}

func newPool(t testing.TB) objstore.Pool { return openCluster(t, t.TempDir()) }

// fastSettings keep tests quick: commit positions are written promptly.
var fastSettings = Settings{CommitAge: 10 * time.Millisecond}

// newJournal creates a journal with client "" registered and one tag.
func newJournal(t testing.TB, pool objstore.Pool, id string, order uint8) (*Journaler, uint64) {
	t.Helper()
	return newJournalWith(t, pool, id, CreateOptions{Order: order, SplayWidth: 4}, fastSettings)
}

func openJournal(t testing.TB, pool objstore.Pool, id string) *Journaler {
	t.Helper()
	j, err := Open(context.Background(), pool, id, "", Options{Settings: fastSettings})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close(context.Background()) })
	return j
}

func payload(r *rand.Rand, max int) []byte {
	b := make([]byte, 1+r.IntN(max))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// payloads returns n payloads of 1 to max random bytes.
func payloads(r *rand.Rand, n, max int) [][]byte {
	ps := make([][]byte, n)
	for i := range ps {
		ps[i] = payload(r, max)
	}
	return ps
}

func replayAll(t testing.TB, j *Journaler) ([]ReplayEntry, ReplayStats) {
	t.Helper()
	var got []ReplayEntry
	st, err := j.Replay(context.Background(), ReplayOptions{}, func(_ context.Context, e ReplayEntry) error {
		e.Data = bytes.Clone(e.Data)
		got = append(got, e)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got, st
}

func appendAll(t testing.TB, j *Journaler, tag uint64, payloads [][]byte) []*Future {
	t.Helper()
	fs := make([]*Future, len(payloads))
	for i, p := range payloads {
		fs[i] = j.Append(tag, p)
	}
	if err := j.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i, f := range fs {
		if err := f.Err(); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	return fs
}

func TestAppendReplayAcrossObjectSets(t *testing.T) {
	tests := []struct {
		name  string
		order uint8
		n     int
		max   int
	}{
		{"one set", 20, 300, 2000},
		{"many sets", 12, 400, 1500}, // 4 KiB objects: the active set advances often
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool := newPool(t)
			j, tag := newJournal(t, pool, "img1", tc.order)
			r := rand.New(rand.NewPCG(1, 2))
			var want [][]byte
			for i := 0; i < tc.n; i++ {
				want = append(want, payload(r, tc.max))
			}
			fs := appendAll(t, j, tag, want)
			for i, f := range fs {
				if f.EntryTid != uint64(i) || f.TagTid != tag {
					t.Fatalf("future %d: tag %d tid %d", i, f.TagTid, f.EntryTid)
				}
			}
			_, active := j.Sets()
			if tc.order == 12 && active < 5 {
				t.Fatalf("active set %d: expected overflow to advance it", active)
			}
			if err := j.Close(context.Background()); err != nil {
				t.Fatal(err)
			}

			j2 := openJournal(t, pool, "img1")
			got, st := replayAll(t, j2)
			if len(got) != len(want) {
				t.Fatalf("replayed %d entries, want %d (stats %+v)", len(got), len(want), st)
			}
			for i, e := range got {
				if e.EntryTid != uint64(i) || !bytes.Equal(e.Data, want[i]) {
					t.Fatalf("entry %d: tid %d, data equal %v", i, e.EntryTid, bytes.Equal(e.Data, want[i]))
				}
				if e.ObjectNumber%4 != e.EntryTid%4 {
					t.Fatalf("entry %d read from object %d", e.EntryTid, e.ObjectNumber)
				}
			}
		})
	}
}

func TestFuturesCompleteInOrder(t *testing.T) {
	pool := newPool(t)
	j, tag := newJournal(t, pool, "img", 16)
	r := rand.New(rand.NewPCG(3, 4))
	const n = 2000
	fs := make([]*Future, n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	var violations []string
	for i := 0; i < n; i++ {
		fs[i] = j.Append(tag, payload(r, 9000))
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-fs[i].Done()
			for k := 0; k < i; k++ {
				select {
				case <-fs[k].Done():
				default:
					mu.Lock()
					violations = append(violations, fmt.Sprintf("%d done before %d", i, k))
					mu.Unlock()
					return
				}
			}
		}(i)
	}
	if err := j.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if len(violations) > 0 {
		t.Fatalf("futures out of order: %v", violations[:min(5, len(violations))])
	}
}

func dataObjects(t testing.TB, pool objstore.Pool, id string) []string {
	t.Helper()
	names, err := pool.List(context.Background(), DataOIDPrefix(pool.ID(), id))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(names)
	return names
}

func TestCommitPositionAndTrim(t *testing.T) {
	ctx := context.Background()
	pool := newPool(t)
	j, tag := newJournal(t, pool, "img", 12)
	r := rand.New(rand.NewPCG(5, 6))
	ps := payloads(r, 200, 1500)
	fs := appendAll(t, j, tag, ps)
	minBefore, active := j.Sets()
	if active < 3 {
		t.Fatalf("active set %d, want several sets", active)
	}
	// Commit out of order: the position may only move over a contiguous prefix.
	j.Committed(fs[2].CommitTid)
	j.Committed(fs[1].CommitTid)
	if p := j.CommitPosition(); len(p.ObjectPositions) != 0 {
		t.Fatalf("position moved past uncommitted entry 0: %+v", p)
	}
	j.Committed(fs[0].CommitTid)
	if p := j.CommitPosition(); len(p.ObjectPositions) != 3 || p.ObjectPositions[0].EntryTid != 2 {
		t.Fatalf("position after 0..2: %+v", p)
	}
	for _, f := range fs[:150] {
		j.Committed(f.CommitTid)
	}
	if err := j.FlushCommitPosition(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := clsjournal.GetClient(ctx, pool, HeaderOID("img"), "")
	if err != nil {
		t.Fatal(err)
	}
	pos := c.CommitPosition.ObjectPositions
	if len(pos) != 4 {
		t.Fatalf("commit position %+v: want one position per splay offset", pos)
	}
	seen := map[uint64]bool{}
	for i, p := range pos {
		if want := uint64(149 - i); p.EntryTid != want || p.TagTid != tag {
			t.Fatalf("position %d = %+v, want entry %d (newest first)", i, p, want)
		}
		if seen[p.ObjectNumber%4] {
			t.Fatalf("two positions for splay %d", p.ObjectNumber%4)
		}
		seen[p.ObjectNumber%4] = true
	}
	minAfter, _ := j.Sets()
	if minAfter <= minBefore {
		t.Fatalf("minimum set %d -> %d: nothing trimmed", minBefore, minAfter)
	}
	for _, name := range dataObjects(t, pool, "img") {
		var n uint64
		fmt.Sscanf(name[strings.LastIndexByte(name, '.')+1:], "%d", &n)
		if n/4 < minAfter {
			t.Fatalf("object %s of trimmed set still exists (minimum set %d)", name, minAfter)
		}
	}
	if err := j.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// A new opener replays exactly what was not committed.
	got, _ := replayAll(t, openJournal(t, pool, "img"))
	if len(got) != 50 || got[0].EntryTid != 150 || !bytes.Equal(got[49].Data, ps[199]) {
		t.Fatalf("replayed %d entries from %v", len(got), got[0].EntryTid)
	}
}

// TestStaleTagNeverReplayed: entries of an older epoch found after a newer
// epoch began are skipped, never applied over the newer data (seed 002).
func TestStaleTagNeverReplayed(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	poolA := openCluster(t, dir)
	a, tagA := newJournal(t, poolA, "img", 16)
	appendAll(t, a, tagA, [][]byte{[]byte("a0"), []byte("a1"), []byte("a2")})

	// B takes over: replays A's entries, commits them, starts its own tag.
	poolB := openCluster(t, dir)
	b := openJournal(t, poolB, "img")
	got, _ := replayAll(t, b)
	if len(got) != 3 {
		t.Fatalf("B replayed %d", len(got))
	}
	for _, e := range got {
		b.Committed(e.CommitTid)
	}
	if err := b.FlushCommitPosition(ctx); err != nil {
		t.Fatal(err)
	}
	tagB, err := b.AllocateTag(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	appendAll(t, b, tagB.Tid, [][]byte{[]byte("b0"), []byte("b1")})

	// Zombie A, unaware, appends more of its old epoch after B's entries.
	appendAll(t, a, tagA, [][]byte{[]byte("a3-stale"), []byte("a4-stale")})
	appendAll(t, b, tagB.Tid, [][]byte{[]byte("b2")})

	// a3 lands right after the commit position, where only the new epoch's
	// record of where it took over (tag predecessor: A's epoch ended at
	// entry 2) tells it apart; a4 lands after B's first entry.
	var names []string
	st, err := openJournal(t, openCluster(t, dir), "img").Replay(ctx, ReplayOptions{EpochEnd: map[uint64]uint64{tagA: 2}},
		func(_ context.Context, e ReplayEntry) error {
			names = append(names, string(e.Data))
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(names, ",") != "b0,b1,b2" {
		t.Fatalf("replayed %v (stats %+v): stale epoch entries must be skipped", names, st)
	}
	if st.StaleEntries != 2 {
		t.Fatalf("stale entries %d, want 2", st.StaleEntries)
	}
}

// writeRaw appends encoded entries to data object n directly.
func writeRaw(t testing.TB, pool objstore.Pool, id string, n uint64, b []byte) {
	t.Helper()
	op := &objstore.WriteOp{}
	op.Append(b)
	if err := pool.Operate(context.Background(), fmt.Sprintf("%s%d", DataOIDPrefix(pool.ID(), id), n), op); err != nil {
		t.Fatal(err)
	}
}

func TestReplayDamagedJournals(t *testing.T) {
	enc := func(tag, tid uint64) []byte {
		return Entry{TagTid: tag, EntryTid: tid, Data: []byte(fmt.Sprintf("t%d", tid))}.AppendEncoded(nil)
	}
	garbage := bytes.Repeat([]byte{0xab}, 40)
	torn := enc(1, 4)[:20]
	tests := []struct {
		name    string
		objects map[uint64][]byte
		want    string // replayed payloads, or the error's text fragment
		wantErr error
		torn    bool
	}{
		{
			name:    "clean",
			objects: map[uint64][]byte{0: cat(enc(1, 0), enc(1, 4)), 1: enc(1, 1), 2: enc(1, 2), 3: enc(1, 3)},
			want:    "t0,t1,t2,t3,t4",
		},
		{
			name:    "hole across splay objects ends the sequence",
			objects: map[uint64][]byte{0: cat(enc(1, 0), enc(1, 4)), 1: enc(1, 1), 3: enc(1, 3)},
			want:    "t0,t1",
		},
		{
			name:    "hole inside an object is a gap",
			objects: map[uint64][]byte{0: cat(enc(1, 0), enc(1, 8)), 1: enc(1, 1), 2: enc(1, 2), 3: enc(1, 3)},
			wantErr: ErrGap,
			want:    "entry 8 follows entry 3",
		},
		{
			name:    "torn tail of the newest object",
			objects: map[uint64][]byte{0: cat(enc(1, 0), torn), 1: enc(1, 1), 2: enc(1, 2), 3: enc(1, 3)},
			want:    "t0,t1,t2,t3",
			torn:    true,
		},
		{
			name:    "corruption before the tail",
			objects: map[uint64][]byte{0: cat(enc(1, 0), garbage, enc(1, 4)), 1: enc(1, 1), 2: enc(1, 2), 3: enc(1, 3)},
			wantErr: ErrCorrupt,
			want:    ".0 is corrupt at offset 35",
		},
		{
			name:    "new tag must start at entry 0",
			objects: map[uint64][]byte{0: cat(enc(1, 0), enc(2, 4)), 1: enc(2, 5)},
			wantErr: ErrGap,
			want:    "tag 2 starts at entry 4",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool := newPool(t)
			j, _ := newJournal(t, pool, "img", 20)
			for n, b := range tc.objects {
				writeRaw(t, pool, "img", n, b)
			}
			var got []string
			st, err := j.Replay(context.Background(), ReplayOptions{}, func(_ context.Context, e ReplayEntry) error {
				got = append(got, string(e.Data))
				return nil
			})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err %v, want %v containing %q", err, tc.wantErr, tc.want)
				}
				if len(got) != 0 {
					t.Fatalf("handler saw %v before the error: replay must change nothing", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s := strings.Join(got, ","); s != tc.want {
				t.Fatalf("replayed %s, want %s", s, tc.want)
			}
			if (st.TornTail != "") != tc.torn {
				t.Fatalf("torn tail %q, want %v", st.TornTail, tc.torn)
			}
		})
	}
}

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

// TestWatchRefresh: another user of the journal learns about set advances
// and commits through header notifications.
func TestWatchRefresh(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	poolA := openCluster(t, dir)
	a, tag := newJournal(t, poolA, "img", 12)

	poolB := openCluster(t, dir)
	b, err := Open(ctx, poolB, "img", "mirror", Options{Settings: fastSettings})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(ctx) })
	if err := b.RegisterClient(ctx, nil); err != nil {
		t.Fatal(err)
	}

	r := rand.New(rand.NewPCG(7, 8))
	ps := payloads(r, 40, 1500)
	fs := appendAll(t, a, tag, ps)
	_, activeA := a.Sets()
	for _, f := range fs {
		a.Committed(f.CommitTid)
	}
	if err := a.FlushCommitPosition(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "B sees A's active set and commit position", func() bool {
		_, activeB := b.Sets()
		for _, c := range b.Clients() {
			if c.ID == "" && len(c.CommitPosition.ObjectPositions) > 0 && c.CommitPosition.ObjectPositions[0].EntryTid == 39 {
				return activeB == activeA
			}
		}
		return false
	})
	// B has committed nothing, so nothing may be trimmed.
	if minSet, _ := a.Sets(); minSet != 0 {
		t.Fatalf("minimum set %d although client 'mirror' committed nothing", minSet)
	}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAppendErrors(t *testing.T) {
	ctx := context.Background()
	pool := newPool(t)
	j, tag := newJournal(t, pool, "img", 12)
	if err := j.Append(tag, make([]byte, 4096)).Err(); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized append: %v", err)
	}
	if err := Create(ctx, pool, "img", CreateOptions{}); !errors.Is(err, objstore.ErrExists) {
		t.Fatalf("create twice: %v", err)
	}
	if err := Create(ctx, pool, "x", CreateOptions{Order: 40}); err == nil {
		t.Fatal("order 40 accepted")
	}
	if _, err := Open(ctx, pool, "missing", "", Options{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("open missing: %v", err)
	}
	other, err := Open(ctx, pool, "img", "nobody", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	if err := other.Append(tag, []byte("x")).Err(); !errors.Is(err, ErrClientNotRegistered) {
		t.Fatalf("append by unregistered client: %v", err)
	}
	if err := j.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := j.Append(tag, []byte("x")).Err(); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
}

func TestRemove(t *testing.T) {
	ctx := context.Background()
	pool := newPool(t)
	j, tag := newJournal(t, pool, "img", 12)
	r := rand.New(rand.NewPCG(9, 10))
	ps := payloads(r, 60, 1500)
	appendAll(t, j, tag, ps)
	j.Close(ctx)
	if err := Remove(ctx, pool, nil, "img"); err != nil {
		t.Fatal(err)
	}
	if left := dataObjects(t, pool, "img"); len(left) != 0 {
		t.Fatalf("objects left: %v", left)
	}
	if _, err := Open(ctx, pool, "img", "", Options{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("open removed journal: %v", err)
	}
	if err := Remove(ctx, pool, nil, "img"); err != nil {
		t.Fatalf("remove twice: %v", err)
	}
}

// TestAppendsNeedNoGuard: a journaler knows the size of every object it
// appends to (it reads the active set's at Open, and sets it advances to
// start empty), so its appends carry no guard_append, yet no object grows
// past the soft limit by more than the entry that crossed it, across
// sessions that find the active set partly filled.
func TestAppendsNeedNoGuard(t *testing.T) {
	pool := newPool(t)
	const order, maxPayload = 12, 1500
	j, tag := newJournal(t, pool, "img1", order)
	r := rand.New(rand.NewPCG(3, 4))
	var want [][]byte
	for session := 0; session < 4; session++ {
		if session > 0 {
			j = openJournal(t, pool, "img1")
			replayAll(t, j) // continues the tag's entry tids
		}
		ps := payloads(r, 37+session*11, maxPayload)
		appendAll(t, j, tag, ps)
		want = append(want, ps...)
		if st := j.Stats(); st.Guarded != 0 || st.Entries != uint64(len(ps)) || st.Appends == 0 {
			t.Fatalf("session %d: stats %+v: want %d entries, none guarded", session, st, len(ps))
		}
		if err := j.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	names, err := pool.List(context.Background(), DataOIDPrefix(pool.ID(), "img1"))
	if err != nil {
		t.Fatal(err)
	}
	limit := uint64(1)<<order + uint64(maxPayload+EntryOverhead)
	for _, oid := range names {
		var op objstore.ReadOp
		st := op.Stat()
		if err := pool.Read(context.Background(), oid, &op); err != nil {
			t.Fatal(err)
		}
		if st.Stat().Size > limit {
			t.Errorf("%s holds %d bytes: more than the soft limit and one entry (%d)", oid, st.Stat().Size, limit)
		}
	}
	got, _ := replayAll(t, openJournal(t, pool, "img1"))
	if len(got) != len(want) {
		t.Fatalf("replayed %d entries, want %d", len(got), len(want))
	}
	for i, e := range got {
		if !bytes.Equal(e.Data, want[i]) {
			t.Fatalf("entry %d differs", i)
		}
	}
}

// TestAppendMixedSizesOneBatch: a batch mixing large entries (64 KiB and
// more) with small ones, appended as the pieces of one vectored append
// step, lands in order and replays entry for entry.
func TestAppendMixedSizesOneBatch(t *testing.T) {
	mixedSizesScenario(t, newPool(t), "mixed")
}

// mixedSizesScenario is TestAppendMixedSizesOneBatch on pool (local or
// Ceph: TestCephAppendMixedSizesOneBatch), under journal id.
func mixedSizesScenario(t *testing.T, pool objstore.Pool, id string) {
	j, tag := newJournal(t, pool, id, 22)
	r := rand.New(rand.NewPCG(1, 2))
	var ps [][]byte
	for i := range 32 {
		n := 1 + r.IntN(100)
		if i%3 != 1 {
			n = 64<<10 + r.IntN(64<<10)
		}
		p := make([]byte, n)
		for k := range p {
			p[k] = byte(r.Uint32())
		}
		ps = append(ps, p)
	}
	fs := j.AppendBatch(tag, ps)
	if err := j.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i, f := range fs {
		if err := f.Err(); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	if st := j.Stats(); st.Appends >= uint64(len(ps)) {
		t.Errorf("%d appends for %d entries: not batched", st.Appends, len(ps))
	}
	got, _ := replayAll(t, openJournal(t, pool, id))
	if len(got) != len(ps) {
		t.Fatalf("replayed %d entries, want %d", len(got), len(ps))
	}
	for i, e := range got {
		if e.EntryTid != uint64(i) || !bytes.Equal(e.Data, ps[i]) {
			t.Fatalf("entry %d: tid %d, %d bytes; want tid %d, %d bytes", i, e.EntryTid, len(e.Data), i, len(ps[i]))
		}
	}
}
