package cephenc

import (
	"encoding/binary"
	"fmt"
)

// A Decoder reads Ceph encodings from a byte slice.
//
// Reads never panic and never read past the input or past the end of the
// innermost struct opened with Start. The first failure is kept: every later
// read returns a zero value and Err returns that failure, so a caller checks
// once at the end. Lengths of strings, bufferlists and containers are
// checked against the remaining input before anything is allocated, so
// hostile input cannot make a Decoder allocate more than the input's size.
type Decoder struct {
	buf   []byte
	off   int
	limit int // end of the innermost open struct, or len(buf)
	err   error
}

// NewDecoder returns a decoder reading b.
func NewDecoder(b []byte) *Decoder { return &Decoder{buf: b, limit: len(b)} }

// Err returns the first error met, or nil.
func (d *Decoder) Err() error { return d.err }

// Offset returns the number of bytes consumed from the start of the input.
func (d *Decoder) Offset() int { return d.off }

// Remaining returns the number of bytes left before the end of the
// innermost open struct (or of the input).
func (d *Decoder) Remaining() int { return d.limit - d.off }

// fail records err (wrapping sentinel) unless an error is already recorded.
func (d *Decoder) fail(sentinel error, format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w at offset %d: %s", sentinel, d.off, fmt.Sprintf(format, args...))
	}
}

// take consumes n bytes, or records ErrShortBuffer and returns nil.
func (d *Decoder) take(n int, what string) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > d.limit-d.off {
		d.fail(ErrShortBuffer, "%s needs %d bytes, %d left", what, n, d.limit-d.off)
		return nil
	}
	b := d.buf[d.off : d.off+n : d.off+n]
	d.off += n
	return b
}

// U8 reads one byte.
func (d *Decoder) U8() uint8 {
	if b := d.take(1, "u8"); b != nil {
		return b[0]
	}
	return 0
}

// U16 reads a little-endian u16.
func (d *Decoder) U16() uint16 {
	if b := d.take(2, "u16"); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

// U32 reads a little-endian u32.
func (d *Decoder) U32() uint32 {
	if b := d.take(4, "u32"); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

// U64 reads a little-endian u64.
func (d *Decoder) U64() uint64 {
	if b := d.take(8, "u64"); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

// S32 reads a little-endian two's complement i32.
func (d *Decoder) S32() int32 { return int32(d.U32()) }

// S64 reads a little-endian two's complement i64.
func (d *Decoder) S64() int64 { return int64(d.U64()) }

// Bool reads one byte; like Ceph, any non-zero value is true.
func (d *Decoder) Bool() bool { return d.U8() != 0 }

// Str reads a u32 length and that many bytes as a string (std::string).
// It is not named String so that a Decoder is not a fmt.Stringer whose
// printing would consume input.
func (d *Decoder) Str() string { return string(d.lenPrefixed("string")) }

// Bytes reads a u32 length and that many bytes (a bufferlist). The result
// aliases the input; it is nil for an empty bufferlist.
func (d *Decoder) Bytes() []byte {
	b := d.lenPrefixed("bufferlist")
	if len(b) == 0 {
		return nil
	}
	return b
}

func (d *Decoder) lenPrefixed(what string) []byte {
	n := d.U32()
	if d.err != nil {
		return nil
	}
	if uint64(n) > uint64(d.limit-d.off) {
		d.fail(ErrShortBuffer, "%s of %d bytes, %d left", what, n, d.limit-d.off)
		return nil
	}
	return d.take(int(n), what)
}

// Raw reads n bytes without a length prefix. The result aliases the input.
func (d *Decoder) Raw(n int) []byte { return d.take(n, "raw bytes") }

// Rest reads what is left of the innermost open struct (or of the input)
// as is: the fields of a type the caller does not know. The result aliases
// the input; it is nil when nothing is left.
func (d *Decoder) Rest() []byte {
	if b := d.Raw(d.Remaining()); len(b) > 0 {
		return b
	}
	return nil
}

// Count reads the u32 element count of a container (list, set, map) whose
// elements each take at least minSize bytes. It fails with ErrShortBuffer if
// the remaining input cannot hold that many elements, so the count can size
// an allocation safely.
func (d *Decoder) Count(minSize int) int {
	n := d.U32()
	if d.err != nil {
		return 0
	}
	minSize = max(minSize, 1)
	if uint64(n)*uint64(minSize) > uint64(d.limit-d.off) {
		d.fail(ErrShortBuffer, "%d elements of at least %d bytes, %d left", n, minSize, d.limit-d.off)
		return 0
	}
	return int(n)
}

// A Struct is an open struct envelope returned by Decoder.Start.
type Struct struct {
	// Version is the struct version the writer encoded (struct_v); decoders
	// use it to know which fields are present.
	Version uint8
	// Compat is the oldest version able to decode the struct (struct_compat).
	Compat uint8

	end, outer int
}

// Start opens a versioned struct (DECODE_START). supported is the newest
// struct version this decoder understands: a struct whose compat version is
// newer fails with ErrVersion. Start checks that the encoded length fits in
// the remaining input and limits later reads to it until Finish.
func (d *Decoder) Start(supported uint8) Struct {
	v := d.U8()
	compat := d.U8()
	n := d.U32()
	if d.err != nil {
		return Struct{}
	}
	if compat > supported {
		d.fail(ErrVersion, "struct v%d needs a decoder of v%d, have v%d", v, compat, supported)
		return Struct{}
	}
	if uint64(n) > uint64(d.limit-d.off) {
		d.fail(ErrShortBuffer, "struct of %d bytes, %d left", n, d.limit-d.off)
		return Struct{}
	}
	s := Struct{Version: v, Compat: compat, end: d.off + int(n), outer: d.limit}
	d.limit = s.end
	return s
}

// Finish closes the struct opened by Start (DECODE_FINISH): it skips any
// bytes of the struct left unread, which a newer writer may have appended
// (forward compatibility), and lifts the read limit to the enclosing one.
func (d *Decoder) Finish(s Struct) {
	if d.err != nil {
		return
	}
	if s.outer == 0 || s.end != d.limit {
		d.fail(ErrMalformed, "Finish does not match the innermost Start")
		return
	}
	d.off = s.end
	d.limit = s.outer
}
