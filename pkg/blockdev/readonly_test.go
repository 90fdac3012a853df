package blockdev

import (
	"bytes"
	"context"
	"errors"
	"syscall"
	"testing"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
)

// TestOpenReadOnly: a read-only device opens an image another device owns
// (no lock taken), reads what the owner has applied — also what it applies
// later — refuses every change with EROFS, and neither tags the journal
// nor disturbs the owner when it opens and closes.
func TestOpenReadOnly(t *testing.T) {
	ctx := context.Background()
	pool := openPool(t, t.TempDir())
	newImage(t, pool, "img", 16)
	owner := openDevice(t, pool, "img", Options{AckPolicy: AckApplied})
	w1 := bytes.Repeat([]byte{0xa1}, 8192)
	if _, err := owner.WriteAt(ctx, w1, 4096); err != nil {
		t.Fatal(err)
	}
	tags := func() int {
		t.Helper()
		ts, err := owner.Journal().Tags(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		return len(ts)
	}
	before := tags()

	ro, err := OpenReadOnly(ctx, pool, "img", Options{})
	if err != nil {
		t.Fatalf("OpenReadOnly of an image another device owns: %v", err)
	}
	if !ro.ReadOnly() || ro.Tag() != 0 || ro.Owner().Addr != "" || ro.Journal() != nil {
		t.Fatalf("read-only device: ReadOnly %v, Tag %d, Owner %+v, journal %v", ro.ReadOnly(), ro.Tag(), ro.Owner(), ro.Journal())
	}
	if ro.Size() != owner.Size() {
		t.Fatalf("size %d, want %d", ro.Size(), owner.Size())
	}
	got := make([]byte, len(w1))
	if _, err := ro.ReadAt(ctx, got, 4096); err != nil || !bytes.Equal(got, w1) {
		t.Fatalf("read of the owner's write: %v, equal %v", err, bytes.Equal(got, w1))
	}
	for _, tc := range []struct {
		op string
		f  func() error
	}{
		{"write", func() error { _, err := ro.WriteAt(ctx, make([]byte, 512), 0); return err }},
		{"discard", func() error { return ro.Discard(ctx, 0, 4096) }},
		{"write-zeroes", func() error { return ro.WriteZeroes(ctx, 0, 4096) }},
		{"snapshot", func() error { _, err := ro.CreateSnapshot(ctx, clsrbd.SnapshotNamespace{}, "s"); return err }},
	} {
		if err := tc.f(); !errors.Is(err, ErrReadOnly) || !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s on the read-only device: %v, want ErrReadOnly (EROFS)", tc.op, err)
		}
	}
	if err := ro.Flush(ctx); err != nil {
		t.Errorf("flush of the read-only device: %v (nothing to make durable)", err)
	}
	// The view is live: what the owner applies later is read too.
	w2 := bytes.Repeat([]byte{0xb2}, 4096)
	if _, err := owner.WriteAt(ctx, w2, 1<<20); err != nil {
		t.Fatal(err)
	}
	got = make([]byte, len(w2))
	if _, err := ro.ReadAt(ctx, got, 1<<20); err != nil || !bytes.Equal(got, w2) {
		t.Fatalf("read of the owner's later write: %v, equal %v", err, bytes.Equal(got, w2))
	}
	if err := ro.Err(); err != nil {
		t.Fatalf("read-only device Err: %v", err)
	}
	if err := ro.Close(ctx); err != nil {
		t.Fatalf("close the read-only device: %v", err)
	}
	if n := tags(); n != before {
		t.Fatalf("the journal has %d tags after the read-only device, %d before: it was tagged", n, before)
	}
	// The owner keeps its lock and keeps writing.
	if err := owner.Err(); err != nil {
		t.Fatalf("owner after the read-only device closed: %v", err)
	}
	if _, err := owner.WriteAt(ctx, w1, 0); err != nil {
		t.Fatalf("owner write after the read-only device closed: %v", err)
	}
}

// TestOpenRefusesNonPrimary: Open, once it holds the lock, refuses an
// image whose newest journal tag belongs to a mirror peer or to nobody
// (demoted), without tagging the journal or writing the image; an image
// whose newest tag is local again (promoted) opens.
func TestOpenRefusesNonPrimary(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		owner string
		err   error
	}{
		{"replica", "4b1f2c3e-remote-site", ErrNotPrimary},
		{"demoted", rbdjournal.OrphanMirrorUUID, ErrNotPrimary},
		{"local", rbdjournal.LocalMirrorUUID, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := openPool(t, t.TempDir())
			newImage(t, pool, "vol", 22)
			// A write of the other site's epoch: replaying it would write
			// the image.
			journalWritesOwned(t, pool, "vol", tc.owner, []rbdjournal.Event{
				rbdjournal.AioWriteEvent{Offset: 0, Length: 4096, Data: bytes.Repeat([]byte{0x11}, 4096)}})
			d, err := Open(ctx, pool, "vol", Options{})
			if tc.err == nil {
				if err != nil {
					t.Fatalf("Open of a primary image: %v", err)
				}
				d.Close(ctx)
				return
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("Open: %v, want %v", err, tc.err)
			}
			ro, err := OpenReadOnly(ctx, pool, "vol", Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer ro.Close(ctx)
			if got := readAll(t, ro, 4096); !bytes.Equal(got, make([]byte, 4096)) {
				t.Fatal("the refused Open replayed the other site's write into the image")
			}
			// The lock was released: a second Open gets as far as the same
			// check (not ErrLocked).
			if _, err := Open(ctx, pool, "vol", Options{}); !errors.Is(err, ErrNotPrimary) {
				t.Fatalf("second Open: %v, want ErrNotPrimary", err)
			}
		})
	}
}

// journalWritesOwned is journalWrites in an epoch whose tag belongs to
// owner (a mirror uuid; "" is local).
func journalWritesOwned(t *testing.T, pool objstore.Pool, name, owner string, evs []rbdjournal.Event) {
	t.Helper()
	journalWritesTag(t, pool, name, 0, rbdjournal.TagData{MirrorUUID: owner}, evs)
}
