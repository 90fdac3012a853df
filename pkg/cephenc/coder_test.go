package cephenc

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc/cephenctest"
)

// coded is a value of every kind a Coder codes, in a struct envelope.
type coded struct {
	A     uint8
	B     uint32
	C     uint64
	D     int64
	S     string
	Data  []byte
	Inner inner
}

type inner struct{ X uint64 }

func (i *inner) denc(c Coder) { c.Struct(1, 1, func() { c.U64(&i.X) }) }

func (i inner) Encode(e *Encoder)        { i.denc(Encoding(e)) }
func (i *inner) Decode(d *Decoder) error { return DecodeWith(d, i.denc) }

func (v *coded) denc(c Coder) {
	c.Struct(2, 1, func() {
		c.U8(&v.A)
		c.U32(&v.B)
		c.U64(&v.C)
		c.S64(&v.D)
		c.String(&v.S)
		c.Bytes(&v.Data)
		c.Value(&v.Inner)
	})
}

// TestCoder: a field list run by Encoding writes what the same fields
// written by hand with an Encoder give, and run by DecodeWith reads it back;
// decoded bytes do not alias the input; a short input fails with
// ErrShortBuffer.
func TestCoder(t *testing.T) {
	in := coded{A: 1, B: 2, C: 3, D: -4, S: "ab", Data: []byte{0xaa}, Inner: inner{X: 5}}
	var want Encoder
	m := want.Start(2, 1)
	want.U8(1)
	want.U32(2)
	want.U64(3)
	want.S64(-4)
	want.String("ab")
	want.Bytes([]byte{0xaa})
	im := want.Start(1, 1)
	want.U64(5)
	want.Finish(im)
	want.Finish(m)

	var e Encoder
	in.denc(Encoding(&e))
	if !bytes.Equal(e.Data(), want.Data()) {
		t.Fatalf("encoded %s, want %s", hex.EncodeToString(e.Data()), hex.EncodeToString(want.Data()))
	}
	b := bytes.Clone(e.Data())
	var out coded
	if err := DecodeWith(NewDecoder(b), out.denc); err != nil {
		t.Fatal(err)
	}
	if out.A != in.A || out.B != in.B || out.C != in.C || out.D != in.D || out.S != in.S ||
		!bytes.Equal(out.Data, in.Data) || out.Inner != in.Inner {
		t.Fatalf("decoded %+v, want %+v", out, in)
	}
	clear(b)
	if out.Data[0] != 0xaa {
		t.Error("decoded bytes alias the input")
	}
	var empty coded
	empty.Data = []byte{1}
	var ee Encoder
	(&coded{}).denc(Encoding(&ee))
	if err := DecodeWith(NewDecoder(ee.Data()), empty.denc); err != nil || empty.Data != nil {
		t.Errorf("empty bufferlist: %v, %v; want nil, nil", empty.Data, err)
	}
	var short coded
	if err := DecodeWith(NewDecoder(e.Data()[:len(e.Data())-1]), short.denc); !errors.Is(err, ErrShortBuffer) {
		t.Errorf("short input: %v, want ErrShortBuffer", err)
	}
}

// TestLists: EncodeList writes a count and the elements, DecodeList reads
// them back (an empty list as an empty, not nil, slice) and fails on a
// count the input cannot hold or on a bad element.
func TestLists(t *testing.T) {
	l := []inner{{X: 1}, {X: 2}}
	var e Encoder
	EncodeList(&e, l)
	want := "02000000" + "010108000000" + "0100000000000000" + "010108000000" + "0200000000000000"
	if got := hex.EncodeToString(e.Data()); got != want {
		t.Fatalf("encoded %s, want %s", got, want)
	}
	got, err := DecodeList[inner](NewDecoder(e.Data()), 6)
	if err != nil || len(got) != 2 || got[0] != l[0] || got[1] != l[1] {
		t.Fatalf("decoded %v, %v; want %v", got, err, l)
	}
	if got, err := DecodeList[inner](NewDecoder(cephenctest.Hex(t, "00000000")), 6); err != nil || got == nil || len(got) != 0 {
		t.Errorf("empty list: %#v, %v", got, err)
	}
	if _, err := DecodeList[inner](NewDecoder(cephenctest.Hex(t, "ffffffff")), 6); !errors.Is(err, ErrShortBuffer) {
		t.Errorf("huge count: %v, want ErrShortBuffer", err)
	}
	if _, err := DecodeList[inner](NewDecoder(e.Data()[:len(e.Data())-1]), 6); !errors.Is(err, ErrShortBuffer) {
		t.Errorf("short element: %v, want ErrShortBuffer", err)
	}
}

// TestRest: Rest reads what is left of the innermost struct, nil when
// nothing is, and stops at the struct's end.
func TestRest(t *testing.T) {
	d := NewDecoder(cephenctest.Hex(t, "01 01 03000000 aa bbcc dd"))
	s := d.Start(1)
	d.U8()
	if got := d.Rest(); !bytes.Equal(got, []byte{0xbb, 0xcc}) {
		t.Errorf("rest of the struct %x, want bbcc", got)
	}
	if got := d.Rest(); got != nil {
		t.Errorf("rest of a read struct %x, want nil", got)
	}
	d.Finish(s)
	if got := d.Rest(); !bytes.Equal(got, []byte{0xdd}) || d.Err() != nil {
		t.Errorf("rest of the input %x (%v), want dd", got, d.Err())
	}
}

// TestDecodeAs: DecodeAs decodes as DecodeWith and names what it decoded in
// its error, which still matches the Decoder's.
func TestDecodeAs(t *testing.T) {
	b := MarshalFunc(inner{X: 7}.Encode)
	var i inner
	if err := DecodeAs(NewDecoder(b), "inner", i.denc); err != nil || i.X != 7 {
		t.Fatalf("DecodeAs = %v, %+v", err, i)
	}
	err := DecodeAs(NewDecoder(b[:len(b)-1]), "inner", i.denc)
	if !errors.Is(err, ErrShortBuffer) || !strings.HasPrefix(err.Error(), "decode inner: ") {
		t.Fatalf("DecodeAs of a short input: %v", err)
	}
}
