package blockdev

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
)

// snapRequester is a librbd client of the image header that proxies
// maintenance requests to the lock owner (ImageWatcher::notify_*): it
// watches the header for AsyncComplete and sends requests.
type snapRequester struct {
	t    *testing.T
	pool objstore.Pool
	oid  string
	w    objstore.Watch
	mu   sync.Mutex
	done map[rbdnotify.AsyncRequestID]int32
}

func (r *snapRequester) HandleNotify(_ context.Context, n *objstore.Notification) {
	if m, err := rbdnotify.Parse(n.Payload); err == nil {
		if c, ok := m.Payload.(rbdnotify.AsyncComplete); ok {
			r.mu.Lock()
			r.done[c.Request] = c.Result
			r.mu.Unlock()
		}
	}
	n.Ack(nil)
}

func (r *snapRequester) HandleWatchError(context.Context, error) {}

func newSnapRequester(t *testing.T, pool objstore.Pool, oid string) *snapRequester {
	r := &snapRequester{t: t, pool: pool, oid: oid, done: map[rbdnotify.AsyncRequestID]int32{}}
	w, err := pool.Watch(context.Background(), oid, r)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(context.Background()) })
	r.w = w
	return r
}

// ask sends p and returns the lock owner's answer.
func (r *snapRequester) ask(p rbdnotify.Payload) rbdnotify.ResponseMessage {
	r.t.Helper()
	res, err := r.pool.Notify(context.Background(), r.oid, rbdnotify.Marshal(p), 10*time.Second)
	if err != nil {
		r.t.Fatalf("notify %v: %v", p.Op(), err)
	}
	for _, a := range res.Acks {
		if m, ok, err := rbdnotify.ParseResponse(a.Reply); err == nil && ok {
			return m
		}
	}
	r.t.Fatalf("%v: no lock owner answered", p.Op())
	return rbdnotify.ResponseMessage{}
}

// snapCreate proxies a snapshot creation as Pacific's librbd does and
// waits for its completion.
func (r *snapRequester) snapCreate(id uint64, ns rbdnotify.SnapshotNamespace, name string) int32 {
	r.t.Helper()
	req := r.request(id)
	return r.asyncRequest(req, rbdnotify.SnapCreate{Request: req, Namespace: ns, Name: name})
}

func (r *snapRequester) request(id uint64) rbdnotify.AsyncRequestID {
	return rbdnotify.AsyncRequestID{Client: rbdnotify.ClientID{GID: r.pool.Client().ID, Handle: r.w.Cookie()}, RequestID: id}
}

