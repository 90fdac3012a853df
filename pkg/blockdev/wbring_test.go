package blockdev

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local/localtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/testwait"
	"golang.org/x/sys/unix"
)

// reopenRing maps r's memfd again, as a successor does with the file the
// holder kept.
func reopenRing(t *testing.T, r *Ring) *Ring {
	t.Helper()
	fd, err := unix.FcntlInt(r.File().Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := OpenRing(os.NewFile(uintptr(fd), "ring"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r2.Close() })
	return r2
}

func newTestRing(t *testing.T, size int64) *Ring {
	t.Helper()
	r, err := NewRing("test", size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func recData(seq int, n int) []byte {
	return bytes.Repeat([]byte{byte(seq)}, n)
}

// TestRingRecordsSurvive: what a ring records past its durable position is
// what a second mapping (the successor) finds, in order, with its data;
// durable records are not returned; a torn last record ends the scan; the
// log wraps around many times.
func TestRingRecordsSurvive(t *testing.T) {
	for _, tc := range []struct {
		name    string
		records int
		durable int // records made durable (from the first)
		tearAt  int // record whose data is damaged (0: none)
		size    int64
	}{
		{"none durable", 5, 0, 0, 64 << 10},
		{"some durable", 8, 5, 0, 64 << 10},
		{"all durable", 4, 4, 0, 64 << 10},
		{"torn last record", 6, 2, 6, 64 << 10},
		{"torn record in the middle ends the scan", 6, 0, 4, 64 << 10},
		{"wraps", 400, 396, 0, 32 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestRing(t, tc.size)
			type rec struct{ seq, end uint64 }
			var recs []rec
			for i := 1; i <= tc.records; i++ {
				kind := ringKindWrite
				var data []byte
				switch i % 3 {
				case 0:
					kind = ringKindDiscard
				default:
					data = recData(i, 100+i*7%900)
				}
				length := int64(len(data))
				if data == nil {
					length = 4096
				}
				seq, end, err := r.record(kind, int64(i)*4096, length, data)
				if err != nil {
					t.Fatal(err)
				}
				if seq != uint64(i) {
					t.Fatalf("record %d got seq %d", i, seq)
				}
				recs = append(recs, rec{seq, end})
				// In the wrapping case records become durable as they go
				// (or the ring fills up).
				if tc.name == "wraps" && i > 4 {
					r.durable(recs[i-5].seq, recs[i-5].end)
				}
			}
			if tc.durable > 0 {
				r.durable(recs[tc.durable-1].seq, recs[tc.durable-1].end)
			}
			if tc.tearAt > 0 {
				// Damage the record (its offset field): as if the writer
				// died while writing it.
				start := uint64(0)
				if tc.tearAt > 1 {
					start = recs[tc.tearAt-2].end
				}
				r.data[(start+16)%r.size] ^= 0xff
			}
			got := reopenRing(t, r).Pending()
			want := tc.records - tc.durable
			if tc.tearAt > 0 {
				want = tc.tearAt - 1 - tc.durable
			}
			if len(got) != want {
				t.Fatalf("successor finds %d records, want %d", len(got), want)
			}
			for k, g := range got {
				i := tc.durable + 1 + k
				if g.Seq != uint64(i) || g.Off != int64(i)*4096 {
					t.Fatalf("record %d: seq %d off %d", i, g.Seq, g.Off)
				}
				if g.Kind == ringKindWrite && !bytes.Equal(g.Data, recData(i, 100+i*7%900)) {
					t.Fatalf("record %d: data differs", i)
				}
			}
		})
	}
}

// TestRingWaitsWhenFull: a record that does not fit waits until earlier
// ones are durable; one larger than half the ring is refused.
func TestRingWaitsWhenFull(t *testing.T) {
	r := newTestRing(t, 16<<10)
	var ends []uint64
	var seqs []uint64
	for i := 0; i < 3; i++ {
		seq, end, err := r.record(ringKindWrite, 0, 4000, make([]byte, 4000))
		if err != nil {
			t.Fatal(err)
		}
		seqs, ends = append(seqs, seq), append(ends, end)
	}
	done := make(chan error, 1)
	go func() { _, _, err := r.record(ringKindWrite, 0, 6000, make([]byte, 6000)); done <- err }()
	if err, ok := returnsWithin(300e6, func() error { return nil }); ok && err == nil {
		select {
		case err := <-done:
			t.Fatalf("a record that does not fit returned (%v) before anything was durable", err)
		default:
		}
	}
	r.durable(seqs[1], ends[1])
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.record(ringKindWrite, 0, 9000, make([]byte, 9000)); err == nil {
		t.Fatal("a record larger than half the ring was accepted")
	}
}

// TestOpenRingRejects: OpenRing takes only a sealed memfd with a ring's
// header.
func TestOpenRingRejects(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "ring")
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 << 10)
	if _, err := OpenRing(f); err == nil {
		t.Fatal("a regular file was accepted as a ring")
	}
	fd, err := unix.MemfdCreate("x", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Skip(err)
	}
	m := os.NewFile(uintptr(fd), "memfd")
	m.Truncate(64 << 10)
	unix.FcntlInt(m.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW)
	if _, err := OpenRing(m); err == nil {
		t.Fatal("a memfd without a ring header was accepted")
	}
}

