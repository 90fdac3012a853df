package rbdjournal

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
)

// seedPayloads adds the golden entry payloads to f's corpus.
func seedPayloads(f *testing.F) {
	for i := range 4 {
		obj, err := os.ReadFile(filepath.Join("testdata", "golden-crash", "journal_data.1.10257c397567."+string(rune('0'+i))))
		if err != nil {
			f.Fatal(err)
		}
		// Entries: 29 bytes of header, the payload, a 4-byte crc. Seed
		// small payloads whole and big ones cut, so the fuzzer stays fast.
		for len(obj) >= 33 {
			n := int(uint32(obj[25]) | uint32(obj[26])<<8 | uint32(obj[27])<<16 | uint32(obj[28])<<24)
			if 29+n+4 > len(obj) {
				break
			}
			p := obj[29 : 29+n]
			if len(p) > 600 {
				p = append(append([]byte(nil), p[:40]...), p[len(p)-14:]...)
			}
			f.Add(p)
			obj = obj[29+n+4:]
		}
	}
}

func seedHeaderData(f *testing.F) {
	omap := goldenHeaderOmap(f)
	f.Add(omap["client_"][14:33])            // ClientData
	f.Add(omap["tag_0000000000000001"][26:]) // TagData
}

// roundTrip checks that a decoded value re-encodes to bytes that decode to
// the same encoding again.
func roundTrip[P interface {
	cephenc.Decodable
	cephenc.Encodable
}](t *testing.T, in []byte, fresh func() P) {
	v := fresh()
	if err := cephenc.Unmarshal(in, v); err != nil {
		return
	}
	enc := cephenc.Marshal(v)
	again := fresh()
	if err := cephenc.Unmarshal(enc, again); err != nil {
		t.Fatalf("re-encoded value does not decode: %v", err)
	}
	if enc2 := cephenc.Marshal(again); !bytes.Equal(enc, enc2) {
		t.Fatalf("encoding not stable:\n%x\n%x", enc, enc2)
	}
}

func FuzzEventEntry(f *testing.F) {
	seedPayloads(f)
	for _, ev := range []Event{
		AioDiscardEvent{Offset: 1, Length: 2, DiscardGranularityBytes: 4096},
		AioWriteEvent{Offset: 3, Length: 4, Data: []byte{1, 2, 3, 4}},
		OpFinishEvent{OpTid: 5, R: -5},
		ResizeEvent{OpTid: 6, Size: 7},
		DemotePromoteEvent{},
		AioWriteSameEvent{Offset: 8, Length: 512, Data: []byte{9}},
		AioCompareAndWriteEvent{Offset: 10, Length: 1, CmpData: []byte{1}, WriteData: []byte{2}},
		UnknownEvent{EventType: EventTypeSnapRename, Raw: []byte{1, 0, 0, 0}},
	} {
		f.Add(cephenc.Marshal(EventEntry{Event: ev, Timestamp: goldenTime}))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		roundTrip(t, in, func() *EventEntry { return &EventEntry{} })
	})
}

func FuzzClientData(f *testing.F) {
	seedHeaderData(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		roundTrip(t, in, func() *ClientData { return &ClientData{} })
	})
}

func FuzzTagData(f *testing.F) {
	seedHeaderData(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		roundTrip(t, in, func() *TagData { return &TagData{} })
	})
}

// FuzzSplitWrite checks that the events carry the data in order, within the
// cap.
func FuzzSplitWrite(f *testing.F) {
	f.Add(uint64(8<<20), uint16(20480), uint16(16384))
	f.Fuzz(func(t *testing.T, offset uint64, size, max uint16) {
		if uint64(max) <= AioWriteFixedSize {
			return
		}
		data := make([]byte, size)
		var n uint64
		for _, ev := range SplitWrite(offset, data, uint64(max)) {
			if ev.Offset != offset+n || ev.Length != uint64(len(ev.Data)) || ev.Length+AioWriteFixedSize > uint64(max) {
				t.Fatalf("bad event %d+%d", ev.Offset, ev.Length)
			}
			n += ev.Length
		}
		if n != uint64(size) {
			t.Fatalf("%d of %d bytes", n, size)
		}
	})
}
