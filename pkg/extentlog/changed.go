package extentlog

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
)

// Position is a place in the log: the entry EntryTid of epoch (tag) Tag.
// Positions are ordered by tag, then entry: every new epoch (each open of
// the device) has a larger tag than the ones before it. The zero Position
// lies before every entry.
type Position struct {
	Tag, Entry uint64
}

// String formats p as "TAG:ENTRY" (what ParsePosition reads).
func (p Position) String() string { return fmt.Sprintf("%d:%d", p.Tag, p.Entry) }

// Less orders positions.
func (p Position) Less(q Position) bool {
	return p.Tag < q.Tag || (p.Tag == q.Tag && p.Entry < q.Entry)
}

// ParsePosition reads "TAG:ENTRY"; "" is the zero Position.
func ParsePosition(s string) (Position, error) {
	if s == "" {
		return Position{}, nil
	}
	t, e, ok := strings.Cut(s, ":")
	tag, err1 := strconv.ParseUint(t, 10, 64)
	entry, err2 := strconv.ParseUint(e, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return Position{}, fmt.Errorf("position %q: want TAG:ENTRY (two decimal integers, e.g. 3:117)", s)
	}
	return Position{Tag: tag, Entry: entry}, nil
}

// Extent is a byte range of the image.
type Extent struct {
	Offset, Length uint64
}

// Change is one logged change and where it is in the log.
type Change struct {
	Position Position
	Entry    Entry
}

// Changes is what ChangedExtents found.
type Changes struct {
	// Entries are the data changes in (from, to], in log order:
	// writes, discards, write-zeroes, and regions whose content is unknown
	// after a stop (KindUnknown: copy them whole).
	Entries []Change
	// Ops are the management operations in (from, to] (resize, ...), in
	// log order; Entry.Op holds each one's librbd event encoding. A
	// backup learns a size change here.
	Ops []Change
	// Extents are their extents, sorted and merged (adjacent and
	// overlapping ones joined): what an incremental backup copies.
	Extents []Extent
	// First and Last are the positions of the first and last entry the
	// consumer's retained log holds (zero if it holds none): Last is where
	// the next incremental listing starts.
	First, Last Position
}

// ErrNoConsumer: the consumer is not registered with the log.
var ErrNoConsumer = errors.New("extent log consumer not registered")

// consumerData is the client data of a consumer: no librbd client meta, so
// nothing takes it for an image or a mirror peer.
var consumerData = []byte("csi-rbdj extent log consumer")

// RegisterConsumer registers consumer with image id's extent log. From then
// on the log keeps every entry the consumer has not passed (AdvanceConsumer):
// a registered consumer is what lets ChangedExtents look back, the way a
// registered rbd-mirror peer holds back the trimming of an image journal.
// Registering again is not an error.
func RegisterConsumer(ctx context.Context, pool objstore.Pool, imageID, consumer string) error {
	if consumer == ImageClientID {
		return fmt.Errorf("register extent log consumer: the empty name is the image's own client")
	}
	j, err := Open(ctx, pool, imageID, consumer, journal.Settings{})
	if err != nil {
		return err
	}
	defer func() { _ = j.Close(context.WithoutCancel(ctx)) }()
	if _, err := j.Client(); err == nil {
		return nil
	}
	if err := j.RegisterClient(ctx, consumerData); err != nil && !errors.Is(err, objstore.ErrExists) {
		return fmt.Errorf("register extent log consumer %q of image %s: %w", consumer, imageID, err)
	}
	return nil
}

// UnregisterConsumer removes consumer; the log is then trimmed past it.
func UnregisterConsumer(ctx context.Context, pool objstore.Pool, imageID, consumer string) error {
	j, err := Open(ctx, pool, imageID, consumer, journal.Settings{})
	if err != nil {
		return err
	}
	defer func() { _ = j.Close(context.WithoutCancel(ctx)) }()
	if err := j.UnregisterClient(ctx); err != nil && !errors.Is(err, objstore.ErrNotFound) {
		return fmt.Errorf("unregister extent log consumer %q of image %s: %w", consumer, imageID, err)
	}
	return nil
}

// ChangedExtents lists the data changes logged in (from, to] (to zero: no
// upper bound) among the entries consumer has not passed. It reads the log
// while the device may be appending to it; it writes nothing.
func ChangedExtents(ctx context.Context, pool objstore.Pool, imageID, consumer string, from, to Position) (Changes, error) {
	var out Changes
	err := walk(ctx, pool, imageID, consumer, func(p Position, e Entry, _ uint64, _ *journal.Journaler) error {
		if out.First == (Position{}) {
			out.First = p
		}
		out.Last = p
		if !from.Less(p) || (to != (Position{}) && to.Less(p)) {
			return nil
		}
		switch e.Kind {
		case KindOp:
			out.Ops = append(out.Ops, Change{Position: p, Entry: e})
			return nil
		case KindIntent:
			// A declaration, not a change: the changes in the region
			// have their own entries, or, if the writer stopped before
			// it committed the intent, its successor's KindUnknown.
			return nil
		}
		out.Entries = append(out.Entries, Change{Position: p, Entry: e})
		return nil
	})
	if err != nil {
		return Changes{}, fmt.Errorf("changed extents of image %s: %w", imageID, err)
	}
	ext := make([]Extent, 0, len(out.Entries))
	for _, c := range out.Entries {
		ext = append(ext, Extent{Offset: c.Entry.Offset, Length: c.Entry.Length})
	}
	out.Extents = MergeExtents(ext)
	return out, nil
}

