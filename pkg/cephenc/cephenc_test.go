package cephenc

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math"
	"runtime"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc/cephenctest"
)

func TestEncoderPrimitives(t *testing.T) {
	tests := []struct {
		name string
		enc  func(e *Encoder)
		want string
	}{
		{"u8", func(e *Encoder) { e.U8(0x18) }, "18"},
		{"u16", func(e *Encoder) { e.U16(0x0102) }, "0201"},
		{"u32", func(e *Encoder) { e.U32(0x01020304) }, "04030201"},
		{"u64", func(e *Encoder) { e.U64(2) }, "0200000000000000"},
		{"s32 negative", func(e *Encoder) { e.S32(-5) }, "fbffffff"},
		{"s64 pool id -1", func(e *Encoder) { e.S64(-1) }, "ffffffffffffffff"},
		{"bool true", func(e *Encoder) { e.Bool(true) }, "01"},
		{"bool false", func(e *Encoder) { e.Bool(false) }, "00"},
		{"empty string", func(e *Encoder) { e.String("") }, "00000000"},
		{"string", func(e *Encoder) { e.String("ab") }, "020000006162"},
		{"bufferlist", func(e *Encoder) { e.Bytes([]byte{0xaa}) }, "01000000aa"},
		{"nil bufferlist", func(e *Encoder) { e.Bytes(nil) }, "00000000"},
		{"raw", func(e *Encoder) { e.Raw([]byte{1, 2}) }, "0102"},
		{"struct", func(e *Encoder) {
			m := e.Start(1, 1)
			e.U64(7)
			e.Finish(m)
		}, "0101080000000700000000000000"},
		{"nested structs", func(e *Encoder) {
			outer := e.Start(2, 1)
			e.U8(9)
			inner := e.Start(1, 1)
			e.U16(3)
			e.Finish(inner)
			e.Finish(outer)
		}, "02010900000009" + "010102000000" + "0300"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e Encoder
			tt.enc(&e)
			if got := hex.EncodeToString(e.Data()); got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}

func TestNewEncoderAppends(t *testing.T) {
	e := NewEncoder([]byte{0xff})
	e.U8(1)
	if !bytes.Equal(e.Data(), []byte{0xff, 1}) || e.Len() != 2 {
		t.Fatalf("got %x", e.Data())
	}
}

func TestDecoderPrimitives(t *testing.T) {
	d := NewDecoder(cephenctest.Hex(t, "18"+"0201"+"04030201"+"0200000000000000"+"fbffffff"+
		"ffffffffffffffff"+"02"+"00"+"020000006162"+"01000000aa"+"00000000"+"0102"))
	if v := d.U8(); v != 0x18 {
		t.Errorf("U8 = %#x", v)
	}
	if v := d.U16(); v != 0x0102 {
		t.Errorf("U16 = %#x", v)
	}
	if v := d.U32(); v != 0x01020304 {
		t.Errorf("U32 = %#x", v)
	}
	if v := d.U64(); v != 2 {
		t.Errorf("U64 = %d", v)
	}
	if v := d.S32(); v != -5 {
		t.Errorf("S32 = %d", v)
	}
	if v := d.S64(); v != -1 {
		t.Errorf("S64 = %d", v)
	}
	if v := d.Bool(); !v {
		t.Errorf("Bool(2) = false, want true as in Ceph")
	}
	if v := d.Bool(); v {
		t.Errorf("Bool(0) = true")
	}
	if v := d.Str(); v != "ab" {
		t.Errorf("Str = %q", v)
	}
	if v := d.Bytes(); !bytes.Equal(v, []byte{0xaa}) {
		t.Errorf("Bytes = %x", v)
	}
	if v := d.Bytes(); v != nil {
		t.Errorf("empty Bytes = %#v, want nil", v)
	}
	if v := d.Raw(2); !bytes.Equal(v, []byte{1, 2}) {
		t.Errorf("Raw = %x", v)
	}
	if d.Err() != nil || d.Remaining() != 0 {
		t.Fatalf("err %v, remaining %d", d.Err(), d.Remaining())
	}
}

func TestDecoderErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		dec  func(d *Decoder)
		want error
	}{
		{"u64 short", "01020304", func(d *Decoder) { d.U64() }, ErrShortBuffer},
		{"string length past end", "05000000616263", func(d *Decoder) { d.Str() }, ErrShortBuffer},
		{"huge bufferlist length", "ffffffff00", func(d *Decoder) { d.Bytes() }, ErrShortBuffer},
		{"negative raw", "00", func(d *Decoder) { d.Raw(-1) }, ErrShortBuffer},
		{"count too large", "0300000001020304", func(d *Decoder) { d.Count(2) }, ErrShortBuffer},
		{"struct compat too new", "0302000000000000", func(d *Decoder) { d.Start(1) }, ErrVersion},
		{"struct length past end", "0101050000000102", func(d *Decoder) { d.Start(1) }, ErrShortBuffer},
		{"struct header short", "0101", func(d *Decoder) { d.Start(1) }, ErrShortBuffer},
		{"read past struct end", "01010200000001020304", func(d *Decoder) {
			s := d.Start(1)
			d.U32()
			d.Finish(s)
		}, ErrShortBuffer},
		{"finish without start", "00", func(d *Decoder) { d.Finish(Struct{}) }, ErrMalformed},
		{"finish out of order", "01010a000000" + "010102000000" + "0000" + "0000", func(d *Decoder) {
			outer := d.Start(1)
			d.Start(1)
			d.Finish(outer)
		}, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := NewDecoder(cephenctest.Hex(t, tt.in))
			tt.dec(d)
			if !errors.Is(d.Err(), tt.want) {
				t.Fatalf("err = %v, want %v", d.Err(), tt.want)
			}
			if !errors.Is(d.Err(), ErrMalformed) {
				t.Errorf("err = %v does not match ErrMalformed", d.Err())
			}
		})
	}
}

