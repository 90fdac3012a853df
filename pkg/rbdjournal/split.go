package rbdjournal

// DefaultMaxPayloadBytes is librbd's default cap on an entry's payload
// (rbd_journal_max_payload_bytes).
const DefaultMaxPayloadBytes = 16384

// AioWriteFixedSize is the encoded size of an AioWrite entry payload besides
// its data (librbd's AioWriteEvent::get_fixed_size): 44 bytes, although
// librbd counts them as 14 + 14 + 16. A write of n data bytes makes a
// payload of exactly AioWriteFixedSize+n bytes.
const AioWriteFixedSize = 44

// entryFixedSize is the framing of a journal entry around its payload
// (journal::Entry::get_fixed_size): preamble, version, entry tid, tag tid,
// payload length and crc.
const entryFixedSize = 33

// MaxAppendSize is the largest payload librbd appends to a journal with
// objects of 1<<order bytes and a payload cap of maxPayloadBytes (0: no
// cap), as Journaler::get_max_append_size computes it; 0 for an order too
// small to hold an entry.
func MaxAppendSize(order uint8, maxPayloadBytes uint64) uint64 {
	objectSize := uint64(1) << order
	if order >= 64 || objectSize <= entryFixedSize {
		return 0
	}
	size := objectSize - entryFixedSize
	if maxPayloadBytes > 0 {
		size = min(size, maxPayloadBytes)
	}
	return size
}

// SplitWrite splits a write of data at offset into AioWrite events whose
// entry payloads are at most maxAppendSize bytes, as librbd's
// Journal::add_write_event_entries does: each event carries up to
// maxAppendSize-AioWriteFixedSize bytes, in order. An empty write makes one
// empty event. The events' Data alias data.
//
// With the default cap of 16384, a 20480-byte write becomes events of 16340
// and 4140 bytes. It panics if maxAppendSize <= AioWriteFixedSize, where
// librbd asserts.
func SplitWrite(offset uint64, data []byte, maxAppendSize uint64) []AioWriteEvent {
	if maxAppendSize <= AioWriteFixedSize {
		panic("rbdjournal: max append size leaves no room for write data")
	}
	chunk := maxAppendSize - AioWriteFixedSize
	events := make([]AioWriteEvent, 0, (uint64(len(data))+chunk-1)/chunk+1)
	remaining := uint64(len(data))
	var off uint64
	for {
		n := min(remaining, chunk)
		events = append(events, AioWriteEvent{Offset: offset + off, Length: n, Data: data[off : off+n : off+n]})
		off += n
		remaining -= n
		if remaining == 0 {
			return events
		}
	}
}
