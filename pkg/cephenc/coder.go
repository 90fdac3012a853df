package cephenc

import (
	"bytes"
	"fmt"
)

// A Coder runs a type's field list in one direction, as Ceph's DENC does:
// the type lists its fields once, in encoding order, in a method that takes
// a Coder, and its Encode and Decode both run that list, so that the two
// directions cannot drift apart.
//
//	func (p *ObjectPosition) denc(c cephenc.Coder) {
//		c.Struct(1, 1, func() {
//			c.U64(&p.ObjectNumber)
//			c.U64(&p.TagTid)
//		})
//	}
//	func (p ObjectPosition) Encode(e *cephenc.Encoder)        { p.denc(cephenc.Encoding(e)) }
//	func (p *ObjectPosition) Decode(d *cephenc.Decoder) error { return cephenc.DecodeWith(d, p.denc) }
//
// Encoding reads the fields and appends their encoding; decoding sets them
// from the input with a Decoder's rules (a failure is kept and every later
// field gets a zero value; check the Decoder's Err at the end). Fields a
// plain list cannot describe (containers, versioned fields) keep their own
// code, which Encoder and Decoder give.
type Coder struct {
	e *Encoder
	d *Decoder
}

// Encoding returns a Coder that appends to e.
func Encoding(e *Encoder) Coder { return Coder{e: e} }

// DecodeWith runs denc decoding from d and returns d's error.
func DecodeWith(d *Decoder, denc func(Coder)) error {
	denc(Coder{d: d})
	return d.Err()
}

// DecodeAs is DecodeWith with what was being decoded in the error
// ("decode <what>: ...").
func DecodeAs(d *Decoder, what string, denc func(Coder)) error {
	if err := DecodeWith(d, denc); err != nil {
		return fmt.Errorf("decode %s: %w", what, err)
	}
	return nil
}

// Struct codes a versioned struct whose fields the function codes
// (ENCODE_START(v, compat) … ENCODE_FINISH; DECODE_START(v) …
// DECODE_FINISH: a newer writer's trailing fields are skipped).
func (c Coder) Struct(v, compat uint8, fields func()) {
	if c.e != nil {
		m := c.e.Start(v, compat)
		fields()
		c.e.Finish(m)
		return
	}
	s := c.d.Start(v)
	fields()
	c.d.Finish(s)
}

// code codes *v with enc or dec.
func code[T any](c Coder, v *T, enc func(*Encoder, T), dec func(*Decoder) T) {
	if c.e != nil {
		enc(c.e, *v)
	} else {
		*v = dec(c.d)
	}
}

// U8 codes *v.
func (c Coder) U8(v *uint8) { code(c, v, (*Encoder).U8, (*Decoder).U8) }

// U32 codes *v.
func (c Coder) U32(v *uint32) { code(c, v, (*Encoder).U32, (*Decoder).U32) }

// U64 codes *v.
func (c Coder) U64(v *uint64) { code(c, v, (*Encoder).U64, (*Decoder).U64) }

// S64 codes *v.
func (c Coder) S64(v *int64) { code(c, v, (*Encoder).S64, (*Decoder).S64) }

// String codes *v (std::string).
func (c Coder) String(v *string) { code(c, v, (*Encoder).String, (*Decoder).Str) }

// Bytes codes *v (a bufferlist). A decoded value is a copy, not an alias of
// the input (nil when empty), so that it may outlive the input.
func (c Coder) Bytes(v *[]byte) {
	code(c, v, (*Encoder).Bytes, func(d *Decoder) []byte { return bytes.Clone(d.Bytes()) })
}

// Value codes a value with an encoding of its own.
func (c Coder) Value(v interface {
	Encodable
	Decodable
}) {
	if c.e != nil {
		v.Encode(c.e)
	} else {
		_ = v.Decode(c.d) // kept by the Decoder
	}
}

// EncodeList writes l as Ceph writes a list, vector or set: a u32 count and
// the elements.
func EncodeList[T Encodable](e *Encoder, l []T) {
	e.putLen(len(l))
	for _, v := range l {
		v.Encode(e)
	}
}

// DecodeList reads what EncodeList writes, elements of at least minSize
// bytes each (see Count). The result is not nil when there is no error.
func DecodeList[T any, P interface {
	*T
	Decodable
}](d *Decoder, minSize int) ([]T, error) {
	n := d.Count(minSize)
	if err := d.Err(); err != nil {
		return nil, err
	}
	l := make([]T, n)
	for i := range l {
		if err := P(&l[i]).Decode(d); err != nil {
			return nil, err
		}
	}
	return l, nil
}
