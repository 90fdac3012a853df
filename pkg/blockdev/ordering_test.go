package blockdev

import (
	"math/rand/v2"
	"slices"
	"testing"
)

const mib = 1 << 20

// TestPendingSetOverlapping: lookups find each overlapping change once, in
// journal order, whichever buckets the change and the query span.
func TestPendingSetOverlapping(t *testing.T) {
	type ext struct{ off, end int64 }
	tests := []struct {
		name    string
		changes []ext
		query   ext
		want    []int // indexes into changes
	}{
		{"none", nil, ext{0, 4096}, nil},
		{"same block", []ext{{0, 4096}, {0, 4096}}, ext{0, 4096}, []int{0, 1}},
		{"touching is not overlapping", []ext{{0, 4096}, {8192, 12288}}, ext{4096, 8192}, nil},
		{"change across buckets, query in the second", []ext{{mib - 4096, mib + 4096}}, ext{mib, mib + 512}, []int{0}},
		{"change across buckets, query across them", []ext{{mib - 4096, mib + 4096}}, ext{0, 3 * mib}, []int{0}},
		{"journal order kept across buckets", []ext{{2 * mib, 2*mib + 4096}, {0, 4 * mib}, {4096, 8192}}, ext{0, 4 * mib}, []int{0, 1, 2}},
		{"wide change", []ext{{0, 1 << 40}, {5 * mib, 5*mib + 4096}}, ext{5 * mib, 5*mib + 1}, []int{0, 1}},
		{"wide query", []ext{{100 * mib, 100*mib + 4096}, {700 * mib, 700*mib + 4096}, {0, 4096}}, ext{4096, 1 << 40}, []int{0, 1}},
		{"empty change at the query's start", []ext{{mib, mib}}, ext{mib, 2 * mib}, nil},
		{"empty query", []ext{{0, 4096}}, ext{0, 0}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s pendingSet
			var ws []*pendingWrite
			for _, c := range tt.changes {
				ws = append(ws, s.add(c.off, c.end, nil))
			}
			got := s.overlapping(tt.query.off, tt.query.end)
			var want []*pendingWrite
			for _, i := range tt.want {
				want = append(want, ws[i])
			}
			if !slices.Equal(got, want) {
				t.Errorf("overlapping(%d, %d) = %v, want changes %v", tt.query.off, tt.query.end, extents(got), tt.want)
			}
			if n := len(s.all()); n != len(tt.changes) {
				t.Errorf("all() has %d changes, want %d", n, len(tt.changes))
			}
		})
	}
}

func extents(ws []*pendingWrite) [][2]int64 {
	var out [][2]int64
	for _, w := range ws {
		out = append(out, [2]int64{w.off, w.end})
	}
	return out
}

// TestPendingSetModel: random adds, removes and lookups agree with a plain
// list scanned in journal order (the set's former implementation).
func TestPendingSetModel(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 1))
		var s pendingSet
		var model []*pendingWrite // in journal order
		randExt := func() (int64, int64) {
			off := r.Int64N(256*mib) &^ 511
			var n int64
			switch r.IntN(10) {
			case 0:
				n = 0
			case 1:
				n = r.Int64N(200 * mib) // wide: a large discard
			case 2, 3:
				n = r.Int64N(2*mib) + 1 // across buckets
			default:
				n = 4096
			}
			return off, off + n
		}
		naive := func(off, end int64) []*pendingWrite {
			var out []*pendingWrite
			for _, p := range model {
				if p.off < end && off < p.end {
					out = append(out, p)
				}
			}
			return out
		}
		for step := range 3000 {
			switch op := r.IntN(10); {
			case op < 5 || len(model) == 0:
				off, end := randExt()
				wantWait := naive(off, end)
				w := s.add(off, end, nil)
				if !sameChans(w.waitFor, wantWait) {
					t.Fatalf("seed %d step %d: add(%d, %d) waits for %d changes, want %d", seed, step, off, end, len(w.waitFor), len(wantWait))
				}
				model = append(model, w)
			case op < 8:
				// Mostly the oldest, as applies go; sometimes any.
				i := 0
				if r.IntN(3) == 0 {
					i = r.IntN(len(model))
				}
				s.remove(model[i])
				model = slices.Delete(model, i, i+1)
			default:
				off, end := randExt()
				if got, want := s.overlapping(off, end), naive(off, end); !slices.Equal(got, want) {
					t.Fatalf("seed %d step %d: overlapping(%d, %d) = %v, want %v", seed, step, off, end, extents(got), extents(want))
				}
			}
		}
		all := s.all()
		if len(all) != len(model) {
			t.Fatalf("seed %d: all() has %d changes, want %d", seed, len(all), len(model))
		}
		for _, p := range model {
			if !slices.Contains(all, p) {
				t.Fatalf("seed %d: all() misses a pending change %d+%d", seed, p.off, p.end-p.off)
			}
		}
		for _, p := range model {
			s.remove(p)
		}
		if len(s.buckets) != 0 || len(s.wide) != 0 {
			t.Fatalf("seed %d: empty set keeps %d buckets, %d wide changes", seed, len(s.buckets), len(s.wide))
		}
	}
}

func sameChans(got []chan struct{}, want []*pendingWrite) bool {
	if len(got) != len(want) {
		return false
	}
	for _, p := range want {
		if !slices.Contains(got, p.applied) {
			return false
		}
	}
	return true
}

// BenchmarkPendingSet: a write-back backlog of 4 KiB random writes (the
// dirty bound's worth), each added and the oldest applied.
func BenchmarkPendingSet(b *testing.B) {
	const backlog = 24 * mib / 4096
	r := rand.New(rand.NewPCG(1, 2))
	var s pendingSet
	var fifo []*pendingWrite
	for range backlog {
		off := r.Int64N(256*mib/4096) * 4096
		fifo = append(fifo, s.add(off, off+4096, nil))
	}
	b.ResetTimer()
	for range b.N {
		off := r.Int64N(256*mib/4096) * 4096
		fifo = append(fifo, s.add(off, off+4096, nil))
		s.remove(fifo[0])
		fifo = fifo[1:]
	}
}
