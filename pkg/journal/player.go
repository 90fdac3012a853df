package journal

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
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

// ReplayOptions refine a replay.
type ReplayOptions struct {
	// EpochEnd maps a tag to the last entry tid of its epoch, when a newer
	// epoch recorded where it took over (librbd's tag predecessor). Entries
	// of the tag beyond it were written by a writer that had already lost
	// ownership and are never replayed (seed 002's multi-writer hazard).
	EpochEnd map[uint64]uint64
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
//
// Replay reads the objects first (readReplayObjects) and leaves the
// decisions to orderReplay, a pure function.
func (j *Journaler) Replay(ctx context.Context, opts ReplayOptions, fn func(ctx context.Context, e ReplayEntry) error) (ReplayStats, error) {
	var st ReplayStats
	j.mu.Lock()
	if _, ok := j.clients[j.clientID]; !ok {
		j.mu.Unlock()
		return st, fmt.Errorf("journal %s client %q: %w", j.id, j.clientID, ErrClientNotRegistered)
	}
	in := replayInput{
		journal:    j.id,
		dataPrefix: j.dataPrefix,
		splayWidth: uint64(j.splayWidth),
		minSet:     j.minimumSet,
		activeSet:  j.activeSet,
		commit:     clonePosition(j.commitPos),
		epochEnd:   opts.EpochEnd,
	}
	j.mu.Unlock()

	var err error
	if in.objects, err = j.readReplayObjects(ctx, in); err != nil {
		return st, err
	}
	plan, err := orderReplay(in)
	st = plan.stats
	if plan.torn != nil {
		j.log.Info("Journal torn tail ignored", "journal", j.id, "object", plan.torn.Object, "offset", plan.torn.Offset,
			"bytes", in.objects[plan.tornObject].size-int(plan.torn.Offset), "cause", plan.torn.Err)
	}
	if err != nil {
		return st, err
	}

	// Everything checked: hand the entries over.
	seq := plan.entries
	j.mu.Lock()
	for tag, tid := range plan.lastTid {
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
		j.log.Info("Journal replayed", "journal", j.id, "client", j.clientID, "entries", st.Entries,
			"bytes", st.Bytes, "objects", st.Objects, "stale", st.StaleEntries, "dropped", st.Dropped, "tornTail", st.TornTail)
	}
	return st, nil
}

// readReplayObjects reads and decodes every data object a replay may visit:
// for each splay offset, from its start (replayStarts) up to the active set.
// A missing object is left out of the map.
func (j *Journaler) readReplayObjects(ctx context.Context, in replayInput) (map[uint64]replayObject, error) {
	objs := map[uint64]replayObject{}
	w := in.splayWidth
	for i, start := range replayStarts(w, in.minSet, in.commit) {
		for n := start; n <= in.activeSet*w+uint64(i); n += w {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			oid := j.DataOID(n)
			op := &objstore.ReadOp{}
			res := op.Read(0, 0)
			octx, cancel := j.opCtx(ctx)
			err := j.dataPool.Read(octx, oid, op)
			cancel()
			if errors.Is(err, objstore.ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("journal %s: read %s: %w", j.id, oid, err)
			}
			objs[n] = decodeReplayObject(oid, res.Data())
		}
	}
	return objs, nil
}

// replayObject is one data object as read for a replay.
type replayObject struct {
	// entries are the object's entries up to the first unreadable one, in
	// object order.
	entries []Entry
	// bad is the first unreadable entry, if any; badLast tells that no
	// readable entry follows it (so it may be a torn tail).
	bad     *CorruptionError
	badLast bool
	size    int // the object's size in bytes
}

// decodeReplayObject decodes the entries of data object oid.
func decodeReplayObject(oid string, data []byte) replayObject {
	o := replayObject{size: len(data)}
	for off := 0; off < len(data); {
		if z := zeroPadding(data[off:]); z > 0 {
			// Octopus+ clusters pad each append batch with zeros to an
			// 8-byte boundary; Ceph's ObjectPlayer skips them too.
			off += z
			continue
		}
		e, n, err := DecodeEntry(data[off:])
		if err != nil {
			o.bad = &CorruptionError{Object: oid, Offset: int64(off), Err: err}
			o.badLast = !laterEntry(data, off+1)
			return o
		}
		off += n
		o.entries = append(o.entries, e)
	}
	return o
}

// replayInput is everything a replay is decided from.
type replayInput struct {
	journal    string // the journal id (for error messages)
	dataPrefix string // data objects are dataPrefix + object number
	splayWidth uint64
	minSet     uint64
	activeSet  uint64
	commit     clsjournal.ObjectSetPosition // this client's commit position
	epochEnd   map[uint64]uint64            // ReplayOptions.EpochEnd
	// objects are the data objects that exist, by object number.
	objects map[uint64]replayObject
}

func (in *replayInput) oid(n uint64) string { return fmt.Sprintf("%s%d", in.dataPrefix, n) }

// replayPlan is what orderReplay decided.
type replayPlan struct {
	// entries are the entries to apply, in order (CommitTid not yet set).
	entries []ReplayEntry
	// lastTid is the last entry tid seen of each tag.
	lastTid map[uint64]uint64
	// stats has Objects, StaleEntries, Dropped and TornTail filled in.
	stats ReplayStats
	// torn is the torn tail that was ignored, if any, in object tornObject.
	torn       *CorruptionError
	tornObject uint64
}

// replayStarts returns, for each splay offset, the first object a replay
// reads: the one holding the offset's commit position, else the first of
// the minimum set.
func replayStarts(w, minSet uint64, commit clsjournal.ObjectSetPosition) []uint64 {
	starts := make([]uint64, w)
	for i := uint64(0); i < w; i++ {
		start := minSet*w + i
		for _, p := range commit.ObjectPositions {
			if p.ObjectNumber%w == i && p.ObjectNumber > start {
				start = p.ObjectNumber
			}
		}
		starts[i] = start
	}
	return starts
}

// orderReplay orders and checks the entries of a replay without any I/O:
// given the objects read, the commit position and the epoch ends, it returns
// the entries to apply in journal order (JournalPlayer's round robin over
// splay offsets), or ErrGap / a *CorruptionError. The rules are Replay's.
func orderReplay(in replayInput) (replayPlan, error) {
	w := in.splayWidth
	r := replayer{in: &in, w: w}
	positions := in.commit.ObjectPositions
	haveCommit := len(positions) > 0
	var commitTag, commitEntry uint64
	if haveCommit {
		commitTag, commitEntry = positions[0].TagTid, positions[0].EntryTid
	}
	r.committed = func(e Entry) bool {
		return haveCommit && (e.TagTid < commitTag || (e.TagTid == commitTag && e.EntryTid <= commitEntry))
	}
	st := &r.plan.stats
	r.players = make([]*splayPlayer, w)
	for i, start := range replayStarts(w, in.minSet, in.commit) {
		p := &splayPlayer{object: start}
		r.players[i] = p
		if err := r.load(p); err != nil {
			return r.plan, err
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
		p := r.players[splay]
		if len(p.entries) == 0 {
			if err := r.next(p); err != nil {
				return r.plan, err
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
		if end, ended := in.epochEnd[e.TagTid]; (ended && e.EntryTid > end) ||
			(haveActive && e.TagTid < activeTag) || (havePruned && e.TagTid <= prunedTag) {
			// An older epoch's leftovers: never replay them over newer data.
			before := st.Dropped
			prune(e.TagTid)
			st.StaleEntries += st.Dropped - before
			st.Dropped = before
			continue
		}
		if expectFirst && e.EntryTid != 0 {
			return r.plan, fmt.Errorf("journal %s: %w: object %s: tag %d starts at entry %d, want 0",
				in.journal, ErrGap, in.oid(e.ObjectNumber), e.TagTid, e.EntryTid)
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
			return r.plan, fmt.Errorf("journal %s: %w: object %s: tag %d entry %d follows entry %d",
				in.journal, ErrGap, in.oid(e.ObjectNumber), e.TagTid, e.EntryTid, last)
		}
		lastTid[e.TagTid] = e.EntryTid
		seq = append(seq, e)
	}
	r.plan.entries, r.plan.lastTid = seq, lastTid
	return r.plan, nil
}

type replayer struct {
	in        *replayInput
	w         uint64
	committed func(Entry) bool
	players   []*splayPlayer
	plan      replayPlan
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
func (r *replayer) next(p *splayPlayer) error {
	for !p.done && len(p.entries) == 0 {
		if p.object+r.w > r.in.activeSet*r.w+r.w-1 {
			p.done = true
			return nil
		}
		p.object += r.w
		if err := r.load(p); err != nil {
			return err
		}
	}
	return nil
}

// load takes p.object's entries, dropping committed ones.
func (r *replayer) load(p *splayPlayer) error {
	obj, ok := r.in.objects[p.object]
	if !ok {
		return r.next(p)
	}
	r.plan.stats.Objects++
	for _, e := range obj.entries {
		if r.committed(e) {
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
	if obj.bad != nil {
		return r.badEntry(p, obj)
	}
	if len(p.entries) == 0 {
		return r.next(p)
	}
	return nil
}

// badEntry decides whether the unreadable entry of p's object is a torn
// tail (tolerated: the rest of the object is ignored) or corruption.
func (r *replayer) badEntry(p *splayPlayer, obj replayObject) error {
	if !obj.badLast {
		return obj.bad
	}
	// Only the newest object of the splay offset can have a torn tail.
	for n := p.object + r.w; n <= r.in.activeSet*r.w+r.w-1; n += r.w {
		if _, ok := r.in.objects[n]; ok {
			return obj.bad
		}
	}
	r.plan.stats.TornTail = fmt.Sprintf("%s@%d", obj.bad.Object, obj.bad.Offset)
	r.plan.torn, r.plan.tornObject = obj.bad, p.object
	return nil
}

// TornTail returns where the torn tail of journal data object data starts
// (its first unreadable entry, if no readable entry follows it: what a
// replay ignores), or -1 if it has none. A writer that appends lazily cuts
// it off before appending (pkg/extentlog), since a readable entry after it
// would make the object corrupt.
func TornTail(data []byte) int {
	o := decodeReplayObject("", data)
	if o.bad == nil || !o.badLast {
		return -1
	}
	return int(o.bad.Offset)
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
