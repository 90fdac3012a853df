package cephenc

import (
	"testing"
)

// FuzzDecoder runs a program of reads (one op per byte of ops) over data and
// checks that the decoder never panics, never reads past its input and never
// returns more bytes than the input holds.
func FuzzDecoder(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 9, 10, 11, 12}, []byte("\x01\x01\x0c\x00\x00\x00\x02\x00\x00\x00ab\x01\x00\x00\x00\xff\x00"))
	f.Add([]byte{9, 9, 6, 10, 10}, []byte("\x01\x01\x08\x00\x00\x00\x01\x01\x02\x00\x00\x00\xff\xff"))
	f.Add([]byte{7, 8, 5}, []byte("\xff\xff\xff\xff\x01"))
	f.Fuzz(func(t *testing.T, ops, data []byte) {
		d := NewDecoder(data)
		var open []Struct
		total := 0
		for _, op := range ops {
			switch op % 13 {
			case 0:
				d.U8()
			case 1:
				d.U16()
			case 2:
				d.U32()
			case 3:
				d.U64()
			case 4:
				d.Bool()
			case 5:
				total += len(d.Str())
			case 6:
				total += len(d.Bytes())
			case 7:
				total += len(d.Raw(int(op) % 17))
			case 8:
				if n := d.Count(int(op % 5)); n > len(data) {
					t.Fatalf("Count %d exceeds input of %d bytes", n, len(data))
				}
			case 9:
				s := d.Start(op % 3)
				if d.Err() == nil {
					open = append(open, s)
				}
			case 10:
				if len(open) > 0 {
					d.Finish(open[len(open)-1])
					open = open[:len(open)-1]
				}
			case 11:
				d.S64()
			case 12:
				d.S32()
			}
			if d.Offset() > len(data) || d.Remaining() < 0 {
				t.Fatalf("offset %d remaining %d for %d bytes", d.Offset(), d.Remaining(), len(data))
			}
		}
		if total > len(data) {
			t.Fatalf("returned %d bytes from %d of input", total, len(data))
		}
	})
}

// FuzzRoundTrip checks that what an Encoder writes a Decoder reads back.
func FuzzRoundTrip(f *testing.F) {
	f.Add(uint8(1), uint16(2), uint32(3), uint64(4), int64(-1), true, "id", []byte{1, 2})
	f.Fuzz(func(t *testing.T, a uint8, b uint16, c uint32, x uint64, s int64, ok bool, str string, bl []byte) {
		var e Encoder
		outer := e.Start(3, 2)
		e.U8(a)
		e.U16(b)
		inner := e.Start(1, 1)
		e.U32(c)
		e.U64(x)
		e.Finish(inner)
		e.S64(s)
		e.Bool(ok)
		e.String(str)
		e.Bytes(bl)
		e.Finish(outer)

		d := NewDecoder(e.Data())
		so := d.Start(2)
		ga, gb := d.U8(), d.U16()
		si := d.Start(1)
		gc, gx := d.U32(), d.U64()
		d.Finish(si)
		gs, gok, gstr, gbl := d.S64(), d.Bool(), d.Str(), d.Bytes()
		d.Finish(so)
		if err := d.Err(); err != nil {
			t.Fatal(err)
		}
		if ga != a || gb != b || gc != c || gx != x || gs != s || gok != ok || gstr != str || string(gbl) != string(bl) {
			t.Fatal("round trip mismatch")
		}
		if so.Version != 3 || so.Compat != 2 || d.Remaining() != 0 {
			t.Fatalf("struct %+v remaining %d", so, d.Remaining())
		}
	})
}