// TestWriteBackRingRejournal: a write-back device records its
// acknowledged writes in the ring; when its journal never got them (the
// process "died": its appends are held back and then fail), a successor
// given the ring re-journals them at Open: the image holds every
// acknowledged write, in order.
func TestWriteBackRingRejournal(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	gp := &gatedPool{Pool: openPool(t, dir)}
	newImage(t, gp, "vol", 22)
	ring := newTestRing(t, RingSize(1<<20))
	d := openDevice(t, gp, "vol", Options{AckPolicy: AckWriteBack, Ring: ring, MaxDirtyBytes: 1 << 20})
	if _, err := d.WriteAt(ctx, bytes.Repeat([]byte{1}, 8192), 0); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Flush returns once the entry is durable; the apply goroutine marks
	// it durable in the ring just after (a successor that finds it still
	// pending re-journals it: harmless, but this test counts records).
	testwait.For(t, 10*time.Second, "the flushed write marked durable in the ring", func() bool { return ring.Stats().Durable >= 1 })
	gp.close()
	t.Cleanup(func() { gp.open(nil) })
	model := bytes.Repeat([]byte{1}, 8192)
	model = append(model, make([]byte, 64<<10-8192)...)
	for i, w := range []struct {
		off, n int
		zero   bool
	}{{4096, 8192, false}, {0, 4096, false}, {6000, 20000, false}, {8192, 4096, true}, {30000, 1000, false}} {
		if w.zero {
			if err := d.WriteZeroes(ctx, int64(w.off), int64(w.n)); err != nil {
				t.Fatal(err)
			}
			clear(model[w.off : w.off+w.n])
			continue
		}
		b := bytes.Repeat([]byte{byte(10 + i)}, w.n)
		if _, err := d.WriteAt(ctx, b, int64(w.off)); err != nil {
			t.Fatal(err)
		}
		copy(model[w.off:], b)
	}
	if st := ring.Stats(); st.Live == 0 || st.NextSeq-1-st.Durable != 5 {
		t.Fatalf("ring %+v: want 5 records not yet durable", st)
	}
	// The process dies: its appends never land.
	gp.open(fmt.Errorf("injected: the process died"))
	d.Close(ctx) // fails: the journal failed
	c, p2 := localtest.Open(t, dir, local.Options{})
	d2 := openDevice(t, p2, "vol", Options{AckPolicy: AckWriteBack, Ring: reopenRing(t, ring), Fencer: c, DeadOwners: []string{d.Owner().Addr}})
	if got := readAll(t, d2, 64<<10); !bytes.Equal(got, model) {
		t.Fatal("the successor's device lacks writes the dead one acknowledged")
	}
	// The ring, as a third incarnation would map it, has nothing left to
	// re-journal.
	if p := reopenRing(t, ring).Pending(); len(p) != 0 {
		t.Fatalf("the re-journaled records are not marked durable: %d still pending", len(p))
	}
}

// TestWriteBackRingFullJournalFails: a writer waiting for ring space
// (records not durable fill the ring) gets an error, not a hang, when the
// journal fails; the device fails.
func TestWriteBackRingFullJournalFails(t *testing.T) {
	ctx := context.Background()
	gp := &gatedPool{Pool: openPool(t, t.TempDir())}
	newImage(t, gp, "vol", 22)
	ring := newTestRing(t, 16<<10)
	d := openDevice(t, gp, "vol", Options{AckPolicy: AckWriteBack, Ring: ring, MaxDirtyBytes: 1 << 20})
	gp.close()
	t.Cleanup(func() { gp.open(nil) })
	for i := 0; i < 3; i++ {
		if _, err := d.WriteAt(ctx, make([]byte, 4096), int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { _, err := d.WriteAt(ctx, make([]byte, 4096), 3*4096); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("a write that does not fit the ring returned (%v) while nothing was durable", err)
	case <-time.After(200 * time.Millisecond):
	}
	gp.open(fmt.Errorf("injected append failure"))
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the waiting write succeeded although the journal failed")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the writer waiting for ring space hangs after the journal failed")
	}
	if err := d.Flush(ctx); err == nil {
		t.Fatal("Flush succeeded on a failed device")
	}
}
