// Package extentlog is csi-rbdj's metadata-only journal (StorageClass
// journalMode: metadata): a write's data goes straight to the image's data
// objects and only a small entry naming the extent it changed, with a
// CRC-32C of the data, is journaled.
//
// The log is kept by pkg/journal's generic journaler (Ceph's on-disk
// journal format: a header object maintained by the "journal" object class
// plus data objects) under object names of its own, "csi_rbdj_journal.<id>"
// and "csi_rbdj_journal_data.<pool>.<id>.<n>", never librbd's "journal.<id>":
// an image in this mode does not carry librbd's journaling feature, so
// neither librbd nor rbd-mirror opens a journal for it, and if one did look
// for "journal.<id>" it would find nothing. The entries use their own
// versioned encoding (this file), not librbd's EventEntry, so not even a
// tool pointed at these objects could decode them as replayable writes.
package extentlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

// Kind is what an entry records.
type Kind uint8

// Entry kinds.
const (
	// KindWrite: data was written to [Offset, Offset+Length); CRC is the
	// CRC-32C (Castagnoli) of that data.
	KindWrite Kind = 1
	// KindDiscard: [Offset, Offset+Length) was discarded (reads zeros).
	KindDiscard Kind = 2
	// KindZero: zeros were written to [Offset, Offset+Length).
	KindZero Kind = 3
	// KindOp: a management operation (resize, ...); Op holds its librbd
	// event encoding, journaled as in full mode for the record, never
	// replayed as data.
	KindOp Kind = 4
	// KindIntent: data in [Offset, Offset+Length) (a region: one data
	// object of the image) may change from now on without a KindWrite,
	// KindDiscard or KindZero entry being durable yet, until the writer
	// commits this entry. The device appends one, and waits until it is
	// durable, before the first write into a region it has not declared
	// ("hot"); afterwards it writes data into the region at once and logs
	// each change's exact entry after it, without waiting (a flush waits).
	// Not a change in itself: ChangedExtents does not list it. Version 2.
	KindIntent Kind = 5
	// KindUnknown: [Offset, Offset+Length) may have changed, content
	// unknown. The next owner of the image appends one, in its own epoch,
	// for each KindIntent it finds uncommitted (the previous owner stopped
	// with the region hot: changes there may have no exact entry), before
	// it commits that intent. ChangedExtents lists it as a change; replay
	// does not check it. Version 2.
	KindUnknown Kind = 6
)

