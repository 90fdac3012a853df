package blockdev

// pendingWrite is a journaled change not yet applied to the image. Changes
// to overlapping extents are applied in journal order: each waits for the
// earlier pending changes it overlaps.
type pendingWrite struct {
	off, end int64
	data     []byte // nil: the range reads as zeros (discard, write-zeroes)
	applied  chan struct{}
	waitFor  []chan struct{}
}

// pendingSet is the ordered set of pending writes. Its methods are called
// with Device.mu held.
type pendingSet struct {
	list []*pendingWrite // in journal order
}

// add registers a change and records which earlier changes it must follow.
func (s *pendingSet) add(off, end int64, data []byte) *pendingWrite {
	w := &pendingWrite{off: off, end: end, data: data, applied: make(chan struct{})}
	for _, p := range s.list {
		if p.off < end && off < p.end {
			w.waitFor = append(w.waitFor, p.applied)
		}
	}
	s.list = append(s.list, w)
	return w
}

// remove drops an applied change and wakes those that follow it.
func (s *pendingSet) remove(w *pendingWrite) {
	for i, p := range s.list {
		if p == w {
			s.list = append(s.list[:i], s.list[i+1:]...)
			break
		}
	}
	close(w.applied)
}

// overlapping returns the pending changes overlapping [off, end), in
// journal order, for a read to lay over what it read from the image.
func (s *pendingSet) overlapping(off, end int64) []*pendingWrite {
	var out []*pendingWrite
	for _, p := range s.list {
		if p.off < end && off < p.end {
			out = append(out, p)
		}
	}
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
