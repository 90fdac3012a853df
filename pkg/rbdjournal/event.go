// Package rbdjournal encodes librbd's journal payloads (librbd/journal/
// Types.h): the event entries an image's journal holds, the data librbd
// registers its journal client with, and the data of its tags. Encodings
// are byte-compatible with Ceph 16 (Pacific).
package rbdjournal

import (
	"fmt"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
)

// EventType is the type of a journal event.
type EventType uint32

// Event types (librbd::journal::EventType).
const (
	EventTypeAioDiscard         EventType = 0
	EventTypeAioWrite           EventType = 1
	EventTypeAioFlush           EventType = 2
	EventTypeOpFinish           EventType = 3
	EventTypeSnapCreate         EventType = 4
	EventTypeSnapRemove         EventType = 5
	EventTypeSnapRename         EventType = 6
	EventTypeSnapProtect        EventType = 7
	EventTypeSnapUnprotect      EventType = 8
	EventTypeSnapRollback       EventType = 9
	EventTypeRename             EventType = 10
	EventTypeResize             EventType = 11
	EventTypeFlatten            EventType = 12
	EventTypeDemotePromote      EventType = 13
	EventTypeSnapLimit          EventType = 14
	EventTypeUpdateFeatures     EventType = 15
	EventTypeMetadataSet        EventType = 16
	EventTypeMetadataRemove     EventType = 17
	EventTypeAioWriteSame       EventType = 18
	EventTypeAioCompareAndWrite EventType = 19
)

var eventTypeNames = [...]string{
	"AioDiscard", "AioWrite", "AioFlush", "OpFinish", "SnapCreate", "SnapRemove",
	"SnapRename", "SnapProtect", "SnapUnprotect", "SnapRollback", "Rename", "Resize",
	"Flatten", "Demote/Promote", "SnapLimit", "UpdateFeatures", "MetadataSet",
	"MetadataRemove", "AioWriteSame", "AioCompareAndWrite",
}

// String returns the name librbd prints (`rbd journal inspect`).
func (t EventType) String() string {
	if int(t) < len(eventTypeNames) {
		return eventTypeNames[t]
	}
	return fmt.Sprintf("Unknown (%d)", uint32(t))
}

// Event is one of the event types below.
type Event interface {
	// Type is the event's type.
	Type() EventType
	// encode appends the event's fields (after its type).
	encode(e *cephenc.Encoder)
}

// eventDecoder is a pointer to an event, to decode into.
type eventDecoder interface {
	Event
	// decode reads the fields as a writer of EventEntry version v wrote them.
	decode(v uint8, d *cephenc.Decoder)
}

// AioDiscardEvent discards a range of the image.
type AioDiscardEvent struct {
	Offset, Length uint64
	// DiscardGranularityBytes is the granularity below which partial
	// discards were skipped; 0 if they were not. Events written before
	// version 5 only recorded whether partial discards were skipped, which
	// decodes as the largest granularity.
	DiscardGranularityBytes uint32
}

// AioWriteEvent writes Data (Length bytes) at Offset. Decoded Data aliases
// the decoder's input.
type AioWriteEvent struct {
	Offset, Length uint64
	Data           []byte
}

// AioFlushEvent marks a flush: every earlier event is durable.
type AioFlushEvent struct{}

// OpFinishEvent records the result of the management operation OpTid.
type OpFinishEvent struct {
	OpTid uint64
	R     int32 // 0 or a negative errno
}

// ResizeEvent resizes the image to Size bytes (operation OpTid).
type ResizeEvent struct {
	OpTid, Size uint64
}

// DemotePromoteEvent marks a change of the image's primary.
type DemotePromoteEvent struct{}

// AioWriteSameEvent repeats Data over Length bytes at Offset. Its fields
// and their encoding are AioWriteEvent's (as librbd's): decoded Data aliases
// the decoder's input.
type AioWriteSameEvent AioWriteEvent

// AioCompareAndWriteEvent writes WriteData at Offset if the image holds
// CmpData there. Decoded data aliases the decoder's input.
type AioCompareAndWriteEvent struct {
	Offset, Length     uint64
	CmpData, WriteData []byte
}

