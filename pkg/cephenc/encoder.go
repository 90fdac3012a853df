package cephenc

import (
	"encoding/binary"
	"math"
)

// An Encoder appends Ceph encodings to a byte slice. The zero value is an
// empty encoder ready to use.
type Encoder struct {
	buf []byte
}

// NewEncoder returns an encoder that appends to dst.
func NewEncoder(dst []byte) *Encoder { return &Encoder{buf: dst} }

// Data returns the encoded bytes. The slice aliases the encoder's buffer
// until the next write.
func (e *Encoder) Data() []byte { return e.buf }

// Len returns the number of bytes encoded so far.
func (e *Encoder) Len() int { return len(e.buf) }

// U8 appends v.
func (e *Encoder) U8(v uint8) { e.buf = append(e.buf, v) }

// U16 appends v little-endian.
func (e *Encoder) U16(v uint16) { e.buf = binary.LittleEndian.AppendUint16(e.buf, v) }

// U32 appends v little-endian.
func (e *Encoder) U32(v uint32) { e.buf = binary.LittleEndian.AppendUint32(e.buf, v) }

// U64 appends v little-endian.
func (e *Encoder) U64(v uint64) { e.buf = binary.LittleEndian.AppendUint64(e.buf, v) }

// S32 appends v as two's complement little-endian.
func (e *Encoder) S32(v int32) { e.U32(uint32(v)) }

// S64 appends v as two's complement little-endian.
func (e *Encoder) S64(v int64) { e.U64(uint64(v)) }

// Bool appends v as one byte, 0 or 1.
func (e *Encoder) Bool(v bool) {
	if v {
		e.U8(1)
	} else {
		e.U8(0)
	}
}

// String appends s as a u32 length and its bytes (std::string).
func (e *Encoder) String(s string) {
	e.putLen(len(s))
	e.buf = append(e.buf, s...)
}

// Bytes appends b as a u32 length and its bytes (a bufferlist).
func (e *Encoder) Bytes(b []byte) {
	e.putLen(len(b))
	e.buf = append(e.buf, b...)
}

// Raw appends b as is, without a length.
func (e *Encoder) Raw(b []byte) { e.buf = append(e.buf, b...) }

// putLen appends a u32 length. Ceph cannot represent longer values; silently
// truncating the length would corrupt the stream, so this is a programming
// error.
func (e *Encoder) putLen(n int) {
	if uint64(n) > math.MaxUint32 {
		panic("cephenc: value longer than 4 GiB")
	}
	e.U32(uint32(n))
}

// A Mark records where a struct envelope started; pass it to Finish.
type Mark struct {
	lenOff int
}

// Start begins a versioned struct (ENCODE_START): it appends the struct
// version v, the oldest version compat that can decode it, and a placeholder
// for the u32 length that Finish fills in. Structs nest.
func (e *Encoder) Start(v, compat uint8) Mark {
	e.U8(v)
	e.U8(compat)
	m := Mark{lenOff: len(e.buf)}
	e.U32(0)
	return m
}

// Finish ends the struct begun by Start (ENCODE_FINISH), back-patching its
// length to cover everything appended since.
func (e *Encoder) Finish(m Mark) {
	n := len(e.buf) - m.lenOff - 4
	if uint64(n) > math.MaxUint32 {
		panic("cephenc: struct longer than 4 GiB")
	}
	binary.LittleEndian.PutUint32(e.buf[m.lenOff:], uint32(n))
}