// asyncRequest sends p (carrying req) and waits for its AsyncComplete.
func (r *snapRequester) asyncRequest(req rbdnotify.AsyncRequestID, p rbdnotify.Payload) int32 {
	r.t.Helper()
	if m := r.ask(p); m.Result != 0 {
		return m.Result
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		res, ok := r.done[req]
		r.mu.Unlock()
		if ok {
			return res
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.t.Fatalf("no AsyncComplete for %v", p.Op())
	return 0
}

// journalEvents returns the events of the image's journal past the commit
// position of client "peer" (registered before the device wrote).
func peerJournalEvents(t *testing.T, pool objstore.Pool, id string) []rbdjournal.Event {
	t.Helper()
	var evs []rbdjournal.Event
	withPeerJournal(t, pool, id, func(ctx context.Context, j *journal.Journaler) error {
		_, err := j.Replay(ctx, journal.ReplayOptions{}, func(_ context.Context, e journal.ReplayEntry) error {
			var ee rbdjournal.EventEntry
			if err := cephenc.Unmarshal(e.Data, &ee); err != nil {
				return err
			}
			evs = append(evs, ee.Event)
			return nil
		})
		return err
	})
	return evs
}

// registerPeer registers client "peer" in the image's journal.
func registerPeer(t *testing.T, pool objstore.Pool, id string) {
	t.Helper()
	withPeerJournal(t, pool, id, func(ctx context.Context, j *journal.Journaler) error { return j.RegisterClient(ctx, nil) })
}

// withPeerJournal runs f on the image's journal opened as client "peer",
// then closes it; an error fails the test.
func withPeerJournal(t *testing.T, pool objstore.Pool, id string, f func(context.Context, *journal.Journaler) error) {
	t.Helper()
	ctx := context.Background()
	j, err := journal.Open(ctx, pool, id, "peer", journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close(ctx)
	if err := f(ctx, j); err != nil {
		t.Fatal(err)
	}
}

// TestSnapshotAsOwner: a snapshot requested through the header's
// watch/notify the way librbd proxies it holds every write acknowledged
// before (even ones still waiting to be applied), the journal holds
// SnapCreate then OpFinish after those writes, later writes leave the
// snapshot unchanged, the snapshot survives a reopen (replay), and a
// proxied SnapRemove removes it.
func TestSnapshotAsOwner(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	pool := openPool(t, dir)
	newImage(t, pool, "vol", 22)
	img, err := image.Open(ctx, pool, "vol")
	if err != nil {
		t.Fatal(err)
	}
	registerPeer(t, pool, img.ID())
	// A long linger: the writes are acknowledged (journaled) but not yet
	// in the image when the snapshot is requested.
	d := openDevice(t, pool, "vol", Options{AckPolicy: AckJournaled, ApplyLinger: 500 * time.Millisecond})
	before := bytes.Repeat([]byte("before!!"), 1<<17) // 1 MiB
	for off := int64(0); off < testSize; off += 8 << 20 {
		if _, err := d.WriteAt(ctx, before, off); err != nil {
			t.Fatal(err)
		}
	}
	other := openPool(t, dir) // the librbd client: another client instance
	hdr := clsrbd.HeaderOID(img.ID())
	rq := newSnapRequester(t, other, hdr)
	start := time.Now()
	if r := rq.snapCreate(1, rbdnotify.SnapshotNamespace{}, "s1"); r != 0 {
		t.Fatalf("snap create: %d", r)
	}
	t.Logf("snapshot with pending writes took %v", time.Since(start))
	// Librbd's snapRequester checks the name first; the owner refuses a
	// duplicate too.
	if r := rq.snapCreate(2, rbdnotify.SnapshotNamespace{}, "s1"); r != -int32(syscall.EEXIST) {
		t.Fatalf("duplicate snap create: %d, want -EEXIST", r)
	}
	after := bytes.Repeat([]byte("AFTER..."), 1<<17)
	for off := int64(0); off < testSize; off += 8 << 20 {
		if _, err := d.WriteAt(ctx, after, off+4096); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Discard(ctx, 16<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, testSize)
	for off := 0; off < testSize; off += 8 << 20 {
		copy(want[off:], before)
	}
	checkSnap := func(when string) uint64 {
		t.Helper()
		reader, err := image.Open(ctx, other, "vol")
		if err != nil {
			t.Fatal(err)
		}
		s, err := reader.Snapshot(ctx, clsrbd.SnapshotNamespace{}, "s1")
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		got := make([]byte, testSize)
		if _, err := reader.ReadAtSnap(ctx, got, 0, s.ID); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: the snapshot does not hold exactly the writes acknowledged before it", when)
		}
		return s.ID
	}
	checkSnap("served")
	head := readAll(t, d, testSize)
	if !bytes.Equal(head[4096:4096+len(after)], after) || !bytes.Equal(head[16<<20:17<<20], make([]byte, 1<<20)) {
		t.Fatal("head lacks the writes after the snapshot")
	}
	// The journal: the writes before, SnapCreate, OpFinish(0), the writes after.
	var types []rbdjournal.EventType
	for _, ev := range peerJournalEvents(t, pool, img.ID()) {
		if len(types) == 0 || types[len(types)-1] != ev.Type() {
			types = append(types, ev.Type())
		}
		if c, ok := ev.(rbdjournal.SnapCreateEvent); ok && (c.Name != "s1" || c.OpTid == 0) {
			t.Fatalf("journaled %+v", c)
		}
	}
	// (The refused duplicate is refused before anything is journaled, as
	// librbd's Operations::snap_create refuses it.)
	wantTypes := []rbdjournal.EventType{rbdjournal.EventTypeAioWrite, rbdjournal.EventTypeSnapCreate, rbdjournal.EventTypeOpFinish,
		rbdjournal.EventTypeAioWrite, rbdjournal.EventTypeAioDiscard, rbdjournal.EventTypeAioFlush}
	if !slices.Equal(types, wantTypes) {
		t.Fatalf("journal event types %v", types)
	}

	// Reopen: the replay runs the journal again (the peer kept it all).
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	d2 := openDevice(t, pool, "vol", Options{AckPolicy: AckJournaled})
	id := checkSnap("after reopen")
	if got := readAll(t, d2, testSize); !bytes.Equal(got, head) {
		t.Fatal("head changed across the reopen")
	}
	// Proxied removal through the client API a controller uses (Ceph
	// 16.2.15's form: with an async request id), then the early Pacific
	// form (no id: answered when done).
	req, err := exclusivelock.NewRequester(ctx, other, hdr)
	if err != nil {
		t.Fatal(err)
	}
	defer req.Close(context.Background())
	if err := req.SnapRemove(ctx, rbdnotify.SnapshotNamespace{}, "s1"); err != nil {
		t.Fatalf("snap remove: %v", err)
	}
	rq2 := newSnapRequester(t, other, hdr)
	if m := rq2.ask(rbdnotify.SnapRemove{Name: "s1"}); m.Result != -int32(syscall.ENOENT) {
		t.Fatalf("second snap remove: %d, want -ENOENT", m.Result)
	}
	reader, _ := image.Open(ctx, other, "vol")
	if snaps, err := reader.Snapshots(ctx); err != nil || len(snaps) != 0 {
		t.Fatalf("snapshots after removal: %+v, %v", snaps, err)
	}
	if _, err := reader.ReadAtSnap(ctx, make([]byte, 10), 0, id); !errors.Is(err, image.ErrSnapshotNotFound) {
		t.Fatalf("read at the removed snapshot: %v", err)
	}
	if f := reader.Features(); f&clsrbd.FeatureOperations != 0 {
		t.Fatalf("features after removal: %v", clsrbd.FeatureNames(f))
	}
	// Direct API, mirror namespace (rbd-mirror's sync points come
	// through the same path).
	ns := rbdnotify.SnapshotNamespace{Type: rbdnotify.SnapNamespaceMirror, Raw: []byte{7}}
	if _, err := d2.CreateSnapshot(ctx, ns, "sync"); err != nil {
		t.Fatal(err)
	}
	if err := d2.RemoveSnapshot(ctx, rbdnotify.SnapshotNamespace{}, "sync"); !errors.Is(err, ErrSnapshotNotFound) {
		t.Fatalf("remove in the wrong namespace: %v", err)
	}
	if err := d2.RemoveSnapshot(ctx, ns, "sync"); err != nil {
		t.Fatal(err)
	}
}

// TestSnapshotReplay: replaying a journal runs a SnapCreate (and a
// SnapRemove) when its OpFinish says it succeeded, between the writes
// before and after it, as librbd's replay does; one without an OpFinish or
// with a failed one is not run.
func TestSnapshotReplay(t *testing.T) {
	ctx := context.Background()
	pool := openPool(t, t.TempDir())
	newImage(t, pool, "vol", 22)
	a := bytes.Repeat([]byte{0xa}, 8192)
	b := bytes.Repeat([]byte{0xb}, 4096)
	journalWrites(t, pool, "vol", 0, []rbdjournal.Event{
		rbdjournal.AioWriteEvent{Offset: 0, Length: uint64(len(a)), Data: a},
		rbdjournal.SnapCreateEvent{OpTid: 1, Name: "kept"},
		rbdjournal.OpFinishEvent{OpTid: 1},
		rbdjournal.AioWriteEvent{Offset: 4096, Length: uint64(len(b)), Data: b},
		rbdjournal.SnapCreateEvent{OpTid: 2, Name: "failed"},
		rbdjournal.OpFinishEvent{OpTid: 2, R: -int32(syscall.EDQUOT)},
		rbdjournal.SnapCreateEvent{OpTid: 3, Name: "removed"},
		rbdjournal.OpFinishEvent{OpTid: 3},
		rbdjournal.AioWriteEvent{Offset: 0, Length: uint64(len(b)), Data: b},
		rbdjournal.SnapRemoveEvent{OpTid: 4, Name: "removed"},
		rbdjournal.OpFinishEvent{OpTid: 4},
		rbdjournal.SnapCreateEvent{OpTid: 5, Name: "unfinished"},
	}, nil)
	d := openDevice(t, pool, "vol", Options{})
	snaps, err := d.img.Snapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 1 || snaps[0].Name != "kept" {
		t.Fatalf("snapshots after replay: %+v", snaps)
	}
	got := make([]byte, 8192)
	if _, err := d.img.ReadAtSnap(ctx, got, 0, snaps[0].ID); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("snapshot content after replay: %v", err)
	}
	head := readAll(t, d, 8192)
	if !bytes.Equal(head, append(slices.Clone(b), b...)) {
		t.Fatal("head after replay differs")
	}
	// Reopening replays nothing more and keeps the snapshot.
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	d = openDevice(t, pool, "vol", Options{})
	if snaps, _ := d.img.Snapshots(ctx); len(snaps) != 1 {
		t.Fatalf("snapshots after a second open: %+v", snaps)
	}
}
