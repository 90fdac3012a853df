package journal

import (
	"errors"
	"fmt"
	"reflect"
	"testing"

	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
)

// ent is an entry of tag/tid whose payload names it.
func ent(tag, tid uint64) Entry {
	return Entry{TagTid: tag, EntryTid: tid, Data: []byte(fmt.Sprintf("%d/%d", tag, tid))}
}

// obj is a data object holding entries.
func obj(es ...Entry) replayObject { return replayObject{entries: es} }

// torn is obj followed by an unreadable entry; last tells that no readable
// entry follows it.
func torn(last bool, es ...Entry) replayObject {
	o := obj(es...)
	o.bad = &CorruptionError{Object: "x", Offset: 100, Err: ErrTruncated}
	o.badLast = last
	return o
}

func commitAt(object, tag, tid uint64) clsjournal.ObjectSetPosition {
	return clsjournal.ObjectSetPosition{ObjectPositions: []clsjournal.ObjectPosition{{ObjectNumber: object, TagTid: tag, EntryTid: tid}}}
}

// TestOrderReplay covers the rules of Replay's ordering and checking, one
// decision per case, without any I/O.
func TestOrderReplay(t *testing.T) {
	type tt = [2]uint64 // tag, tid
	for _, c := range []struct {
		name      string
		w         uint64
		activeSet uint64
		minSet    uint64
		commit    clsjournal.ObjectSetPosition
		epochEnd  map[uint64]uint64
		objects   map[uint64]replayObject
		want      []tt          // entries to apply, in order
		wantObjs  []uint64      // the object each wanted entry came from (nil: unchecked)
		payloads  map[tt]string // payloads to check, by entry
		stale     int
		dropped   int
		tornTail  bool
		wantErr   error // errors.Is target
		corrupt   bool  // a *CorruptionError
	}{
		{
			name: "empty journal", w: 4,
		},
		{
			name: "splay interleaving: round robin over the offsets of a set, then the next set", w: 2, activeSet: 1,
			objects: map[uint64]replayObject{
				0: obj(ent(1, 0), ent(1, 2)),
				1: obj(ent(1, 1), ent(1, 3)),
				2: obj(ent(1, 4)),
				3: obj(ent(1, 5)),
			},
			want:     []tt{{1, 0}, {1, 1}, {1, 2}, {1, 3}, {1, 4}, {1, 5}},
			wantObjs: []uint64{0, 1, 0, 1, 2, 3},
		},
		{
			name: "without a commit position replay starts at the oldest splay offset", w: 3,
			objects: map[uint64]replayObject{
				0: obj(ent(1, 3)),
				1: obj(ent(1, 1), ent(1, 4)),
				2: obj(ent(1, 2)),
			},
			// Set 0's offsets 1, 2, 0 hold tids 1..3 and offset 1 tid 4:
			// the sequence starts at the oldest first entry (offset 1).
			want: []tt{{1, 1}, {1, 2}, {1, 3}, {1, 4}},
		},
		{
			name: "entries up to the commit position are skipped", w: 2, activeSet: 1,
			commit: commitAt(1, 1, 3),
			objects: map[uint64]replayObject{
				0: obj(ent(1, 0), ent(1, 2)),
				1: obj(ent(1, 1), ent(1, 3)),
				2: obj(ent(1, 4)),
				3: obj(ent(1, 5)),
			},
			want:     []tt{{1, 4}, {1, 5}},
			wantObjs: []uint64{2, 3},
		},
		{
			name: "objects before the commit position's object are not read", w: 1, activeSet: 2,
			commit: commitAt(1, 1, 1),
			objects: map[uint64]replayObject{
				0: obj(ent(9, 0)), // would be stale/odd if it were read
				1: obj(ent(1, 0), ent(1, 1)),
				2: obj(ent(1, 2)),
			},
			want: []tt{{1, 2}},
		},
		{
			name: "a re-sent entry counts once, the later copy wins", w: 1,
			objects: map[uint64]replayObject{
				0: obj(ent(1, 0), ent(1, 1), Entry{TagTid: 1, EntryTid: 1, Data: []byte("again")}, ent(1, 2)),
			},
			want:     []tt{{1, 0}, {1, 1}, {1, 2}},
			payloads: map[tt]string{{1, 1}: "again"},
		},
		{
			name: "a new tag takes over: the older tag's later entries are stale", w: 1, activeSet: 1,
			objects: map[uint64]replayObject{
				0: obj(ent(1, 0), ent(1, 1), ent(2, 0)),
				1: obj(ent(1, 2), ent(1, 3), ent(2, 1)),
			},
			want:  []tt{{1, 0}, {1, 1}, {2, 0}, {2, 1}},
			stale: 2,
		},
		{
			name: "entries of a tag older than the commit position's count as committed", w: 1,
			commit: commitAt(0, 5, 0),
			objects: map[uint64]replayObject{
				0: obj(ent(5, 0), ent(4, 7), ent(5, 1)),
			},
			want: []tt{{5, 1}},
		},
		{
			name: "entries past a tag's epoch end are stale", w: 1,
			epochEnd: map[uint64]uint64{1: 1},
			objects: map[uint64]replayObject{
				0: obj(ent(1, 0), ent(1, 1), ent(1, 2), ent(1, 3)),
			},
			want:  []tt{{1, 0}, {1, 1}},
			stale: 2,
		},
		{
			name: "the sequence ends at the first empty splay offset: what lies beyond was never acknowledged", w: 2, activeSet: 1,
			objects: map[uint64]replayObject{
				// offset 0 has nothing after tid 0: tid 2 was never
				// written, so tid 3 was never acknowledged
				0: obj(ent(1, 0)),
				1: obj(ent(1, 1), ent(1, 3)),
				3: obj(ent(1, 5)), // never reached
			},
			want:    []tt{{1, 0}, {1, 1}},
			dropped: 1,
		},
		{
			name: "a hole inside an object is a gap", w: 1,
			objects: map[uint64]replayObject{
				0: obj(ent(1, 0), ent(1, 1), ent(1, 3)),
			},
			wantErr: ErrGap,
		},
		{
			name: "a tag continuing after the commit position with a hole is a gap", w: 1,
			commit: commitAt(0, 1, 1),
			objects: map[uint64]replayObject{
				0: obj(ent(1, 0), ent(1, 1), ent(1, 4)),
			},
			wantErr: ErrGap,
		},
		{
			name: "a new tag that does not start at entry 0 is a gap", w: 2,
			objects: map[uint64]replayObject{
				0: obj(ent(1, 0), ent(2, 1)),
				1: obj(ent(1, 1), ent(2, 2)),
			},
			wantErr: ErrGap,
		},
		{
			name: "a torn tail in the newest object stops that object", w: 1, activeSet: 1,
			objects: map[uint64]replayObject{
				0: obj(ent(1, 0), ent(1, 1)),
				1: torn(true, ent(1, 2)),
			},
			want:     []tt{{1, 0}, {1, 1}, {1, 2}},
			tornTail: true,
		},
		{
			name: "a torn tail ends the sequence: later entries of other offsets are dropped", w: 2,
			objects: map[uint64]replayObject{
				0: torn(true, ent(1, 0)),
				1: obj(ent(1, 1), ent(1, 3)),
			},
			want:     []tt{{1, 0}, {1, 1}},
			dropped:  1,
			tornTail: true,
		},
		{
			name: "an unreadable entry in an object that is not the newest is corruption", w: 1, activeSet: 1,
			objects: map[uint64]replayObject{
				0: torn(true, ent(1, 0)),
				1: obj(ent(1, 1)),
			},
			corrupt: true,
		},
		{
			name: "an unreadable entry followed by readable ones is corruption", w: 1,
			objects: map[uint64]replayObject{
				0: torn(false, ent(1, 0)),
			},
			corrupt: true,
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			plan, err := orderReplay(replayInput{
				journal: "j", dataPrefix: "journal_data.1.j.", splayWidth: c.w,
				minSet: c.minSet, activeSet: c.activeSet, commit: c.commit, epochEnd: c.epochEnd, objects: c.objects,
			})
			var ce *CorruptionError
			switch {
			case c.wantErr != nil:
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("err %v, want %v", err, c.wantErr)
				}
				return
			case c.corrupt:
				if !errors.As(err, &ce) {
					t.Fatalf("err %v, want a CorruptionError", err)
				}
				return
			case err != nil:
				t.Fatalf("unexpected error: %v", err)
			}
			var got []tt
			var gotObjs []uint64
			for _, e := range plan.entries {
				got = append(got, tt{e.TagTid, e.EntryTid})
				gotObjs = append(gotObjs, e.ObjectNumber)
				if p, ok := c.payloads[tt{e.TagTid, e.EntryTid}]; ok && string(e.Data) != p {
					t.Errorf("entry %d/%d has payload %q, want %q", e.TagTid, e.EntryTid, e.Data, p)
				}
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("entries %v, want %v", got, c.want)
			}
			if c.wantObjs != nil && !reflect.DeepEqual(gotObjs, c.wantObjs) {
				t.Errorf("objects %v, want %v", gotObjs, c.wantObjs)
			}
			if plan.stats.StaleEntries != c.stale || plan.stats.Dropped != c.dropped {
				t.Errorf("stale %d dropped %d, want %d %d", plan.stats.StaleEntries, plan.stats.Dropped, c.stale, c.dropped)
			}
			if (plan.stats.TornTail != "") != c.tornTail || (plan.torn != nil) != c.tornTail {
				t.Errorf("torn tail %q, want one: %v", plan.stats.TornTail, c.tornTail)
			}
		})
	}
}