// UnknownEvent is an event of a type this package does not decode field by
// field (snapshot and other management operations, future types). Raw holds
// its encoded fields, so it re-encodes to the same bytes.
type UnknownEvent struct {
	EventType EventType
	Raw       []byte
}

func (AioDiscardEvent) Type() EventType         { return EventTypeAioDiscard }
func (AioWriteEvent) Type() EventType           { return EventTypeAioWrite }
func (AioFlushEvent) Type() EventType           { return EventTypeAioFlush }
func (OpFinishEvent) Type() EventType           { return EventTypeOpFinish }
func (ResizeEvent) Type() EventType             { return EventTypeResize }
func (DemotePromoteEvent) Type() EventType      { return EventTypeDemotePromote }
func (AioWriteSameEvent) Type() EventType       { return EventTypeAioWriteSame }
func (AioCompareAndWriteEvent) Type() EventType { return EventTypeAioCompareAndWrite }
func (u UnknownEvent) Type() EventType          { return u.EventType }

func (ev AioDiscardEvent) encode(e *cephenc.Encoder) {
	e.U64(ev.Offset)
	e.U64(ev.Length)
	e.Bool(ev.DiscardGranularityBytes > 0) // skip_partial_discard, kept for v4 readers
	e.U32(ev.DiscardGranularityBytes)
}

func (ev *AioDiscardEvent) decode(v uint8, d *cephenc.Decoder) {
	ev.Offset = d.U64()
	ev.Length = d.U64()
	skipPartial := false
	if v >= 4 {
		skipPartial = d.Bool()
	}
	switch {
	case v >= 5:
		ev.DiscardGranularityBytes = d.U32()
	case skipPartial:
		// librbd: larger than any object, truncated to the object size
		// when the discard is processed
		ev.DiscardGranularityBytes = ^uint32(0)
	default:
		ev.DiscardGranularityBytes = 0
	}
}

func (ev AioWriteEvent) encode(e *cephenc.Encoder) {
	e.U64(ev.Offset)
	e.U64(ev.Length)
	e.Bytes(ev.Data)
}

func (ev *AioWriteEvent) decode(_ uint8, d *cephenc.Decoder) {
	ev.Offset = d.U64()
	ev.Length = d.U64()
	ev.Data = d.Bytes()
}

func (AioFlushEvent) encode(*cephenc.Encoder)         {}
func (*AioFlushEvent) decode(uint8, *cephenc.Decoder) {}

// OpFinishEvent's op_tid is encoded twice: once by librbd's OpEventBase and
// once more by OpFinishEvent itself. Decoding keeps the second, as librbd.
func (ev OpFinishEvent) encode(e *cephenc.Encoder) {
	e.U64(ev.OpTid)
	e.U64(ev.OpTid)
	e.S32(ev.R)
}

func (ev *OpFinishEvent) decode(_ uint8, d *cephenc.Decoder) {
	d.U64()
	ev.OpTid = d.U64()
	ev.R = d.S32()
}

func (ev ResizeEvent) encode(e *cephenc.Encoder) {
	e.U64(ev.OpTid)
	e.U64(ev.Size)
}

func (ev *ResizeEvent) decode(_ uint8, d *cephenc.Decoder) {
	ev.OpTid = d.U64()
	ev.Size = d.U64()
}

func (DemotePromoteEvent) encode(*cephenc.Encoder)         {}
func (*DemotePromoteEvent) decode(uint8, *cephenc.Decoder) {}

func (ev AioWriteSameEvent) encode(e *cephenc.Encoder) { AioWriteEvent(ev).encode(e) }

func (ev *AioWriteSameEvent) decode(v uint8, d *cephenc.Decoder) { (*AioWriteEvent)(ev).decode(v, d) }

func (ev AioCompareAndWriteEvent) encode(e *cephenc.Encoder) {
	e.U64(ev.Offset)
	e.U64(ev.Length)
	e.Bytes(ev.CmpData)
	e.Bytes(ev.WriteData)
}

func (ev *AioCompareAndWriteEvent) decode(_ uint8, d *cephenc.Decoder) {
	ev.Offset = d.U64()
	ev.Length = d.U64()
	ev.CmpData = d.Bytes()
	ev.WriteData = d.Bytes()
}

func (u UnknownEvent) encode(e *cephenc.Encoder) { e.Raw(u.Raw) }

