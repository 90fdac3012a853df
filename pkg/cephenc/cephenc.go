// Package cephenc implements Ceph's little-endian binary encoding
// (include/encoding.h): fixed-size integers, u32-length-prefixed strings
// and bufferlists, and the versioned struct envelope written by
// ENCODE_START/ENCODE_FINISH.
//
// An Encoder appends to a byte slice. A Decoder reads from one with bounds
// checks and never panics: the first failure is remembered, every later read
// returns a zero value, and Err reports it. This keeps decoding code as
// linear as the C++ it mirrors:
//
//	s := d.Start(1)
//	p.ObjectNumber = d.U64()
//	p.TagTid = d.U64()
//	d.Finish(s)
//	return d.Err()
//
// A type whose encoding is a plain list of fields writes that list once, for
// a Coder, which runs it in either direction (Ceph's DENC); EncodeList and
// DecodeList write and read containers of such values.
package cephenc

import (
	"errors"
	"fmt"
)

// Errors a Decoder reports, wrapped with the offset and what was being read.
// Every decoding failure matches ErrMalformed (as every failure is a
// buffer::error in Ceph); ErrShortBuffer and ErrVersion tell the two common
// causes apart.
var (
	// ErrMalformed means the input cannot be decoded.
	ErrMalformed = errors.New("cephenc: malformed input")
	// ErrShortBuffer means the input, or the enclosing struct, ended before
	// the value being read: it is truncated or a length in it is wrong.
	ErrShortBuffer = fmt.Errorf("%w: short buffer", ErrMalformed)
	// ErrVersion means a struct was encoded by a newer writer whose compat
	// version this decoder does not support (Ceph's DECODE_ERR_OLDVERSION).
	ErrVersion = fmt.Errorf("%w: unsupported struct version", ErrMalformed)
)

// Encodable is a value with a Ceph encoding.
type Encodable interface {
	Encode(e *Encoder)
}

// Decodable is a value that can be decoded from its Ceph encoding.
type Decodable interface {
	Decode(d *Decoder) error
}

// Marshal returns the encoding of v.
func Marshal(v Encodable) []byte {
	var e Encoder
	v.Encode(&e)
	return e.Data()
}

// MarshalFunc returns what enc encodes (nil for a nil enc).
func MarshalFunc(enc func(e *Encoder)) []byte {
	var e Encoder
	if enc != nil {
		enc(&e)
	}
	return e.Data()
}

// Unmarshal decodes v from the start of b. Like Ceph's decode of an omap
// value or a method's input, it ignores bytes after the value.
func Unmarshal(b []byte, v Decodable) error {
	return v.Decode(NewDecoder(b))
}