// AdvanceConsumer moves consumer past every entry up to and including to:
// the log may then be trimmed up to there.
func AdvanceConsumer(ctx context.Context, pool objstore.Pool, imageID, consumer string, to Position) error {
	err := walk(ctx, pool, imageID, consumer, func(p Position, _ Entry, commitTid uint64, jj *journal.Journaler) error {
		if !to.Less(p) {
			jj.Committed(commitTid)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("advance extent log consumer %q of image %s: %w", consumer, imageID, err)
	}
	return nil
}

// walk replays the log past consumer's commit position and hands every
// entry to fn; the commit position reached is flushed before it returns.
func walk(ctx context.Context, pool objstore.Pool, imageID, consumer string, fn func(Position, Entry, uint64, *journal.Journaler) error) (err error) {
	j, err := Open(ctx, pool, imageID, consumer, journal.Settings{})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := j.Close(context.WithoutCancel(ctx)); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if _, err := j.Client(); err != nil {
		return fmt.Errorf("%w: %q (csi-rbdj journal register-consumer)", ErrNoConsumer, consumer)
	}
	ends, err := EpochEnds(ctx, j, nil)
	if err != nil {
		return err
	}
	_, err = j.Replay(ctx, journal.ReplayOptions{EpochEnd: ends}, func(_ context.Context, re journal.ReplayEntry) error {
		e, err := Decode(re.Data)
		if err != nil {
			return fmt.Errorf("entry %d:%d: %w", re.TagTid, re.EntryTid, err)
		}
		return fn(Position{Tag: re.TagTid, Entry: re.EntryTid}, e, re.CommitTid, j)
	})
	if err != nil {
		return err
	}
	return j.FlushCommitPosition(ctx)
}

// EpochEnds reads, from the journal's tags (of tagClass; nil: all), where
// each epoch that was taken over ended (the tag predecessors): a fenced
// writer's entries past its epoch's end are never replayed or listed. It
// serves both the extent log and blockdev's full journal.
func EpochEnds(ctx context.Context, j *journal.Journaler, tagClass *uint64) (map[uint64]uint64, error) {
	tags, err := j.Tags(ctx, tagClass)
	if err != nil {
		return nil, err
	}
	ends := map[uint64]uint64{}
	for _, t := range tags {
		var td rbdjournal.TagData
		if err := cephenc.Unmarshal(t.Data, &td); err != nil {
			return nil, fmt.Errorf("tag %d data: %w", t.Tid, err)
		}
		p := td.Predecessor
		if p.CommitValid && p.MirrorUUID == rbdjournal.LocalMirrorUUID && td.MirrorUUID == rbdjournal.LocalMirrorUUID {
			if e, ok := ends[p.TagTid]; !ok || p.EntryTid < e {
				ends[p.TagTid] = p.EntryTid
			}
		}
	}
	return ends, nil
}

// MergeExtents sorts extents and joins overlapping and adjacent ones.
func MergeExtents(in []Extent) []Extent {
	ext := append([]Extent(nil), in...)
	sort.Slice(ext, func(a, b int) bool { return ext[a].Offset < ext[b].Offset })
	var out []Extent
	for _, e := range ext {
		if e.Length == 0 {
			continue
		}
		if n := len(out); n > 0 && e.Offset <= out[n-1].Offset+out[n-1].Length {
			if end := e.Offset + e.Length; end > out[n-1].Offset+out[n-1].Length {
				out[n-1].Length = end - out[n-1].Offset
			}
			continue
		}
		out = append(out, e)
	}
	return out
}

// ErrSnapshotNotLogged: the consumer's retained log holds no creation of
// the snapshot (made before the consumer registered, or not by a
// metadata-mode owner).
var ErrSnapshotNotLogged = errors.New("snapshot creation not in the extent log")

// SnapshotPosition returns the position of the op entry that created
// snapshot name (any namespace) among the entries consumer has not passed.
// Data entries before it are in the snapshot, those after it are not: the
// owner blocks writes while it makes a snapshot.
func SnapshotPosition(ctx context.Context, pool objstore.Pool, imageID, consumer, name string) (Position, error) {
	var pos Position
	found := false
	err := walk(ctx, pool, imageID, consumer, func(p Position, e Entry, _ uint64, _ *journal.Journaler) error {
		if e.Kind != KindOp {
			return nil
		}
		var ev rbdjournal.EventEntry
		if cephenc.Unmarshal(e.Op, &ev) != nil {
			return nil
		}
		if sc, ok := ev.Event.(rbdjournal.SnapCreateEvent); ok && sc.Name == name {
			pos, found = p, true // the last creation of that name
		}
		return nil
	})
	if err != nil {
		return Position{}, fmt.Errorf("snapshot %q in the extent log of image %s: %w", name, imageID, err)
	}
	if !found {
		return Position{}, fmt.Errorf("snapshot %q of image %s: %w", name, imageID, ErrSnapshotNotLogged)
	}
	return pos, nil
}

// ChangedBetweenSnapshots lists the data changes between the creations of
// snapshots from and to (the blocks an incremental backup from snapshot
// from to snapshot to copies); from "" means from the oldest retained
// entry.
func ChangedBetweenSnapshots(ctx context.Context, pool objstore.Pool, imageID, consumer, from, to string) (Changes, error) {
	var fromPos Position
	var err error
	if from != "" {
		if fromPos, err = SnapshotPosition(ctx, pool, imageID, consumer, from); err != nil {
			return Changes{}, err
		}
	}
	toPos, err := SnapshotPosition(ctx, pool, imageID, consumer, to)
	if err != nil {
		return Changes{}, err
	}
	if toPos.Less(fromPos) {
		return Changes{}, fmt.Errorf("snapshot %q was created after snapshot %q", from, to)
	}
	return ChangedExtents(ctx, pool, imageID, consumer, fromPos, toPos)
}
