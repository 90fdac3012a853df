package journal

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"k8s.io/klog/v2"
)

// ReplayEntry is an entry handed to a replay handler.
type ReplayEntry struct {
	Entry
	// CommitTid is what the handler passes to Committed once it applied
	// the entry.
	CommitTid uint64
	// ObjectNumber is the data object the entry was read from.
	ObjectNumber uint64
}

// ReplayStats describe a replay.
type ReplayStats struct {
	Entries      int    // entries handed to the handler
	Bytes        int64  // payload bytes handed to the handler
	Objects      int    // data objects read
	StaleEntries int    // entries of superseded tags skipped
	Dropped      int    // entries past the end of the consistent sequence (never acknowledged)
	TornTail     string // "object@offset" of a torn tail that was ignored, if any
}

// CorruptionError reports journal data that cannot be a torn tail: an
// unreadable entry followed by readable ones, or in an object that is not
// the newest of its splay offset. Nothing was handed to the handler.
type CorruptionError struct {
	Object string
	Offset int64
	Err    error
}

func (e *CorruptionError) Error() string {
	return fmt.Sprintf("journal object %s is corrupt at offset %d: %v", e.Object, e.Offset, e.Err)
}

func (e *CorruptionError) Unwrap() error { return e.Err }

// splayPlayer holds the decoded, not yet replayed entries of one splay
// offset's current object.
type splayPlayer struct {
	object  uint64
	entries []ReplayEntry
	done    bool // no later object of this splay offset exists
}

// Replay reads every entry past this client's commit position, in journal
// order, and calls fn for each. It follows Ceph's rules: entries of a
// superseded tag are skipped; a new tag begins at entry 0; entry tids of a
// tag are consecutive (a hole inside an object is corruption: ErrGap); the
// sequence ends at the first splay offset with nothing left, and what lies
// beyond it was never acknowledged (Dropped); an unreadable entry is
// tolerated only as the torn tail of the newest object.
//
// The whole journal is read and checked before fn is first called, so a
// corrupt journal changes nothing. The caller applies each entry and then
// reports it with Committed(e.CommitTid). Replay must run before the first
// Append of this journaler.
// ReplayOptions refine a replay.
type ReplayOptions struct {
	// EpochEnd maps a tag to the last entry tid of its epoch, when a newer
	// epoch recorded where it took over (librbd's tag predecessor). Entries
	// of the tag beyond it were written by a writer that had already lost
	// ownership and are never replayed (seed 002's multi-writer hazard).
	EpochEnd map[uint64]uint64
}

