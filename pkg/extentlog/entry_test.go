package extentlog

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func TestEntryRoundTrip(t *testing.T) {
	ts := time.Unix(1700000000, 123)
	for _, e := range []Entry{
		{Kind: KindWrite, Offset: 4096, Length: 65536, CRC: 0xdeadbeef, Timestamp: ts},
		{Kind: KindDiscard, Offset: 1 << 40, Length: 1 << 20},
		{Kind: KindZero, Offset: 0, Length: 512, Timestamp: ts},
		{Kind: KindOp, Op: []byte{1, 2, 3}, Timestamp: ts},
		{Kind: KindIntent, Offset: 4 << 20, Length: 4 << 20, Timestamp: ts},
		{Kind: KindUnknown, Offset: 8 << 20, Length: 4 << 20},
	} {
		got, err := Decode(e.Encode())
		if err != nil {
			t.Fatalf("Decode(%+v): %v", e, err)
		}
		if got.Kind != e.Kind || got.Offset != e.Offset || got.Length != e.Length || got.CRC != e.CRC ||
			!got.Timestamp.Equal(e.Timestamp) || !bytes.Equal(got.Op, e.Op) {
			t.Errorf("round trip %+v -> %+v", e, got)
		}
	}
}

func TestDecodeRefuses(t *testing.T) {
	good := Entry{Kind: KindWrite, Offset: 0, Length: 4096, CRC: 1}.Encode()
	mod := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrCorrupt},
		{"short", good[:fixed-1], ErrCorrupt},
		{"librbd event", []byte{1, 1, 0x1c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, ErrCorrupt},
		{"write entry as version 2", mod(func(b []byte) []byte { b[2] = 2; return b }), ErrVersion},
		{"version 3", mod(func(b []byte) []byte { b[2] = 3; return b }), ErrVersion},
		{"version 0", mod(func(b []byte) []byte { b[2] = 0; return b }), ErrVersion},
		{"intent as version 1", func() []byte { b := Entry{Kind: KindIntent, Length: 1}.Encode(); b[2] = 1; return b }(), ErrVersion},
		{"intent with crc", Entry{Kind: KindIntent, Length: 1, CRC: 7}.Encode(), ErrCorrupt},
		{"unknown without extent", Entry{Kind: KindUnknown}.Encode(), ErrCorrupt},
		{"unknown kind", mod(func(b []byte) []byte { b[3] = 9; return b }), ErrCorrupt},
		{"trailing bytes", append(append([]byte(nil), good...), 0), ErrCorrupt},
		{"zero length", Entry{Kind: KindWrite, Offset: 5}.Encode(), ErrCorrupt},
		{"wrapping extent", Entry{Kind: KindDiscard, Offset: ^uint64(0), Length: 2}.Encode(), ErrCorrupt},
		{"write with op payload", Entry{Kind: KindWrite, Length: 1, Op: []byte{1}}.Encode(), ErrCorrupt},
		{"discard with crc", Entry{Kind: KindDiscard, Length: 1, CRC: 7}.Encode(), ErrCorrupt},
		{"op with extent", Entry{Kind: KindOp, Length: 1}.Encode(), ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Decode(tc.b); !errors.Is(err, tc.want) {
				t.Errorf("Decode = %v, want %v", err, tc.want)
			}
		})
	}
}

// FuzzDecode: Decode never panics, and what it accepts re-encodes to the
// same bytes (one encoding per entry).
func FuzzDecode(f *testing.F) {
	f.Add(Entry{Kind: KindWrite, Offset: 4096, Length: 4096, CRC: 5, Timestamp: time.Unix(1, 0)}.Encode())
	f.Add(Entry{Kind: KindOp, Op: []byte("resize")}.Encode())
	f.Add(Entry{Kind: KindIntent, Offset: 4 << 20, Length: 4 << 20}.Encode())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Decode(b)
		if err != nil {
			return
		}
		if got := e.Encode(); !bytes.Equal(got, b) {
			t.Fatalf("Decode(%x) = %+v, which encodes to %x", b, e, got)
		}
	})
}

func TestMergeExtents(t *testing.T) {
	for _, tc := range []struct {
		in, want []Extent
	}{
		{nil, nil},
		{[]Extent{{10, 5}, {0, 5}}, []Extent{{0, 5}, {10, 5}}},
		{[]Extent{{0, 5}, {5, 5}}, []Extent{{0, 10}}},
		{[]Extent{{0, 10}, {2, 3}, {9, 4}, {20, 0}}, []Extent{{0, 13}}},
	} {
		got := MergeExtents(tc.in)
		if len(got) != len(tc.want) {
			t.Fatalf("MergeExtents(%v) = %v, want %v", tc.in, got, tc.want)
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Fatalf("MergeExtents(%v) = %v, want %v", tc.in, got, tc.want)
			}
		}
	}
}

func TestParsePosition(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Position
		ok   bool
	}{
		{"", Position{}, true},
		{"3:117", Position{3, 117}, true},
		{"3", Position{}, false},
		{"a:1", Position{}, false},
		{"1:-1", Position{}, false},
	} {
		got, err := ParsePosition(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParsePosition(%q) = %v, %v", tc.in, got, err)
		}
		if tc.ok && tc.in != "" && got.String() != tc.in {
			t.Errorf("String() = %q, want %q", got.String(), tc.in)
		}
	}
	if !(Position{1, 9}).Less(Position{2, 0}) || (Position{2, 0}).Less(Position{1, 9}) || (Position{1, 1}).Less(Position{1, 1}) {
		t.Error("Less does not order by tag, then entry")
	}
}