func (u *UnknownEvent) decode(_ uint8, d *cephenc.Decoder) { u.Raw = d.Rest() }

// eventDecoders decode the events of the types this package knows: each
// into an empty value of its type, which the entry then holds (a value, not
// a pointer, so that callers switch on value types).
var eventDecoders = map[EventType]func(v uint8, d *cephenc.Decoder) Event{
	EventTypeAioDiscard:         decodeEvent[AioDiscardEvent],
	EventTypeAioWrite:           decodeEvent[AioWriteEvent],
	EventTypeAioFlush:           decodeEvent[AioFlushEvent],
	EventTypeOpFinish:           decodeEvent[OpFinishEvent],
	EventTypeResize:             decodeEvent[ResizeEvent],
	EventTypeDemotePromote:      decodeEvent[DemotePromoteEvent],
	EventTypeAioWriteSame:       decodeEvent[AioWriteSameEvent],
	EventTypeAioCompareAndWrite: decodeEvent[AioCompareAndWriteEvent],
	EventTypeSnapCreate:         decodeEvent[SnapCreateEvent],
	EventTypeSnapRemove:         decodeEvent[SnapRemoveEvent],
}

// decodeEventOfType decodes the fields of an event of type t, as an
// UnknownEvent if this package does not know the type.
func decodeEventOfType(t EventType, v uint8, d *cephenc.Decoder) Event {
	if dec, ok := eventDecoders[t]; ok {
		return dec(v, d)
	}
	u := UnknownEvent{EventType: t}
	u.decode(v, d)
	return u
}

// decodeEvent decodes an event of type T written in an entry of struct
// version v.
func decodeEvent[T Event, P interface {
	*T
	eventDecoder
}](v uint8, d *cephenc.Decoder) Event {
	var ev T
	P(&ev).decode(v, d)
	return ev
}

// EventEntry is the payload of one journal entry: an event and when it was
// appended.
type EventEntry struct {
	// Event is a value of one of the event types (AioWriteEvent, not
	// *AioWriteEvent).
	Event Event
	// Timestamp has the resolution of Ceph's utime_t: seconds in a u32 and
	// nanoseconds. The zero time encodes as 0.0, which decodes back to the
	// zero time.
	Timestamp time.Time
}

// Encode appends the entry: ENCODE_START(5, 1){u32 type, event fields},
// then the metadata ENCODE_START(1, 1){utime timestamp}. It panics if Event
// is nil, as librbd aborts on encoding an unknown event.
func (ee EventEntry) Encode(e *cephenc.Encoder) {
	if ee.Event == nil {
		panic("rbdjournal: encoding an EventEntry without an Event")
	}
	m := e.Start(5, 1)
	e.U32(uint32(ee.Event.Type()))
	ee.Event.encode(e)
	e.Finish(m)

	m = e.Start(1, 1)
	encodeUtime(e, ee.Timestamp)
	e.Finish(m)
}

// Decode decodes an entry of any version librbd wrote. Events of unknown
// types decode as UnknownEvent. Entries older than version 4 have no
// timestamp.
func (ee *EventEntry) Decode(d *cephenc.Decoder) error {
	s := d.Start(1)
	t := EventType(d.U32())
	var ev Event
	if d.Err() == nil {
		ev = decodeEventOfType(t, s.Version, d)
	}
	d.Finish(s)
	ee.Timestamp = time.Time{}
	if s.Version >= 4 {
		ms := d.Start(1)
		ee.Timestamp = decodeUtime(d)
		d.Finish(ms)
	}
	if err := d.Err(); err != nil {
		return fmt.Errorf("decode event entry (%v): %w", t, err)
	}
	ee.Event = ev
	return nil
}

func encodeUtime(e *cephenc.Encoder, t time.Time) {
	if t.IsZero() {
		e.U32(0)
		e.U32(0)
		return
	}
	e.U32(uint32(t.Unix()))
	e.U32(uint32(t.Nanosecond()))
}

func decodeUtime(d *cephenc.Decoder) time.Time {
	sec, nsec := d.U32(), d.U32()
	if sec == 0 && nsec == 0 {
		return time.Time{}
	}
	return time.Unix(int64(sec), int64(nsec)).UTC()
}