func (j *Journaler) Replay(ctx context.Context, opts ReplayOptions, fn func(ctx context.Context, e ReplayEntry) error) (ReplayStats, error) {
	var st ReplayStats
	j.mu.Lock()
	if _, ok := j.clients[j.clientID]; !ok {
		j.mu.Unlock()
		return st, fmt.Errorf("journal %s client %q: %w", j.id, j.clientID, ErrClientNotRegistered)
	}
	w := uint64(j.splayWidth)
	minSet, activeSet := j.minimumSet, j.activeSet
	commit := clonePosition(j.commitPos)
	j.mu.Unlock()

	r := replayer{j: j, ctx: ctx, w: w, activeSet: activeSet, st: &st}
	positions := commit.ObjectPositions
	haveCommit := len(positions) > 0
	var commitTag, commitEntry uint64
	if haveCommit {
		commitTag, commitEntry = positions[0].TagTid, positions[0].EntryTid
	}
	committed := func(e Entry) bool {
		return haveCommit && (e.TagTid < commitTag || (e.TagTid == commitTag && e.EntryTid <= commitEntry))
	}
	r.players = make([]*splayPlayer, w)
	for i := uint64(0); i < w; i++ {
		start := minSet*w + i
		for _, p := range positions {
			if p.ObjectNumber%w == i && p.ObjectNumber > start {
				start = p.ObjectNumber
			}
		}
		p := &splayPlayer{object: start}
		r.players[i] = p
		if err := r.load(p, committed); err != nil {
			return st, err
		}
	}

	// Order the entries (JournalPlayer's round robin over splay offsets).
	var seq []ReplayEntry
	lastTid := map[uint64]uint64{}
	var activeTag uint64
	haveActive := false
	if haveCommit {
		lastTid[commitTag] = commitEntry
		activeTag, haveActive = commitTag, true
	}
	var prunedTag uint64
	havePruned := false
	prune := func(tag uint64) {
		if !havePruned || tag > prunedTag {
			prunedTag, havePruned = tag, true
		}
		for _, p := range r.players {
			kept := p.entries[:0]
			for _, e := range p.entries {
				if e.TagTid == tag {
					st.Dropped++
				} else {
					kept = append(kept, e)
				}
			}
			p.entries = kept
		}
	}
	splay := uint64(0)
	if haveCommit {
		splay = (positions[0].ObjectNumber + 1) % w
	} else {
		splay = r.oldestSplay()
	}
	expectFirst := false
	for {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		p := r.players[splay]
		if len(p.entries) == 0 {
			if err := r.next(p, committed); err != nil {
				return st, err
			}
		}
		if len(p.entries) == 0 {
			// Nothing more in sequence. Whatever remains of the active tag
			// lies past a hole and was never acknowledged.
			if haveActive {
				prune(activeTag)
			}
			if splay == 0 {
				break
			}
			splay = 0
			continue
		}
		e := p.entries[0]
		// Staleness first: a later object can bring more entries of a tag
		// that was already pruned.
		if end, ended := opts.EpochEnd[e.TagTid]; (ended && e.EntryTid > end) ||
			(haveActive && e.TagTid < activeTag) || (havePruned && e.TagTid <= prunedTag) {
			// An older epoch's leftovers: never replay them over newer data.
			before := st.Dropped
			prune(e.TagTid)
			st.StaleEntries += st.Dropped - before
			st.Dropped = before
			continue
		}
		if expectFirst && e.EntryTid != 0 {
			return st, fmt.Errorf("journal %s: %w: object %s: tag %d starts at entry %d, want 0",
				j.id, ErrGap, j.DataOID(e.ObjectNumber), e.TagTid, e.EntryTid)
		}
		switch {
		case !haveActive:
			activeTag, haveActive = e.TagTid, true
		case e.TagTid > activeTag:
			// A newer epoch started: the old one is finished.
			prune(activeTag)
			if e.EntryTid != 0 {
				splay, expectFirst = 0, true
				continue
			}
			activeTag = e.TagTid
		}
		p.entries = p.entries[1:]
		expectFirst = false
		splay = (splay + 1) % w
		if last, ok := lastTid[e.TagTid]; ok && e.EntryTid != last+1 {
			return st, fmt.Errorf("journal %s: %w: object %s: tag %d entry %d follows entry %d",
				j.id, ErrGap, j.DataOID(e.ObjectNumber), e.TagTid, e.EntryTid, last)
		}
		lastTid[e.TagTid] = e.EntryTid
		seq = append(seq, e)
	}

	// Everything checked: hand the entries over.
	j.mu.Lock()
	for tag, tid := range lastTid {
		if cur, ok := j.lastEntryTid[tag]; !ok || tid > cur {
			j.lastEntryTid[tag] = tid
		}
	}
	for i := range seq {
		seq[i].CommitTid = j.commits.allocate(seq[i].ObjectNumber, seq[i].TagTid, seq[i].EntryTid).tid
		j.lag.add(seq[i].TagTid, seq[i].EntryTid, len(seq[i].Data))
	}
	j.mu.Unlock()
	for _, e := range seq {
		if err := fn(ctx, e); err != nil {
			return st, fmt.Errorf("journal %s: replay entry tag %d tid %d: %w", j.id, e.TagTid, e.EntryTid, err)
		}
		st.Entries++
		st.Bytes += int64(len(e.Data))
	}
	if st.Entries > 0 || st.Dropped > 0 || st.StaleEntries > 0 || st.TornTail != "" {
		klog.InfoS("Journal replayed", "journal", j.id, "client", j.clientID, "entries", st.Entries,
			"bytes", st.Bytes, "objects", st.Objects, "stale", st.StaleEntries, "dropped", st.Dropped, "tornTail", st.TornTail)
	}
	return st, nil
}

type replayer struct {
	j         *Journaler
	ctx       context.Context
	w         uint64
	activeSet uint64
	players   []*splayPlayer
	st        *ReplayStats
}

// oldestSplay picks where to start without a commit position: the splay
// whose first entry is the oldest.
func (r *replayer) oldestSplay() uint64 {
	best, found := uint64(0), false
	var bt, be uint64
	for i, p := range r.players {
		if len(p.entries) == 0 {
			continue
		}
		e := p.entries[0]
		if !found || e.TagTid < bt || (e.TagTid == bt && e.EntryTid < be) {
			best, bt, be, found = uint64(i), e.TagTid, e.EntryTid, true
		}
	}
	return best
}

