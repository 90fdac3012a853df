package extentlog

import (
	"context"
	"errors"
	"fmt"
	"testing"

	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local/localtest"
)

func encodedEntries(tag uint64, from, n int) []byte {
	var b []byte
	for i := from; i < from+n; i++ {
		b = journal.Entry{TagTid: tag, EntryTid: uint64(i), Data: []byte(fmt.Sprintf("entry %d", i))}.AppendEncoded(b)
	}
	return b
}

func TestTornTail(t *testing.T) {
	three := encodedEntries(1, 0, 3)
	fourth := encodedEntries(1, 3, 1)
	zeros := make([]byte, 100)
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	corrupt := append([]byte(nil), fourth...)
	corrupt[len(corrupt)-1] ^= 0xff // bad CRC
	for _, tc := range []struct {
		name string
		data []byte
		want int
	}{
		{"empty", nil, -1},
		{"whole entries", three, -1},
		{"entries and zeros", cat(three, zeros), -1},
		{"a hole between entries", cat(three, zeros, fourth), -1},
		{"a cut entry", cat(three, fourth[:len(fourth)/2]), len(three)},
		{"a cut preamble", cat(three, fourth[:5]), len(three)},
		{"a cut entry after zeros", cat(three, zeros, fourth[:20]), len(three) + len(zeros)},
		{"a cut entry, then zeros", cat(three, fourth[:20], zeros), len(three)},
		{"a bad entry at the end", cat(three, corrupt), len(three)},
		{"only a cut entry", fourth[:10], 0},
		{"a cut entry followed by a good one: corruption, left alone", cat(three, fourth[:20], fourth), -1},
		{"garbage followed by a good one: corruption, left alone", cat(three, []byte("garbage"), fourth), -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := journal.TornTail(tc.data); got != tc.want {
				t.Fatalf("tornTail = %d, want %d", got, tc.want)
			}
		})
	}
}

// TestOpenLazy: on the local store the log's appends are lazy (no log sync
// of their own; the returned sync makes them durable), and OpenLazy cuts
// off a torn tail — what a power loss can leave of a lazy append — so that
// the appends after it do not turn it into corruption; opening with Open
// instead shows that they would.
func TestOpenLazy(t *testing.T) {
	for _, lazy := range []bool{true, false} {
		t.Run(fmt.Sprintf("lazy=%v", lazy), func(t *testing.T) {
			ctx := context.Background()
			c, pool := localtest.Open(t, t.TempDir(), local.Options{})
			const id = "img"
			if err := Create(ctx, pool, id, 24, 1); err != nil {
				t.Fatal(err)
			}
			open := func() (*journal.Journaler, func(context.Context) error, journal.ReplayStats, []journal.ReplayEntry, error) {
				var j *journal.Journaler
				sync := func(context.Context) error { return nil }
				var err error
				if lazy {
					j, sync, err = OpenLazy(ctx, pool, id, ImageClientID, journal.Settings{})
				} else {
					j, err = Open(ctx, pool, id, ImageClientID, journal.Settings{})
				}
				if err != nil {
					t.Fatal(err)
				}
				var got []journal.ReplayEntry
				st, err := j.Replay(ctx, journal.ReplayOptions{}, func(_ context.Context, e journal.ReplayEntry) error {
					got = append(got, e)
					return nil
				})
				return j, sync, st, got, err
			}
			appendN := func(j *journal.Journaler, sync func(context.Context) error, n int) uint64 {
				tag, err := j.AllocateTag(ctx, clsjournal.TagClassNew, nil)
				if err != nil {
					t.Fatal(err)
				}
				before := c.Stats().Syncs
				var f *journal.Future
				for i := 0; i < n; i++ {
					f = j.Append(tag.Tid, []byte(fmt.Sprintf("payload %d", i)))
				}
				if err := j.Flush(ctx); err != nil {
					t.Fatal(err)
				}
				if err := f.Wait(ctx); err != nil {
					t.Fatal(err)
				}
				if syncs := c.Stats().Syncs - before; lazy && syncs != 0 {
					t.Errorf("lazy appends synced the store's log %d times", syncs)
				}
				if err := sync(ctx); err != nil {
					t.Fatal(err)
				}
				if syncs := c.Stats().Syncs - before; lazy && syncs != 1 {
					t.Errorf("sync after lazy appends: %d log syncs, want 1", syncs)
				}
				return tag.Tid
			}

			j, sync, _, _, err := open()
			if err != nil {
				t.Fatal(err)
			}
			tag := appendN(j, sync, 3)
			if err := j.Close(ctx); err != nil {
				t.Fatal(err)
			}
			// What a power loss can leave of a lost lazy append: the
			// first bytes of its entry in the object's file.
			oid := Naming.DataOIDPrefix(pool.ID(), id) + "0"
			var op objstore.WriteOp
			op.Append(encodedEntries(tag, 3, 1)[:20])
			if err := pool.Operate(ctx, oid, &op); err != nil {
				t.Fatal(err)
			}

			j, sync, st, got, err := open()
			if err != nil {
				t.Fatalf("replay with a torn tail: %v", err)
			}
			if len(got) != 3 {
				t.Fatalf("replayed %d entries, want 3", len(got))
			}
			if lazy != (st.TornTail == "") {
				t.Errorf("torn tail seen by the replay: %q (lazy %v: cut before it)", st.TornTail, lazy)
			}
			appendN(j, sync, 2)
			if err := j.Close(ctx); err != nil {
				t.Fatal(err)
			}

			j, _, _, got, err = open()
			if j != nil { // the unlazy case fails to open by design
				defer j.Close(ctx)
			}
			var ce *journal.CorruptionError
			switch {
			case lazy && err != nil:
				t.Fatalf("replay after appending past a cut torn tail: %v", err)
			case lazy && len(got) != 5:
				t.Fatalf("replayed %d entries, want 5", len(got))
			case !lazy && !errors.As(err, &ce):
				t.Fatalf("appends after a torn tail that was not cut: replay error %v, want a CorruptionError", err)
			}
		})
	}
}

// FuzzTornTail: journal.TornTail never cuts before a readable entry, and what it
// keeps reads as entries and zeros.
func FuzzTornTail(f *testing.F) {
	three := encodedEntries(1, 0, 3)
	f.Add(three)
	f.Add(append(append([]byte(nil), three...), encodedEntries(1, 3, 1)[:20]...))
	f.Add(append(append([]byte(nil), three...), make([]byte, 30)...))
	f.Fuzz(func(t *testing.T, data []byte) {
		off := journal.TornTail(data)
		if off < -1 || off >= len(data) && off != -1 {
			t.Fatalf("tornTail = %d for %d bytes", off, len(data))
		}
		if off < 0 {
			return
		}
		for i := off + 1; i < len(data); i++ {
			if _, _, err := journal.DecodeEntry(data[i:]); err == nil {
				t.Fatalf("cut at %d before a readable entry at %d", off, i)
			}
		}
		if got := journal.TornTail(data[:off]); got != -1 {
			t.Fatalf("what is kept (%d bytes) has a torn tail at %d", off, got)
		}
	})
}
