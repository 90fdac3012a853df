package storage

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
)

// TestJournalReplication measures a peer's backlog on a real journal of the
// local backend: entries appended by the image's writer and a mirror peer
// client (registered as rbd-mirror registers) that commits some of them;
// the backlog and the time of the oldest unreplayed entry follow, and
// measuring changes nothing.
func TestJournalReplication(t *testing.T) {
	ctx := context.Background()
	b, pool := openTestImage(t, "img", 8<<20)
	info, err := b.ImageInfo(ctx, pool, "img")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := JournalReplication(ctx, pool, "img"); !errors.Is(err, ErrNoMirrorPeer) {
		t.Fatalf("no peer yet: %v, want ErrNoMirrorPeer", err)
	}
	if _, err := JournalReplication(ctx, pool, "nope"); !errors.Is(err, image.ErrNotFound) {
		t.Fatalf("missing image: %v, want image.ErrNotFound", err)
	}

	settings := journal.Options{Settings: journal.Settings{CommitAge: 10 * time.Millisecond}}
	w, err := journal.Open(ctx, pool, info.ID, rbdjournal.LocalMirrorUUID, settings)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(ctx)
	reg, err := journal.Open(ctx, pool, info.ID, "site-b-mirror-uuid", settings)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close(ctx)
	peerData := cephenc.Marshal(rbdjournal.ClientData{Meta: rbdjournal.UnknownClientMeta{Type: rbdjournal.MirrorPeerClientMetaType, Raw: []byte{0, 0, 0, 0}}})
	if err := reg.RegisterClient(ctx, peerData); err != nil {
		t.Fatal(err)
	}
	tag, err := w.AllocateTag(ctx, clsjournal.TagClassNew, nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 6, 4, 0, 0, 0, time.UTC)
	const n = 5
	var payloadBytes []int64
	for i := range n {
		p := cephenc.Marshal(rbdjournal.EventEntry{Event: rbdjournal.AioFlushEvent{}, Timestamp: t0.Add(time.Duration(i) * time.Second)})
		payloadBytes = append(payloadBytes, int64(len(p)))
		w.Append(tag.Tid, p)
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	check := func(what string, entries int, oldest time.Time) {
		t.Helper()
		before, err := clsjournal.ClientList(ctx, pool, journal.HeaderOID(info.ID))
		if err != nil {
			t.Fatal(err)
		}
		peers, err := JournalReplication(ctx, pool, "img")
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if len(peers) != 1 {
			t.Fatalf("%s: peers %+v, want the one mirror peer (not the image client)", what, peers)
		}
		p := peers[0]
		var bytes int64
		for _, b := range payloadBytes[n-entries:] {
			bytes += b
		}
		if p.MirrorUUID != "site-b-mirror-uuid" || !p.Counted || p.Disconnected || p.EntriesBehind != entries || p.BytesBehind != bytes || !p.OldestPending.Equal(oldest) {
			t.Errorf("%s: %+v, want %d entries (%d bytes) behind, oldest pending %v", what, p, entries, bytes, oldest)
		}
		now := t0.Add(time.Hour)
		wantSync := oldest
		if entries == 0 {
			wantSync = now
		}
		if got, ok := p.LastSync(now); !ok || !got.Equal(wantSync) {
			t.Errorf("%s: LastSync %v %v, want %v", what, got, ok, wantSync)
		}
		after, err := clsjournal.ClientList(ctx, pool, journal.HeaderOID(info.ID))
		if err != nil {
			t.Fatal(err)
		}
		if len(after) != len(before) {
			t.Fatalf("%s: clients changed by measuring: %v -> %v", what, before, after)
		}
		for i := range after {
			if len(after[i].CommitPosition.ObjectPositions) != len(before[i].CommitPosition.ObjectPositions) ||
				(len(after[i].CommitPosition.ObjectPositions) > 0 && after[i].CommitPosition.ObjectPositions[0] != before[i].CommitPosition.ObjectPositions[0]) {
				t.Fatalf("%s: client %q's commit position moved by measuring", what, after[i].ID)
			}
		}
	}
	check("nothing replayed", n, t0)

	// The peer replays and commits the first 3 entries, then the rest
	// (each time as a new instance, as rbd-mirror restarts its replayer: a
	// journaler's commit position advances over consecutive commits only).
	commit := func(k int) {
		t.Helper()
		peer, err := journal.Open(ctx, pool, info.ID, "site-b-mirror-uuid", settings)
		if err != nil {
			t.Fatal(err)
		}
		defer peer.Close(ctx)
		i := 0
		if _, err := peer.Replay(ctx, journal.ReplayOptions{}, func(_ context.Context, e journal.ReplayEntry) error {
			if i < k {
				peer.Committed(e.CommitTid)
			}
			i++
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := peer.FlushCommitPosition(ctx); err != nil {
			t.Fatal(err)
		}
	}
	commit(3)
	check("3 replayed", 2, t0.Add(3*time.Second))
	commit(2)
	check("all replayed", 0, time.Time{})
}