func TestDecoderErrorIsSticky(t *testing.T) {
	d := NewDecoder([]byte{1, 2, 3})
	if v := d.U32(); v != 0 {
		t.Errorf("failed read returned %d", v)
	}
	first := d.Err()
	if v := d.U8(); v != 0 {
		t.Errorf("read after failure returned %d, want 0", v)
	}
	if d.Offset() != 0 || d.Err() != first {
		t.Errorf("offset %d, err %v; want 0, %v", d.Offset(), d.Err(), first)
	}
	s := d.Start(1)
	d.Finish(s) // no-op after a failure
	if d.Err() != first {
		t.Errorf("err changed to %v", d.Err())
	}
}

func TestStructForwardCompat(t *testing.T) {
	// A v2 writer appended a field a v1 reader does not know; the reader
	// skips it on Finish and the next value decodes from the right place.
	var e Encoder
	m := e.Start(2, 1)
	e.U64(42)
	e.String("added in v2")
	e.Finish(m)
	e.U8(0x77)

	d := NewDecoder(e.Data())
	s := d.Start(1)
	if s.Version != 2 || s.Compat != 1 {
		t.Errorf("version %d compat %d", s.Version, s.Compat)
	}
	if v := d.U64(); v != 42 {
		t.Errorf("field = %d", v)
	}
	d.Finish(s)
	if v := d.U8(); v != 0x77 || d.Err() != nil {
		t.Fatalf("after struct: %#x, %v", v, d.Err())
	}
}

func TestNestedStructLimits(t *testing.T) {
	var e Encoder
	outer := e.Start(1, 1)
	inner := e.Start(1, 1)
	e.U32(1)
	e.Finish(inner)
	e.U32(2)
	e.Finish(outer)

	d := NewDecoder(e.Data())
	so := d.Start(1)
	si := d.Start(1)
	if d.Remaining() != 4 {
		t.Errorf("inner remaining %d, want 4", d.Remaining())
	}
	d.Finish(si)
	if d.Remaining() != 4 {
		t.Errorf("outer remaining %d, want 4", d.Remaining())
	}
	d.Finish(so)
	if d.Err() != nil || d.Remaining() != 0 {
		t.Fatalf("err %v remaining %d", d.Err(), d.Remaining())
	}
}

func TestHostileLengthsDoNotAllocate(t *testing.T) {
	// Lengths and counts near 4 GiB must fail before any allocation
	// proportional to them.
	in := []byte{0xff, 0xff, 0xff, 0xfe, 0}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 100 {
		for _, read := range []func(d *Decoder){
			func(d *Decoder) { d.Count(1) },
			func(d *Decoder) { d.Str() },
			func(d *Decoder) { d.Bytes() },
		} {
			d := NewDecoder(in)
			read(d)
			if !errors.Is(d.Err(), ErrShortBuffer) {
				t.Fatalf("err = %v", d.Err())
			}
		}
	}
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Errorf("%d bytes allocated rejecting hostile lengths", n)
	}
	d := NewDecoder([]byte{2, 0, 0, 0, 1, 2})
	if n := d.Count(1); n != 2 || d.Err() != nil {
		t.Errorf("Count = %d, %v", n, d.Err())
	}
}

func TestBytesAliasesInputWithCappedCapacity(t *testing.T) {
	in := []byte{1, 0, 0, 0, 0xaa, 0xbb}
	d := NewDecoder(in)
	b := d.Bytes()
	_ = append(b, 0xcc)
	if in[5] != 0xbb {
		t.Fatal("appending to a decoded bufferlist overwrote the input")
	}
}

type pair struct {
	A uint64
	B string
}

func (p pair) Encode(e *Encoder) {
	m := e.Start(1, 1)
	e.U64(p.A)
	e.String(p.B)
	e.Finish(m)
}

func (p *pair) Decode(d *Decoder) error {
	s := d.Start(1)
	p.A = d.U64()
	p.B = d.Str()
	d.Finish(s)
	return d.Err()
}

func TestMarshalUnmarshal(t *testing.T) {
	in := pair{A: math.MaxUint64, B: "x"}
	b := Marshal(in)
	var out pair
	if err := Unmarshal(append(b, 0xee), &out); err != nil {
		t.Fatal(err)
	}
	if out != in {
		t.Errorf("got %+v, want %+v", out, in)
	}
	if f := MarshalFunc(in.Encode); !bytes.Equal(f, b) {
		t.Errorf("MarshalFunc = %x, Marshal = %x", f, b)
	}
	if f := MarshalFunc(nil); f != nil {
		t.Errorf("MarshalFunc(nil) = %x", f)
	}
}