// TestDecodeReplayObject checks what the read phase hands orderReplay:
// entries up to the first unreadable one, zero padding skipped, and whether
// a readable entry follows the unreadable one.
func TestDecodeReplayObject(t *testing.T) {
	e0, e1 := ent(1, 0).AppendEncoded(nil), ent(1, 1).AppendEncoded(nil)
	cat := func(bs ...[]byte) []byte {
		var out []byte
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}
	garbage := []byte{0x93, 1, 2, 3}
	for _, c := range []struct {
		name    string
		data    []byte
		entries int
		bad     bool
		badLast bool
		badAt   int64
	}{
		{name: "clean", data: cat(e0, e1), entries: 2},
		{name: "zero padding between batches", data: cat(e0, make([]byte, 5), e1), entries: 2},
		{name: "torn tail", data: cat(e0, e1[:len(e1)-3]), entries: 1, bad: true, badLast: true, badAt: int64(len(e0))},
		{name: "garbage before a readable entry", data: cat(e0, garbage, e1), entries: 1, bad: true, badLast: false, badAt: int64(len(e0))},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := decodeReplayObject("obj", c.data)
			if len(o.entries) != c.entries || (o.bad != nil) != c.bad || o.size != len(c.data) {
				t.Fatalf("entries %d bad %v size %d, want %d %v %d", len(o.entries), o.bad, o.size, c.entries, c.bad, len(c.data))
			}
			if c.bad && (o.badLast != c.badLast || o.bad.Offset != c.badAt || o.bad.Object != "obj") {
				t.Fatalf("bad %+v last %v, want offset %d last %v", o.bad, o.badLast, c.badAt, c.badLast)
			}
		})
	}
}
