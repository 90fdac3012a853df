package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Preamble starts every journal entry; replay uses it to resynchronise on
// corruption and to recognise a torn tail.
const Preamble uint64 = 0x3141592653589793

const (
	entryVersion = 1
	// entryHeaderSize is preamble + version + entry_tid + tag_tid + payload length.
	entryHeaderSize = 8 + 1 + 8 + 8 + 4
	// EntryOverhead is the bytes an entry adds to its payload.
	EntryOverhead = entryHeaderSize + 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Ceph's ceph_crc32c(0, ...) is the raw CRC-32C register with seed 0 and no
// final inversion; Go's crc32 inverts on the way in and out, so undo both.
func cephCRC32C(b []byte) uint32 { return ^crc32.Update(^uint32(0), castagnoli, b) }

// Sentinel decode errors. ErrTruncated means the bytes end inside an entry
// (a torn tail if it is the end of the newest object); ErrCorrupt means the
// bytes are not an entry at all or fail their checksum.
var (
	ErrTruncated = errors.New("journal entry truncated")
	ErrCorrupt   = errors.New("journal entry corrupt")
)

// Entry is one journal entry: a payload tagged with its epoch (tag) and its
// position within that epoch (entry tid).
type Entry struct {
	TagTid   uint64
	EntryTid uint64
	Data     []byte
}

// EncodedLen is the size of e on disk.
func (e Entry) EncodedLen() int { return EntryOverhead + len(e.Data) }

// AppendEncoded appends e in Ceph's on-disk entry format to b.
func (e Entry) AppendEncoded(b []byte) []byte {
	start := len(b)
	b = binary.LittleEndian.AppendUint64(b, Preamble)
	b = append(b, entryVersion)
	b = binary.LittleEndian.AppendUint64(b, e.EntryTid)
	b = binary.LittleEndian.AppendUint64(b, e.TagTid)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(e.Data)))
	b = append(b, e.Data...)
	return binary.LittleEndian.AppendUint32(b, cephCRC32C(b[start:]))
}

// encodeFramed encodes e in place in frame, a NewFrame buffer whose payload
// (e.Data) follows the room for the header: it writes the header in front
// and appends the checksum (within frame's capacity, so without a copy).
func (e Entry) encodeFramed(frame []byte) []byte {
	h := frame[:0]
	h = binary.LittleEndian.AppendUint64(h, Preamble)
	h = append(h, entryVersion)
	h = binary.LittleEndian.AppendUint64(h, e.EntryTid)
	h = binary.LittleEndian.AppendUint64(h, e.TagTid)
	binary.LittleEndian.AppendUint32(h, uint32(len(e.Data)))
	return binary.LittleEndian.AppendUint32(frame, cephCRC32C(frame))
}

// DecodeEntry decodes the entry at the start of b and returns it with the
// number of bytes it occupies. The entry's Data aliases b.
func DecodeEntry(b []byte) (Entry, int, error) {
	if len(b) < 8 {
		return Entry{}, 0, ErrTruncated
	}
	if binary.LittleEndian.Uint64(b) != Preamble {
		return Entry{}, 0, fmt.Errorf("%w: bad preamble %#x", ErrCorrupt, binary.LittleEndian.Uint64(b))
	}
	if len(b) < entryHeaderSize {
		return Entry{}, 0, ErrTruncated
	}
	if v := b[8]; v != entryVersion {
		return Entry{}, 0, fmt.Errorf("%w: unsupported version %d", ErrCorrupt, v)
	}
	e := Entry{
		EntryTid: binary.LittleEndian.Uint64(b[9:]),
		TagTid:   binary.LittleEndian.Uint64(b[17:]),
	}
	n := uint64(binary.LittleEndian.Uint32(b[25:]))
	total := uint64(entryHeaderSize) + n + 4
	if uint64(len(b)) < total {
		return Entry{}, 0, ErrTruncated
	}
	body := b[:entryHeaderSize+n]
	if got, want := binary.LittleEndian.Uint32(b[entryHeaderSize+n:]), cephCRC32C(body); got != want {
		return Entry{}, 0, fmt.Errorf("%w: crc %#08x, computed %#08x", ErrCorrupt, got, want)
	}
	e.Data = b[entryHeaderSize : entryHeaderSize+n : entryHeaderSize+n]
	return e, int(total), nil
}
