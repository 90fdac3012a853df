package local

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
)

// The log file (<dir>/wal) starts with a header block; records follow it.
//
//	header (at 0, walHeaderSize bytes): magic u64 | startLSN u64 | crc32c u32 of the 16 bytes before it
//	record: magic u32 | bodyLen u32 | lsn u64 | body | crc32c u32 of everything before it
//
// A record holds one operation's effect on one object, as idempotent
// mutations (see record). Records carry consecutive LSNs starting at the
// header's startLSN; the first record that is short, fails its CRC or has an
// unexpected LSN ends the log (a torn tail).
const (
	walHeaderSize  = 4096
	walMagic       = 0x314c41574a424452 // "RDBJWAL1"
	recMagic       = 0x4c4a4252         // "RBJL"
	recHeaderSize  = 16
	maxRecordBody  = 1 << 31
	mutRemove      = 1 // unlink data, meta and name files
	mutCreateFresh = 2 // unlink meta, create an empty data file (O_TRUNC), write the name file
	mutWrite       = 3 // a=offset, data
	mutSetSize     = 4 // a=old size, b=new size: truncate to b, zero [a,b) if b>a
	mutZero        = 5 // a=offset, b=length (within the object)
)

type mut struct {
	kind uint8
	a, b uint64
	data []byte
}

// record is the durable form of one operation on one object.
type record struct {
	lsn     uint64
	poolID  int64
	oid     string
	muts    []mut
	hasMeta bool
	meta    []byte // the object's whole new meta (nil/empty: none)
	mtime   int64  // unix ns; 0: leave the mtime alone (the object does not exist afterwards)
}

func (r *record) bodyLen() int {
	n := 8 + 4 + len(r.oid) + 8 + 1 + 4 + len(r.meta) + 4
	for _, m := range r.muts {
		n += 1 + 8 + 8 + 4 + len(m.data)
	}
	return n
}

// appendTo appends the framed record to b.
func (r *record) appendTo(b []byte) []byte {
	start := len(b)
	b = binary.LittleEndian.AppendUint32(b, recMagic)
	b = binary.LittleEndian.AppendUint32(b, uint32(r.bodyLen()))
	b = binary.LittleEndian.AppendUint64(b, r.lsn)
	b = binary.LittleEndian.AppendUint64(b, uint64(r.poolID))
	b = appendBytes(b, []byte(r.oid))
	b = binary.LittleEndian.AppendUint64(b, uint64(r.mtime))
	if r.hasMeta {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	b = appendBytes(b, r.meta)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(r.muts)))
	for _, m := range r.muts {
		b = append(b, m.kind)
		b = binary.LittleEndian.AppendUint64(b, m.a)
		b = binary.LittleEndian.AppendUint64(b, m.b)
		b = appendBytes(b, m.data)
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli))
}

func decodeBody(lsn uint64, body []byte) (*record, error) {
	d := decoder{b: body}
	r := &record{lsn: lsn}
	r.poolID = int64(d.u64())
	r.oid = string(d.bytes())
	r.mtime = int64(d.u64())
	r.hasMeta = d.u8() == 1
	r.meta = d.bytes()
	n := d.u32()
	if uint64(n) > uint64(len(body)) {
		return nil, errCorrupt
	}
	for i := uint32(0); i < n && d.err == nil; i++ {
		var m mut
		m.kind = d.u8()
		m.a = d.u64()
		m.b = d.u64()
		m.data = d.bytes()
		r.muts = append(r.muts, m)
	}
	if d.err != nil || len(d.b) != 0 {
		return nil, errCorrupt
	}
	return r, nil
}

func encodeWALHeader(startLSN uint64) []byte {
	b := make([]byte, walHeaderSize)
	binary.LittleEndian.PutUint64(b, walMagic)
	binary.LittleEndian.PutUint64(b[8:], startLSN)
	binary.LittleEndian.PutUint32(b[16:], crc32.Checksum(b[:16], castagnoli))
	return b
}

// readWALHeader returns the header's start LSN; ok is false if the header is
// missing or invalid.
func readWALHeader(f *os.File) (startLSN uint64, ok bool) {
	b := make([]byte, 20)
	if _, err := f.ReadAt(b, 0); err != nil {
		return 0, false
	}
	if binary.LittleEndian.Uint64(b) != walMagic || binary.LittleEndian.Uint32(b[16:]) != crc32.Checksum(b[:16], castagnoli) {
		return 0, false
	}
	return binary.LittleEndian.Uint64(b[8:]), true
}

// scanWAL reads the valid records from off on, expecting LSNs from lsn on,
// and calls fn for each. It returns the offset just past the last valid
// record (where the log must be cut) and the next LSN.
func scanWAL(f *os.File, off int64, lsn uint64, fn func(*record) error) (end int64, next uint64, err error) {
	st, err := f.Stat()
	if err != nil {
		return off, lsn, err
	}
	size := st.Size()
	br := bufio.NewReaderSize(io.NewSectionReader(f, off, size-off), 1<<20)
	var hdr [recHeaderSize]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return off, lsn, nil
		}
		blen := uint64(binary.LittleEndian.Uint32(hdr[4:]))
		if binary.LittleEndian.Uint32(hdr[:]) != recMagic || binary.LittleEndian.Uint64(hdr[8:]) != lsn ||
			blen > maxRecordBody || int64(blen)+recHeaderSize+4 > size-off {
			return off, lsn, nil
		}
		rest := make([]byte, blen+4)
		if _, err := io.ReadFull(br, rest); err != nil {
			return off, lsn, nil
		}
		crc := crc32.Update(crc32.Checksum(hdr[:], castagnoli), castagnoli, rest[:blen])
		if crc != binary.LittleEndian.Uint32(rest[blen:]) {
			return off, lsn, nil
		}
		r, derr := decodeBody(lsn, rest[:blen])
		if derr != nil {
			// A record with a good CRC that does not decode is a bug, not a torn write.
			return off, lsn, fmt.Errorf("log record %d at %d: %w", lsn, off, derr)
		}
		if err := fn(r); err != nil {
			return off, lsn, err
		}
		off += recHeaderSize + int64(blen) + 4
		lsn++
	}
}

var errRecordTooBig = errors.New("operation too large for one log record")
