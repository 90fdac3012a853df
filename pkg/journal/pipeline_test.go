package journal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"golang.org/x/sync/errgroup"
)

// newJournalWidth is newJournal with a splay width and settings.
func newJournalWidth(t testing.TB, pool objstore.Pool, id string, width uint8, s Settings) (*Journaler, uint64) {
	t.Helper()
	return newJournalWith(t, pool, id, CreateOptions{Order: 24, SplayWidth: width}, s)
}

// newJournalWith creates journal id (o), opens it with settings s (closed
// at the end of the test), registers the image client and allocates a
// tag; it returns the journaler and the tag's tid.
func newJournalWith(t testing.TB, pool objstore.Pool, id string, o CreateOptions, s Settings) (*Journaler, uint64) {
	t.Helper()
	ctx := context.Background()
	if err := Create(ctx, pool, id, o); err != nil {
		t.Fatal(err)
	}
	j, err := Open(ctx, pool, id, "", Options{Settings: s})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close(context.Background()) })
	if err := j.RegisterClient(ctx, nil); err != nil {
		t.Fatal(err)
	}
	tag, err := j.AllocateTag(ctx, clsjournal.TagClassNew, nil)
	if err != nil {
		t.Fatal(err)
	}
	return j, tag.Tid
}

// dropPool passes everything to a local pool, except one chosen
// submission of appends (dropAt, counting from 1), which it never applies:
// it reports that submission failed only once the next one was made, so
// that one is pipelined behind it. It records what the submission after
// the dropped one returned.
type dropPool struct {
	objstore.Pool
	sub    objstore.Submitter
	dropAt int

	mu      sync.Mutex
	n       int
	dropped chan struct{} // closed when the dropped submission was made
	next    chan struct{} // closed when the one after it was made
	after   []error       // outcome of the one after it
	settled chan struct{} // closed when after is set
}

var errDropped = errors.New("injected: append lost")

func (p *dropPool) Submit(ctx context.Context, ops []objstore.BatchOp) func() []error {
	p.mu.Lock()
	p.n++
	n := p.n
	p.mu.Unlock()
	switch n {
	case p.dropAt:
		close(p.dropped)
		return func() []error {
			<-p.next
			errs := make([]error, len(ops))
			for i := range errs {
				errs[i] = errDropped
			}
			return errs
		}
	case p.dropAt + 1:
		wait := p.sub.Submit(ctx, ops)
		close(p.next)
		return func() []error {
			errs := wait()
			p.mu.Lock()
			p.after = errs
			p.mu.Unlock()
			close(p.settled)
			return errs
		}
	}
	return p.sub.Submit(ctx, ops)
}

// TestPipelinedAppendAfterLostAppendFails: an append sent while an earlier
// append to the same object is in flight must not land if the earlier one
// did not (its cmpext guard fails), so no later entry lands after a hole;
// every future from the lost append on fails, and the object holds
// exactly what was acknowledged.
func TestPipelinedAppendAfterLostAppendFails(t *testing.T) {
	base := newPool(t)
	p := &dropPool{Pool: base, sub: base.(objstore.Submitter), dropAt: 2,
		dropped: make(chan struct{}), next: make(chan struct{}), settled: make(chan struct{})}
	s := fastSettings
	s.PipelineBytes = 1 // pipeline whatever waits
	j, tag := newJournalWidth(t, p, "img", 1, s)
	ctx := context.Background()

	first := j.Append(tag, []byte("acknowledged"))
	if err := first.Wait(ctx); err != nil { // submission 1
		t.Fatal(err)
	}
	lost := j.Append(tag, []byte("lost")) // submission 2, dropped
	<-p.dropped
	// Submission 2 is in flight: these go in a pipelined wave (3).
	later := j.AppendBatch(tag, [][]byte{[]byte("later-1"), []byte("later-2")})
	for i, f := range append([]*Future{lost}, later...) {
		if err := f.Wait(ctx); err == nil {
			t.Fatalf("future %d after the lost append completed without error", i)
		}
	}
	<-p.settled
	p.mu.Lock()
	after := p.after
	p.mu.Unlock()
	if len(after) != 1 || !errors.Is(after[0], objstore.ErrMismatch) {
		t.Fatalf("the pipelined append returned %v, want its cmpext guard to fail (ErrMismatch)", after)
	}
	if st := j.Stats(); st.Pipelined == 0 {
		t.Fatalf("stats %+v: no wave was pipelined", st)
	}
	if err := j.Err(); err == nil {
		t.Fatal("the journaler still accepts appends after a lost append")
	}

	var op objstore.ReadOp
	r := op.Read(0, 0)
	if err := base.Read(ctx, j.DataOID(0), &op); err != nil {
		t.Fatal(err)
	}
	want := Entry{TagTid: tag, EntryTid: 0, Data: []byte("acknowledged")}
	if !bytes.Equal(r.Data(), want.AppendEncoded(nil)) {
		t.Fatalf("data object holds %d bytes, want only the acknowledged entry (%d)", len(r.Data()), want.EncodedLen())
	}
}

// TestPipelinedAppends: with writers keeping many appends outstanding,
// waves are pipelined, and the journal replays every entry in order,
// whatever the splay width; with MaxInflightWaves 1 none is.
func TestPipelinedAppends(t *testing.T) {
	for _, tc := range []struct {
		width     uint8
		waves     int
		pipelined bool
	}{
		{1, 0, true}, {4, 0, true}, {1, 1, false},
	} {
		t.Run(fmt.Sprintf("width=%d/waves=%d", tc.width, tc.waves), func(t *testing.T) {
			pool := newPool(t)
			s := fastSettings
			s.MaxInflightWaves = tc.waves
			s.PipelineBytes = 1
			j, tag := newJournalWidth(t, pool, "img", tc.width, s)
			r := rand.New(rand.NewPCG(5, 6))
			var want [][]byte
			var mu sync.Mutex
			var g errgroup.Group
			for w := range 8 {
				ps := payloads(r, 64, 2048)
				g.Go(func() error {
					for _, pl := range ps {
						// Entry tids follow the order of Append calls.
						mu.Lock()
						f := j.Append(tag, pl)
						want = append(want, pl)
						mu.Unlock()
						if err := f.Wait(context.Background()); err != nil {
							return fmt.Errorf("writer %d: %w", w, err)
						}
					}
					return nil
				})
			}
			if err := g.Wait(); err != nil {
				t.Fatal(err)
			}
			st := j.Stats()
			if tc.pipelined != (st.Pipelined > 0) {
				t.Fatalf("stats %+v: pipelined waves %d, want some: %v", st, st.Pipelined, tc.pipelined)
			}
			if err := j.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			got, _ := replayAll(t, openJournal(t, pool, "img"))
			if len(got) != len(want) {
				t.Fatalf("replayed %d entries, want %d", len(got), len(want))
			}
			for i, e := range got {
				if e.EntryTid != uint64(i) || !bytes.Equal(e.Data, want[i]) {
					t.Fatalf("entry %d (tid %d) differs", i, e.EntryTid)
				}
			}
		})
	}
}