// next moves p to the next object of its splay offset that exists, up to
// the active set (a set can be missing for a splay offset that had nothing
// to write while it was active).
func (r *replayer) next(p *splayPlayer, committed func(Entry) bool) error {
	for !p.done && len(p.entries) == 0 {
		if p.object+r.w > r.activeSet*r.w+r.w-1 {
			p.done = true
			return nil
		}
		p.object += r.w
		if err := r.load(p, committed); err != nil {
			return err
		}
	}
	return nil
}

// load reads p.object and decodes its entries, dropping committed ones.
func (r *replayer) load(p *splayPlayer, committed func(Entry) bool) error {
	oid := r.j.DataOID(p.object)
	op := &objstore.ReadOp{}
	res := op.Read(0, 0)
	ctx, cancel := r.j.opCtx(r.ctx)
	err := r.j.dataPool.Read(ctx, oid, op)
	cancel()
	if errors.Is(err, objstore.ErrNotFound) {
		return r.next(p, committed)
	}
	if err != nil {
		return fmt.Errorf("journal %s: read %s: %w", r.j.id, oid, err)
	}
	r.st.Objects++
	data := res.Data()
	for off := 0; off < len(data); {
		if z := zeroPadding(data[off:]); z > 0 {
			// Octopus+ clusters pad each append batch with zeros to an
			// 8-byte boundary; Ceph's ObjectPlayer skips them too.
			off += z
			continue
		}
		e, n, err := DecodeEntry(data[off:])
		if err != nil {
			return r.badEntry(p, oid, data, off, err)
		}
		off += n
		if committed(e) {
			continue
		}
		re := ReplayEntry{Entry: e, ObjectNumber: p.object}
		// A re-sent batch can repeat an entry; the later copy wins, as in
		// Ceph's ObjectPlayer.
		if k := len(p.entries) - 1; k >= 0 && p.entries[k].TagTid == e.TagTid && p.entries[k].EntryTid == e.EntryTid {
			p.entries[k] = re
			continue
		}
		p.entries = append(p.entries, re)
	}
	if len(p.entries) == 0 {
		return r.next(p, committed)
	}
	return nil
}

// badEntry decides whether an unreadable entry at off is a torn tail
// (tolerated: the rest of the object is ignored) or corruption.
func (r *replayer) badEntry(p *splayPlayer, oid string, data []byte, off int, cause error) error {
	corrupt := &CorruptionError{Object: oid, Offset: int64(off), Err: cause}
	if laterEntry(data, off+1) {
		return corrupt
	}
	// Only the newest object of the splay offset can have a torn tail.
	for n := p.object + r.w; n <= r.activeSet*r.w+r.w-1; n += r.w {
		op := &objstore.ReadOp{}
		op.Stat()
		ctx, cancel := r.j.opCtx(r.ctx)
		err := r.j.dataPool.Read(ctx, r.j.DataOID(n), op)
		cancel()
		if err == nil {
			return corrupt
		}
		if !errors.Is(err, objstore.ErrNotFound) {
			return fmt.Errorf("journal %s: stat %s: %w", r.j.id, r.j.DataOID(n), err)
		}
	}
	r.st.TornTail = fmt.Sprintf("%s@%d", oid, off)
	klog.InfoS("Journal torn tail ignored", "journal", r.j.id, "object", oid, "offset", off, "bytes", len(data)-off, "cause", cause)
	return nil
}

// laterEntry reports whether a valid entry starts anywhere at or after from.
func laterEntry(data []byte, from int) bool {
	var pre [8]byte
	binary.LittleEndian.PutUint64(pre[:], Preamble)
	for from < len(data) {
		i := bytes.Index(data[from:], pre[:])
		if i < 0 {
			return false
		}
		if _, _, err := DecodeEntry(data[from+i:]); err == nil {
			return true
		}
		from += i + 1
	}
	return false
}

// zeroPadding returns the length of the run of zero bytes at the start of b.
// No entry starts with a zero byte (the preamble's low byte is 0x93).
func zeroPadding(b []byte) int {
	n := 0
	for n < len(b) && b[n] == 0 {
		n++
	}
	if n == 0 {
		return 0
	}
	return n
}
