package journal

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

const goldenDir = "testdata/ceph-pacific-journal"

// goldenObjects returns the raw data objects librbd wrote, by object number.
func goldenObjects(t testing.TB, name string) (id string, objs map[uint64][]byte) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(goldenDir, name, "image_id"))
	if err != nil {
		t.Fatal(err)
	}
	id = string(bytes.TrimSpace(raw))
	objs = map[uint64][]byte{}
	for n := uint64(0); n < 4; n++ {
		b, err := os.ReadFile(filepath.Join(goldenDir, name, "objects", DataOIDPrefix(1, id)+string(rune('0'+n))))
		if err != nil {
			t.Fatal(err)
		}
		objs[n] = b
	}
	return id, objs
}

func decodeAll(t testing.TB, b []byte) []Entry {
	t.Helper()
	var out []Entry
	for off := 0; off < len(b); {
		e, n, err := DecodeEntry(b[off:])
		if err != nil {
			t.Fatalf("decode at %d: %v", off, err)
		}
		out = append(out, e)
		off += n
	}
	return out
}

// TestGoldenEntries checks the framing against librbd's bytes: every entry
// decodes, lands in the object its tid selects, and re-encodes identically.
func TestGoldenEntries(t *testing.T) {
	for _, name := range []string{"golden-crash", "golden-clean"} {
		t.Run(name, func(t *testing.T) {
			_, objs := goldenObjects(t, name)
			wantTids := map[uint64][]uint64{0: {0, 4}, 1: {1, 5}, 2: {2}, 3: {3}}
			wantLens := map[uint64]int{0: 4140, 1: 4140, 2: 16384, 3: 4184, 4: 24, 5: 556}
			for n, b := range objs {
				entries := decodeAll(t, b)
				var re []byte
				var tids []uint64
				for _, e := range entries {
					if e.TagTid != 1 {
						t.Errorf("object %d: tag %d, want 1", n, e.TagTid)
					}
					if e.EntryTid%4 != n {
						t.Errorf("entry %d in object %d", e.EntryTid, n)
					}
					if got := len(e.Data); got != wantLens[e.EntryTid] {
						t.Errorf("entry %d payload %d bytes, want %d", e.EntryTid, got, wantLens[e.EntryTid])
					}
					tids = append(tids, e.EntryTid)
					re = e.AppendEncoded(re)
				}
				if !slices.Equal(tids, wantTids[n]) {
					t.Errorf("object %d tids %v, want %v", n, tids, wantTids[n])
				}
				if !bytes.Equal(re, b) {
					t.Errorf("object %d: re-encoding differs from librbd's bytes", n)
				}
			}
		})
	}
}

func TestDecodeEntryErrors(t *testing.T) {
	good := Entry{TagTid: 7, EntryTid: 9, Data: []byte("payload")}.AppendEncoded(nil)
	flip := func(i int) []byte { b := bytes.Clone(good); b[i] ^= 0xff; return b }
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"short preamble", good[:5], ErrTruncated},
		{"short header", good[:20], ErrTruncated},
		{"short payload", good[:len(good)-6], ErrTruncated},
		{"missing crc", good[:len(good)-1], ErrTruncated},
		{"bad preamble", flip(0), ErrCorrupt},
		{"bad version", flip(8), ErrCorrupt},
		{"bad tid", flip(10), ErrCorrupt},
		{"bad payload", flip(30), ErrCorrupt},
		{"bad crc", flip(len(good) - 1), ErrCorrupt},
		{"huge length", func() []byte { b := bytes.Clone(good); b[28] = 0x7f; return b }(), ErrTruncated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := DecodeEntry(tc.in)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
	e, n, err := DecodeEntry(append(bytes.Clone(good), 1, 2, 3))
	if err != nil || n != len(good) || e.TagTid != 7 || e.EntryTid != 9 || string(e.Data) != "payload" {
		t.Fatalf("round trip: %+v %d %v", e, n, err)
	}
}

func FuzzDecodeEntry(f *testing.F) {
	_, objs := goldenObjects(f, "golden-crash")
	for _, b := range objs {
		f.Add(b)
	}
	f.Add(Entry{Data: []byte{1}}.AppendEncoded(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		for off := 0; off < len(b); {
			e, n, err := DecodeEntry(b[off:])
			if err != nil {
				if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrCorrupt) {
					t.Fatalf("unexpected error class: %v", err)
				}
				return
			}
			if n <= 0 || n > len(b)-off || n != e.EncodedLen() {
				t.Fatalf("bad length %d", n)
			}
			if re := e.AppendEncoded(nil); !bytes.Equal(re, b[off:off+n]) {
				t.Fatal("re-encoding differs")
			}
			off += n
		}
	})
}

// TestEncodeFramed: an entry encoded in place in a NewFrame buffer is
// byte for byte the entry AppendEncoded makes, within the frame's
// capacity (no copy), for payloads of several sizes.
func TestEncodeFramed(t *testing.T) {
	for _, n := range []int{0, 1, 4096, 1 << 20} {
		payload := make([]byte, n)
		for i := range payload {
			payload[i] = byte(i*7 + 3)
		}
		e := Entry{TagTid: 5, EntryTid: 1234, Data: payload}
		frame := append(NewFrame(n), payload...)
		first := &frame[0]
		got := Entry{TagTid: 5, EntryTid: 1234, Data: FramePayload(frame)}.encodeFramed(frame)
		if want := e.AppendEncoded(nil); !bytes.Equal(got, want) {
			t.Fatalf("%d-byte payload: framed encoding differs from AppendEncoded", n)
		}
		if &got[0] != first {
			t.Fatalf("%d-byte payload: the framed encoding was copied", n)
		}
		dec, used, err := DecodeEntry(got)
		if err != nil || used != len(got) || !bytes.Equal(dec.Data, payload) {
			t.Fatalf("%d-byte payload: decode: %v (used %d of %d)", n, err, used, len(got))
		}
	}
}