func (k Kind) String() string {
	switch k {
	case KindWrite:
		return "write"
	case KindDiscard:
		return "discard"
	case KindZero:
		return "zero"
	case KindOp:
		return "op"
	case KindIntent:
		return "intent"
	case KindUnknown:
		return "unknown"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Version is the newest entry encoding this package writes: entries of
// the kinds of version 1 (write, discard, zero, op) are still written as
// version 1, KindIntent and KindUnknown as version 2, so that a build that
// reads only version 1 refuses them (ErrVersion) rather than take a region
// for a change or skip it. Decode refuses other versions rather than guess.
const Version = 2

// versionOf is the encoding version of an entry of kind k.
func versionOf(k Kind) byte {
	if k == KindIntent || k == KindUnknown {
		return 2
	}
	return 1
}

// Entry is one metadata entry.
type Entry struct {
	Kind      Kind
	Offset    uint64
	Length    uint64
	CRC       uint32 // KindWrite only
	Timestamp time.Time
	Op        []byte // KindOp only
}

// End is the end of the entry's extent.
func (e Entry) End() uint64 { return e.Offset + e.Length }

// Errors of Decode.
var (
	ErrVersion = errors.New("unsupported extent log entry version")
	ErrCorrupt = errors.New("corrupt extent log entry")
)

// magic starts every encoded entry: it tells an extent log entry from
// anything else at a glance ("XL").
const magic = 0x4c58

// fixed is the encoded size without the op payload: magic(2) version(1)
// kind(1) offset(8) length(8) crc(4) timestamp(8) oplen(4).
const fixed = 2 + 1 + 1 + 8 + 8 + 4 + 8 + 4

// MaxOpSize bounds an op entry's payload.
const MaxOpSize = 1 << 20

// Encode returns the entry's encoding (little-endian).
func (e Entry) Encode() []byte {
	b := make([]byte, fixed+len(e.Op))
	binary.LittleEndian.PutUint16(b[0:], magic)
	b[2] = versionOf(e.Kind)
	b[3] = byte(e.Kind)
	binary.LittleEndian.PutUint64(b[4:], e.Offset)
	binary.LittleEndian.PutUint64(b[12:], e.Length)
	binary.LittleEndian.PutUint32(b[20:], e.CRC)
	var ts int64
	if !e.Timestamp.IsZero() {
		ts = e.Timestamp.UnixNano()
	}
	binary.LittleEndian.PutUint64(b[24:], uint64(ts))
	binary.LittleEndian.PutUint32(b[32:], uint32(len(e.Op)))
	copy(b[fixed:], e.Op)
	return b
}

// Decode parses an encoded entry. It never panics on any input.
func Decode(b []byte) (Entry, error) {
	var e Entry
	if len(b) < fixed {
		return e, fmt.Errorf("%w: %d bytes, want at least %d", ErrCorrupt, len(b), fixed)
	}
	if m := binary.LittleEndian.Uint16(b); m != magic {
		return e, fmt.Errorf("%w: magic %#x", ErrCorrupt, m)
	}
	if b[2] == 0 || b[2] > Version {
		return e, fmt.Errorf("%w: %d (this build reads 1 to %d)", ErrVersion, b[2], Version)
	}
	e.Kind = Kind(b[3])
	if k := e.Kind; k >= KindWrite && k <= KindUnknown && b[2] != versionOf(k) {
		// One encoding per entry: each kind has its version.
		return Entry{}, fmt.Errorf("%w: %v entry in version %d (written as version %d)", ErrVersion, k, b[2], versionOf(k))
	}
	e.Offset = binary.LittleEndian.Uint64(b[4:])
	e.Length = binary.LittleEndian.Uint64(b[12:])
	e.CRC = binary.LittleEndian.Uint32(b[20:])
	if ts := int64(binary.LittleEndian.Uint64(b[24:])); ts != 0 {
		e.Timestamp = time.Unix(0, ts)
	}
	n := binary.LittleEndian.Uint32(b[32:])
	if uint64(n) != uint64(len(b)-fixed) {
		return Entry{}, fmt.Errorf("%w: op payload of %d bytes in a %d-byte entry", ErrCorrupt, n, len(b))
	}
	switch e.Kind {
	case KindWrite, KindDiscard, KindZero, KindIntent, KindUnknown:
		if n != 0 {
			return Entry{}, fmt.Errorf("%w: %v entry with an op payload", ErrCorrupt, e.Kind)
		}
		if e.Length == 0 || e.Offset+e.Length < e.Offset {
			return Entry{}, fmt.Errorf("%w: %v extent %d+%d", ErrCorrupt, e.Kind, e.Offset, e.Length)
		}
		if e.Kind != KindWrite && e.CRC != 0 {
			return Entry{}, fmt.Errorf("%w: %v entry with a checksum", ErrCorrupt, e.Kind)
		}
	case KindOp:
		if n > MaxOpSize {
			return Entry{}, fmt.Errorf("%w: op payload of %d bytes", ErrCorrupt, n)
		}
		if e.Offset != 0 || e.Length != 0 || e.CRC != 0 {
			return Entry{}, fmt.Errorf("%w: op entry with an extent", ErrCorrupt)
		}
		e.Op = append([]byte(nil), b[fixed:]...)
	default:
		return Entry{}, fmt.Errorf("%w: unknown kind %d", ErrCorrupt, b[3])
	}
	return e, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum is the CRC-32C of data, as recorded in write entries.
func Checksum(data []byte) uint32 { return crc32.Checksum(data, castagnoli) }
