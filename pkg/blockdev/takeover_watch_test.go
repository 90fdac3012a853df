package blockdev

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
)

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestHeaderUpdateGrowsDevice: the controller grows the image (header
// update notification): the serving device grows and says so (OnResize).
func TestHeaderUpdateGrowsDevice(t *testing.T) {
	dir := t.TempDir()
	pool := openPool(t, dir)
	newImage(t, pool, "vol", 22)
	var grown atomic.Int64
	d := openDevice(t, pool, "vol", Options{OnResize: func(n int64) { grown.Store(n) }})
	ctrl := openPool(t, dir)
	if err := image.Resize(context.Background(), ctrl, "vol", 2*testSize); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "the device to grow", func() bool { return grown.Load() == 2*testSize })
	if d.Size() != 2*testSize {
		t.Fatalf("size %d", d.Size())
	}
	if _, err := d.WriteAt(context.Background(), []byte("past the old end"), testSize+4096); err != nil {
		t.Fatal(err)
	}
}

// TestWatchLostHeaderUpdateSeen breaks the owner's header watch for real
// (its registration disappears, as when the OSD drops a timed-out watch),
// grows the image during the gap (the notification reaches nobody), and
// shows that the device re-registers, moves the lock cookie, and sees the
// new size before its next I/O.
func TestWatchLostHeaderUpdateSeen(t *testing.T) {
	dir := t.TempDir()
	pool := openPool(t, dir)
	d := newDevice(t, pool, Options{})
	ctx := context.Background()
	id := d.lock.ClientID()
	oldCookie := d.lock.Cookie()
	img, _ := image.Open(ctx, pool, "vol")
	header := clsrbd.HeaderOID(img.ID())

	regs, _ := filepath.Glob(filepath.Join(dir, "pools", "*", "watch", "*", fmt.Sprintf("%d.*.%d", id.GID, id.Handle)))
	if len(regs) != 1 {
		t.Fatalf("watch registrations %v", regs)
	}
	if err := os.Remove(regs[0]); err != nil {
		t.Fatal(err)
	}
	ctrl := openPool(t, dir)
	if ws, _ := ctrl.ListWatchers(ctx, header); len(ws) != 0 {
		t.Fatalf("watchers during the gap: %v", ws)
	}
	// The header update during the gap: its notification reaches no one.
	if err := image.Resize(ctx, ctrl, "vol", 3*testSize); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "the watch to be re-registered", func() bool { return d.lock.Cookie() != oldCookie })
	ws, err := ctrl.ListWatchers(ctx, header)
	if err != nil || len(ws) != 1 || fmt.Sprintf("auto %d", ws[0].Cookie) != d.lock.Cookie() {
		t.Fatalf("watchers %v (%v), lock cookie %q", ws, err, d.lock.Cookie())
	}
	// The next I/O sees the new size.
	if _, err := d.WriteAt(ctx, []byte("after the gap"), 2*testSize); err != nil {
		t.Fatalf("write past the old end after the gap: %v", err)
	}
	if d.Size() != 3*testSize || d.Err() != nil {
		t.Fatalf("size %d, err %v", d.Size(), d.Err())
	}
}

// requester is a librbd client's header watch: it records AsyncComplete
// notifications.
type requester struct {
	mu   sync.Mutex
	done map[rbdnotify.AsyncRequestID]int32
}

func (r *requester) HandleNotify(_ context.Context, n *objstore.Notification) {
	n.Ack(nil)
	m, err := rbdnotify.Parse(n.Payload)
	if err != nil {
		return
	}
	if c, ok := m.Payload.(rbdnotify.AsyncComplete); ok {
		r.mu.Lock()
		r.done[c.Request] = c.Result
		r.mu.Unlock()
	}
}

func (r *requester) HandleWatchError(context.Context, error) {}

func (r *requester) result(id rbdnotify.AsyncRequestID) (int32, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.done[id]
	return v, ok
}

// TestProxiedResizeGrowsDevice: a librbd client's Resize request (what
// `rbd resize` sends to the lock owner) grows the image and the device,
// journaled as librbd's owner journals it; a shrink is refused with EBUSY.
func TestProxiedResizeGrowsDevice(t *testing.T) {
	dir := t.TempDir()
	pool := openPool(t, dir)
	d := newDevice(t, pool, Options{})
	ctx := context.Background()
	img, _ := image.Open(ctx, pool, "vol")
	header := clsrbd.HeaderOID(img.ID())
	cli := openPool(t, dir)
	r := &requester{done: map[rbdnotify.AsyncRequestID]int32{}}
	w, err := cli.Watch(ctx, header, r)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(context.Background())
	req := rbdnotify.AsyncRequestID{Client: rbdnotify.ClientID{GID: cli.Client().ID, Handle: w.Cookie()}, RequestID: 1}
	send := func(size uint64) int32 {
		t.Helper()
		if _, err := cli.Notify(ctx, header, rbdnotify.Marshal(rbdnotify.Resize{Request: req, Size: size, AllowShrink: true}), 2*time.Second); err != nil {
			t.Fatal(err)
		}
		var res int32
		waitUntil(t, 10*time.Second, "AsyncComplete", func() bool {
			v, ok := r.result(req)
			res = v
			return ok
		})
		return res
	}
	if res := send(2 * testSize); res != 0 {
		t.Fatalf("resize result %d", res)
	}
	if d.Size() != 2*testSize {
		t.Fatalf("device size %d", d.Size())
	}
	if img.Refresh(ctx); img.Size() != 2*testSize {
		t.Fatalf("image size %d", img.Size())
	}
	var resize, finish bool
	for _, e := range journalEntries(t, pool, "vol") {
		var ev rbdjournal.EventEntry
		if err := cephenc.Unmarshal(e.Data, &ev); err != nil {
			t.Fatal(err)
		}
		switch ev := ev.Event.(type) {
		case rbdjournal.ResizeEvent:
			resize = ev.Size == 2*testSize
		case rbdjournal.OpFinishEvent:
			finish = ev.R == 0
		}
	}
	if !resize || !finish {
		t.Fatalf("journal: resize event %v, op finish %v", resize, finish)
	}
	req.RequestID++
	if res := send(testSize / 2); res != -int32(syscall.EBUSY) {
		t.Fatalf("shrink result %d, want -EBUSY", res)
	}
	if d.Size() != 2*testSize {
		t.Fatalf("device size %d after a refused shrink", d.Size())
	}
}
