//go:build ceph && pacific

package blockdev

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
)

// TestRBDSnapCLIOnServedImageCeph: Ceph's own `rbd snap create` and `rbd
// snap rm` on an image this process serves succeed (librbd proxies them to
// the lock owner, which performs them as librbd's owner does); the journal
// holds SnapCreate and OpFinish; `rbd export` of the snapshot equals the
// data acknowledged before it, while the head has the writes made after.
func TestRBDSnapCLIOnServedImageCeph(t *testing.T) {
	be, conf, name := newCephImage(t, "snapcli")
	pool, _ := be.connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	img, err := image.Open(ctx, pool, name)
	if err != nil {
		t.Fatal(err)
	}
	// A second journal client (as rbd-mirror registers) keeps every entry
	// for the check below.
	registerPeer(t, pool, img.ID())
	d, err := Open(ctx, pool, name, Options{AckPolicy: AckJournaled})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(context.Background())
	spec := cephtest.PoolName + "/" + name

	before := make([]byte, imageSize)
	for i := range before {
		before[i] = byte(i/4096) ^ byte(i)
	}
	if _, err := d.WriteAt(ctx, before, 0); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Acknowledged, not flushed: it must be in the snapshot too.
	if _, err := d.WriteAt(ctx, []byte("acknowledged before the snapshot"), 1<<20); err != nil {
		t.Fatal(err)
	}
	copy(before[1<<20:], "acknowledged before the snapshot")

	start := time.Now()
	out, err := rbdCLI(ctx, conf, "snap", "create", spec+"@s1")
	t.Logf("rbd snap create on the served image: %v after %v\n%s", err, time.Since(start).Round(time.Millisecond), out)
	if err != nil {
		t.Fatalf("rbd snap create failed: %v\n%s", err, out)
	}
	if out, err := rbdCLI(ctx, conf, "snap", "ls", spec); err != nil || !strings.Contains(out, "s1") {
		t.Fatalf("rbd snap ls: %v\n%s", err, out)
	}

	after := bytes.Repeat([]byte("after the snapshot.."), 1<<15)
	for _, off := range []int64{0, 1 << 20, 17 << 20, imageSize - int64(len(after))} {
		if _, err := d.WriteAt(ctx, after, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Discard(ctx, 32<<20, 8<<20); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	head := readAll(t, d, imageSize)

	dir := t.TempDir()
	export := func(what string) []byte {
		t.Helper()
		f := filepath.Join(dir, strings.ReplaceAll(what, "/", "_"))
		if out, err := rbdCLI(ctx, conf, "export", "--no-progress", what, f); err != nil {
			t.Fatalf("rbd export %s: %v\n%s", what, err, out)
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if got := export(spec + "@s1"); !bytes.Equal(got, before) {
		t.Fatalf("rbd export of the snapshot differs from the data acknowledged before it (%d bytes)", len(got))
	}
	// Our own read path at the snapshot (librados reads at a snap id).
	if err := img.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	snap, err := img.Snapshot(ctx, clsrbd.SnapshotNamespace{}, "s1")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, imageSize)
	if _, err := img.ReadAtSnap(ctx, got, 0, snap.ID); err != nil || !bytes.Equal(got, before) {
		t.Fatalf("image.ReadAtSnap differs from the data acknowledged before the snapshot (%v)", err)
	}

	// The journal: writes, SnapCreate, OpFinish(0), writes.
	var types []rbdjournal.EventType
	var snapEv rbdjournal.SnapCreateEvent
	var finish rbdjournal.OpFinishEvent
	for _, ev := range peerJournalEvents(t, pool, img.ID()) {
		switch ev := ev.(type) {
		case rbdjournal.SnapCreateEvent:
			snapEv = ev
		case rbdjournal.OpFinishEvent:
			finish = ev
		}
		if len(types) == 0 || types[len(types)-1] != ev.Type() {
			types = append(types, ev.Type())
		}
	}
	t.Logf("journal event types (runs collapsed): %v", types)
	i := slices.Index(types, rbdjournal.EventTypeSnapCreate)
	if i < 1 || i+1 >= len(types) || types[i+1] != rbdjournal.EventTypeOpFinish || snapEv.Name != "s1" ||
		finish.OpTid != snapEv.OpTid || finish.R != 0 || !slices.Contains(types[i+2:], rbdjournal.EventTypeAioWrite) {
		t.Fatalf("journal: %v, %+v, %+v", types, snapEv, finish)
	}
	if out, err := rbdCLI(ctx, conf, "journal", "inspect", "--verbose", "--image", spec); err != nil || !strings.Contains(out, "SnapCreate") {
		t.Errorf("rbd journal inspect --verbose does not show SnapCreate: %v\n%s", err, lastLines(out, 5))
	}

	// rbd snap rm while served.
	start = time.Now()
	out, err = rbdCLI(ctx, conf, "snap", "rm", "--no-progress", spec+"@s1")
	t.Logf("rbd snap rm on the served image: %v after %v\n%s", err, time.Since(start).Round(time.Millisecond), out)
	if err != nil {
		t.Fatalf("rbd snap rm failed: %v\n%s", err, out)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("rbd snap rm took %v: the requester waited for an answer it did not get", took)
	}
	evs := peerJournalEvents(t, pool, img.ID())
	if n := len(evs); n < 2 || evs[n-2].Type() != rbdjournal.EventTypeSnapRemove || evs[n-1] != (rbdjournal.OpFinishEvent{OpTid: evs[n-2].(rbdjournal.SnapRemoveEvent).OpTid}) {
		t.Errorf("journal does not end with SnapRemove, OpFinish(0): %v", evs[max(0, n-3):])
	}
	if out, err := rbdCLI(ctx, conf, "snap", "ls", "--all", spec); err != nil || strings.Contains(out, "s1") || strings.Contains(out, "trash") {
		t.Fatalf("rbd snap ls after rm: %v\n%s", err, out)
	}
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got := export(spec); !bytes.Equal(got, head) {
		t.Fatal("rbd export of the head differs from what the device served")
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
