package journal

import (
	"context"
	"testing"
)

// TestLag follows the lag of our own client and of a peer through appends,
// our commits and the peer's (read back from the header after its
// notification), and checks that the byte index drops what both passed.
func TestLag(t *testing.T) {
	ctx := context.Background()
	pool := newPool(t)
	j, tag := newJournal(t, pool, "lag", 12)
	peer, err := Open(ctx, pool, "lag", "peer", Options{Settings: fastSettings})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close(context.Background()) })
	if err := peer.RegisterClient(ctx, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "our journaler sees the peer", func() bool { return len(j.Clients()) == 2 })

	const n = 10
	size := func(i int) uint64 { return uint64(100 * (i + 1)) }
	sizesFrom := func(i int) (s uint64) {
		for ; i < n; i++ {
			s += size(i)
		}
		return s
	}
	ps := make([][]byte, n)
	for i := range ps {
		ps[i] = make([]byte, size(i))
	}
	fs := appendAll(t, j, tag, ps)

	lagOf := func(id string) ClientLag {
		t.Helper()
		for _, l := range j.Lag() {
			if l.ID == id {
				return l
			}
		}
		t.Fatalf("no lag for client %q in %+v", id, j.Lag())
		return ClientLag{}
	}
	for _, tc := range []struct {
		name      string
		commit    int // our entries committed (in order) before the check
		ownE      uint64
		ownB      uint64
		peerE     uint64
		peerB     uint64
		ownIsOwn  bool
		peerIsOwn bool
	}{
		{name: "nothing committed", commit: 0, ownE: n, ownB: sizesFrom(0), peerE: n, peerB: sizesFrom(0), ownIsOwn: true},
		{name: "4 committed", commit: 4, ownE: n - 4, ownB: sizesFrom(4), peerE: n, peerB: sizesFrom(0), ownIsOwn: true},
		{name: "all committed", commit: n, ownE: 0, ownB: 0, peerE: n, peerB: sizesFrom(0), ownIsOwn: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, f := range fs[:tc.commit] {
				j.Committed(f.CommitTid)
			}
			own, p := lagOf(""), lagOf("peer")
			if own.Entries != tc.ownE || own.Bytes != tc.ownB || own.Own != tc.ownIsOwn {
				t.Errorf("own lag %+v, want %d entries %d bytes own=%v", own, tc.ownE, tc.ownB, tc.ownIsOwn)
			}
			if p.Entries != tc.peerE || p.Bytes != tc.peerB || p.Own != tc.peerIsOwn {
				t.Errorf("peer lag %+v, want %d entries %d bytes own=%v", p, tc.peerE, tc.peerB, tc.peerIsOwn)
			}
		})
	}
	if err := j.FlushCommitPosition(ctx); err != nil {
		t.Fatal(err)
	}

	// The peer reads the journal and commits its first 7 entries.
	var got []ReplayEntry
	if _, err := peer.Replay(ctx, ReplayOptions{}, func(_ context.Context, e ReplayEntry) error {
		got = append(got, e)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("peer replayed %d entries, want %d", len(got), n)
	}
	for _, e := range got[:7] {
		peer.Committed(e.CommitTid)
	}
	if err := peer.FlushCommitPosition(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the peer's commit is seen", func() bool { return lagOf("peer").Entries == n-7 })
	if p := lagOf("peer"); p.Bytes != sizesFrom(7) {
		t.Errorf("peer lag bytes %d, want %d", p.Bytes, sizesFrom(7))
	}
	if own := lagOf(""); own.Entries != 0 || own.Bytes != 0 {
		t.Errorf("own lag %+v after everything was committed", own)
	}
	// Both passed entry 6: the index holds only entries 7..9.
	j.mu.Lock()
	ti := j.lag.tags[tag]
	j.mu.Unlock()
	if ti == nil || ti.first != 7 || len(ti.cum) != n-7 {
		t.Errorf("lag index of tag %d = %+v, want entries 7..%d", tag, ti, n-1)
	}
}

// TestLagIndexGap: an entry that does not follow the last one restarts
// the tag's index (nothing is summed across the gap).
func TestLagIndexGap(t *testing.T) {
	var x lagIndex
	x.add(1, 0, 10)
	x.add(1, 1, 20)
	x.add(1, 5, 40)
	x.add(2, 0, 7)
	for _, tc := range []struct {
		tag, after, want uint64
	}{
		{1, 4, 40},
		{1, 5, 0},
		{1, 0, 40}, // before the index: everything known (a lower bound)
		{2, 0, 0},
	} {
		if got := x.tags[tc.tag].after(tc.after); got != tc.want {
			t.Errorf("tag %d after %d = %d, want %d", tc.tag, tc.after, got, tc.want)
		}
	}
}
