package journal

import (
	"sort"

	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
)

// ClientLag is how far a registered client's commit position is behind
// the newest entry this journaler knows of (for metrics: rbd-mirror's
// entries_behind_primary, and our own uncommitted entries).
type ClientLag struct {
	// ID is the journal client id (librbd's own is "", rbd-mirror peers
	// register under their mirror uuid).
	ID string
	// Own: ID is this journaler's client. Its lag is measured from the
	// commit position in memory (newer than the header's by at most the
	// commit age); every other client's from the header as last read.
	Own bool
	// Disconnected: the client is registered but no longer counts for
	// trimming (rbd-mirror disconnected a peer that fell too far behind).
	Disconnected bool
	// Entries are the entries past the client's commit position.
	Entries uint64
	// Bytes are their payload bytes. Only entries this journaler appended
	// or replayed since it was opened are counted: for a client behind
	// those, Bytes is a lower bound.
	Bytes uint64
}

// lagIndex keeps the cumulative payload bytes of the entries this
// journaler appended or replayed, per tag, so that the bytes past a
// commit position can be summed. Guarded by Journaler.mu. Entries every
// connected client committed are dropped (refresh), so it holds about what
// the journal holds.
type lagIndex struct {
	tags map[uint64]*tagIndex
}

type tagIndex struct {
	first uint64   // entry tid of cum[0]
	base  uint64   // cumulative bytes before entry first
	cum   []uint64 // cum[i]: cumulative bytes up to and including entry first+i
}

func (t *tagIndex) total() uint64 {
	if len(t.cum) == 0 {
		return 0
	}
	return t.cum[len(t.cum)-1] - t.base
}

// after returns the bytes of the entries past entry tid e of the tag.
func (t *tagIndex) after(e uint64) uint64 {
	if len(t.cum) == 0 {
		return 0
	}
	last := t.cum[len(t.cum)-1]
	switch {
	case e < t.first:
		return last - t.base
	case e-t.first >= uint64(len(t.cum)):
		return 0
	}
	return last - t.cum[e-t.first]
}

// add records entry tid e of tag with n payload bytes.
func (x *lagIndex) add(tag, e uint64, n int) {
	if x.tags == nil {
		x.tags = map[uint64]*tagIndex{}
	}
	t := x.tags[tag]
	if t == nil || e != t.first+uint64(len(t.cum)) {
		// New tag, or not the next entry (nothing to sum across a gap):
		// start over from this entry.
		t = &tagIndex{first: e}
		x.tags[tag] = t
	}
	prev := t.base
	if len(t.cum) > 0 {
		prev = t.cum[len(t.cum)-1]
	}
	t.cum = append(t.cum, prev+uint64(n))
}

// trim drops what every position in ps has passed: whole tags older than
// the oldest position's tag, and that tag's entries up to its entry.
func (x *lagIndex) trim(ps []clsjournal.ObjectPosition, anyEmpty bool) {
	if anyEmpty || len(ps) == 0 || len(x.tags) == 0 {
		return
	}
	oldest := ps[0]
	for _, p := range ps[1:] {
		if p.TagTid < oldest.TagTid || p.TagTid == oldest.TagTid && p.EntryTid < oldest.EntryTid {
			oldest = p
		}
	}
	for tag, t := range x.tags {
		switch {
		case tag < oldest.TagTid:
			delete(x.tags, tag)
		case tag == oldest.TagTid && oldest.EntryTid >= t.first:
			n := min(oldest.EntryTid-t.first+1, uint64(len(t.cum)))
			t.base = t.cum[n-1]
			t.cum = append([]uint64(nil), t.cum[n:]...)
			t.first += n
		}
	}
}

// trimLagLocked drops from the lag index what every connected client has
// committed (called after the clients were re-read).
func (j *Journaler) trimLagLocked() {
	commits, anyEmpty := j.connectedCommitsLocked()
	ps := make([]clsjournal.ObjectPosition, 0, len(commits))
	for _, c := range commits {
		ps = append(ps, c[0])
	}
	j.lag.trim(ps, anyEmpty)
}

// Lag returns, for every registered client, how far its commit position
// is behind the newest entry this journaler appended or replayed, sorted
// by client id. A client whose position is in a tag older than any this
// journaler saw is behind by at least what is reported.
func (j *Journaler) Lag() []ClientLag {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make([]ClientLag, 0, len(j.clients))
	for id, c := range j.clients {
		pos := c.CommitPosition
		own := id == j.clientID
		if own {
			pos = j.commitPos
		}
		l := ClientLag{ID: id, Own: own, Disconnected: c.State == clsjournal.ClientStateDisconnected}
		l.Entries, l.Bytes = j.behindLocked(pos)
		out = append(out, l)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out
}

// behindLocked counts the entries (and their bytes) past pos, whose newest
// object position is first (ObjectSetPosition order).
func (j *Journaler) behindLocked(pos clsjournal.ObjectSetPosition) (entries, bytes uint64) {
	var pt, pe uint64
	empty := len(pos.ObjectPositions) == 0
	if !empty {
		pt, pe = pos.ObjectPositions[0].TagTid, pos.ObjectPositions[0].EntryTid
	}
	for tag, last := range j.lastEntryTid {
		switch {
		case empty || tag > pt:
			entries += last + 1
		case tag == pt && last > pe:
			entries += last - pe
		}
	}
	for tag, t := range j.lag.tags {
		switch {
		case empty || tag > pt:
			bytes += t.total()
		case tag == pt:
			bytes += t.after(pe)
		}
	}
	return entries, bytes
}
