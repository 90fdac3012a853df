package blockdev

import (
	"cmp"
	"math"
	"slices"
)

// pendingWrite is a journaled change not yet applied to the image. Changes
// to overlapping extents are applied in journal order: each waits for the
// earlier pending changes it overlaps.
type pendingWrite struct {
	off, end int64
	data     []byte // nil: the range reads as zeros (discard, write-zeroes)
	applied  chan struct{}
	waitFor  []chan struct{}
	seq      uint64 // journal order within the set
}

// pendingSet is the ordered set of pending writes. Its methods are called
// with Device.mu held.
//
// The changes are indexed by the 1 MiB regions (buckets) they touch:
// thousands of small writes may be pending (applies linger for more to
// combine, and the default pending bound, 64 MiB, is 16384 4 KiB writes;
// AckWriteBack keeps the backlog full), and with one list
// every write scanned all of them under the device's lock and every apply
// shifted the rest of the list (a few percent of the CPU in a 4K
// random-write profile, growing with the backlog). A change spanning more
// than maxPendingBuckets buckets (a large discard) is kept in a list of its
// own that every lookup scans.
type pendingSet struct {
	buckets map[int64][]*pendingWrite
	wide    []*pendingWrite
	seq     uint64
}

const (
	pendingBucketShift = 20
	maxPendingBuckets  = 64
)

// bucketRange is the buckets [first, last] that [off, end) touches; ok is
// false for an empty extent and for one spanning too many buckets.
func bucketRange(off, end int64) (first, last int64, ok bool) {
	if end <= off {
		return 0, 0, false
	}
	first, last = off>>pendingBucketShift, (end-1)>>pendingBucketShift
	return first, last, last-first < maxPendingBuckets
}

// add registers a change and records which earlier changes it must follow.
func (s *pendingSet) add(off, end int64, data []byte) *pendingWrite {
	s.seq++
	w := &pendingWrite{off: off, end: end, data: data, applied: make(chan struct{}), seq: s.seq}
	s.visit(off, end, func(p *pendingWrite) { w.waitFor = append(w.waitFor, p.applied) })
	first, last, ok := bucketRange(off, end)
	if !ok {
		s.wide = append(s.wide, w)
		return w
	}
	if s.buckets == nil {
		s.buckets = map[int64][]*pendingWrite{}
	}
	for b := first; b <= last; b++ {
		s.buckets[b] = append(s.buckets[b], w)
	}
	return w
}

// remove drops an applied change and wakes those that follow it.
func (s *pendingSet) remove(w *pendingWrite) {
	first, last, ok := bucketRange(w.off, w.end)
	if !ok {
		s.wide = deleteWrite(s.wide, w)
	} else {
		for b := first; b <= last; b++ {
			if l := deleteWrite(s.buckets[b], w); len(l) > 0 {
				s.buckets[b] = l
			} else {
				delete(s.buckets, b)
			}
		}
	}
	close(w.applied)
}

// deleteWrite removes w from l.
func deleteWrite(l []*pendingWrite, w *pendingWrite) []*pendingWrite {
	if i := slices.Index(l, w); i >= 0 {
		return slices.Delete(l, i, i+1)
	}
	return l
}

// visit calls fn once for each pending change overlapping [off, end), in
// no particular order.
func (s *pendingSet) visit(off, end int64, fn func(*pendingWrite)) {
	overlaps := func(p *pendingWrite) bool { return p.off < end && off < p.end }
	for _, p := range s.wide {
		if overlaps(p) {
			fn(p)
		}
	}
	if len(s.buckets) == 0 || end < off {
		return
	}
	// An empty extent [off, off) still "overlaps" a change strictly
	// around off, as the predicate says: its bucket is off's.
	first := off >> pendingBucketShift
	last := max(first, (end-1)>>pendingBucketShift)
	if last-first >= int64(len(s.buckets)) {
		// A wide query (a large discard, a drain): the buckets that
		// exist are fewer than those it spans.
		for b, l := range s.buckets {
			if b >= first && b <= last {
				s.visitBucket(b, first, l, overlaps, fn)
			}
		}
		return
	}
	for b := first; b <= last; b++ {
		if l, ok := s.buckets[b]; ok {
			s.visitBucket(b, first, l, overlaps, fn)
		}
	}
}

// visitBucket calls fn for the changes of bucket b overlapping the query,
// each in the first bucket the query and the change share (a change in
// several buckets is found in each).
func (s *pendingSet) visitBucket(b, first int64, l []*pendingWrite, overlaps func(*pendingWrite) bool, fn func(*pendingWrite)) {
	for _, p := range l {
		if overlaps(p) && b == max(first, p.off>>pendingBucketShift) {
			fn(p)
		}
	}
}

// overlapping returns the pending changes overlapping [off, end), in
// journal order, for a read to lay over what it read from the image.
func (s *pendingSet) overlapping(off, end int64) []*pendingWrite {
	var out []*pendingWrite
	s.visit(off, end, func(p *pendingWrite) { out = append(out, p) })
	slices.SortFunc(out, func(a, b *pendingWrite) int { return cmp.Compare(a.seq, b.seq) })
	return out
}

// all returns every pending change, in no particular order: the changes
// overlapping every offset there is.
func (s *pendingSet) all() []*pendingWrite {
	var out []*pendingWrite
	s.visit(math.MinInt64, math.MaxInt64, func(p *pendingWrite) { out = append(out, p) })
	return out
}

// overlay copies the changes onto p, which holds [off, off+len(p)).
func overlay(p []byte, off int64, ws []*pendingWrite) {
	end := off + int64(len(p))
	for _, w := range ws {
		lo, hi := max(off, w.off), min(end, w.end)
		if lo >= hi {
			continue
		}
		dst := p[lo-off : hi-off]
		if w.data == nil {
			clear(dst)
		} else {
			copy(dst, w.data[lo-w.off:hi-w.off])
		}
	}
}
