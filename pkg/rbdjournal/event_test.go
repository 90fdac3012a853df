package rbdjournal

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc/cephenctest"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
)

// eventsEqual compares events by type and encoding, so that nil and empty
// byte slices compare equal.
func eventsEqual(a, b Event) bool {
	if reflect.TypeOf(a) != reflect.TypeOf(b) || a.Type() != b.Type() {
		return false
	}
	var ea, eb cephenc.Encoder
	a.encode(&ea)
	b.encode(&eb)
	return bytes.Equal(ea.Data(), eb.Data())
}

// A timestamp of 2026-11-21T10:14:18.489074525Z, as in golden-crash.
var goldenTime = time.Unix(0x6b016efa, 0x1d26af5d).UTC()

const goldenMeta = "0101 08000000 fa6e016b 5daf261d"

func TestEventEntryEncodings(t *testing.T) {
	tests := []struct {
		name  string
		event Event
		body  string // after the envelope header, type included
	}{
		{"discard", AioDiscardEvent{Offset: 4096, Length: 8192, DiscardGranularityBytes: 0},
			"00000000 0010000000000000 0020000000000000 00 00000000"},
		{"discard with granularity", AioDiscardEvent{Offset: 1, Length: 2, DiscardGranularityBytes: 65536},
			"00000000 0100000000000000 0200000000000000 01 00000100"},
		{"write", AioWriteEvent{Offset: 512, Length: 2, Data: []byte{0xab, 0xcd}},
			"01000000 0002000000000000 0200000000000000 02000000abcd"},
		{"flush", AioFlushEvent{}, "02000000"},
		{"op finish: op tid twice", OpFinishEvent{OpTid: 7, R: -22},
			"03000000 0700000000000000 0700000000000000 eaffffff"},
		{"resize", ResizeEvent{OpTid: 9, Size: 1 << 30},
			"0b000000 0900000000000000 0000004000000000"},
		{"demote/promote", DemotePromoteEvent{}, "0d000000"},
		{"write same", AioWriteSameEvent{Offset: 0, Length: 4096, Data: []byte{0, 0, 0, 0}},
			"12000000 0000000000000000 0010000000000000 0400000000000000"},
		{"compare and write", AioCompareAndWriteEvent{Offset: 8, Length: 1, CmpData: []byte{1}, WriteData: []byte{2}},
			"13000000 0800000000000000 0100000000000000 0100000001 0100000002"},
		{"snap create", SnapCreateEvent{OpTid: 3, Name: "s1"},
			"04000000 0300000000000000 020000007331 010104000000 00000000"},
		{"snap remove, mirror namespace kept raw", SnapRemoveEvent{OpTid: 4, Name: "x",
			Namespace: rbdnotify.SnapshotNamespace{Type: rbdnotify.SnapNamespaceMirror, Raw: []byte{9}}},
			"05000000 0400000000000000 0100000078 010105000000 03000000 09"},
		{"unknown (snap rename)", UnknownEvent{EventType: EventTypeSnapRename, Raw: []byte{1, 2, 3}},
			"06000000 010203"},
		{"unknown future type", UnknownEvent{EventType: 99}, "63000000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := cephenctest.Hex(t, tt.body)
			var want cephenc.Encoder
			want.U8(5)
			want.U8(1)
			want.U32(uint32(len(body)))
			want.Raw(body)
			want.Raw(cephenctest.Hex(t, goldenMeta))

			got := cephenc.Marshal(EventEntry{Event: tt.event, Timestamp: goldenTime})
			if !bytes.Equal(got, want.Data()) {
				t.Errorf("encoding\n got %x\nwant %x", got, want.Data())
			}
			var ee EventEntry
			if err := cephenc.Unmarshal(got, &ee); err != nil {
				t.Fatal(err)
			}
			if !eventsEqual(ee.Event, tt.event) || !ee.Timestamp.Equal(goldenTime) {
				t.Errorf("decoded %#v at %v", ee.Event, ee.Timestamp)
			}
		})
	}
}

// entry builds an EventEntry payload of version v with the given body and,
// for v >= 4, the golden metadata block.
func entry(t *testing.T, v uint8, body string) []byte {
	b := cephenctest.Hex(t, body)
	var e cephenc.Encoder
	e.U8(v)
	e.U8(1)
	e.U32(uint32(len(b)))
	e.Raw(b)
	if v >= 4 {
		e.Raw(cephenctest.Hex(t, goldenMeta))
	}
	return e.Data()
}

func TestEventEntryOlderVersions(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want Event
		ts   time.Time
	}{
		{"v3 discard without skip flag or timestamp",
			entry(t, 3, "00000000 0100000000000000 0200000000000000"),
			AioDiscardEvent{Offset: 1, Length: 2}, time.Time{}},
		{"v4 discard skipping partial discards",
			entry(t, 4, "00000000 0100000000000000 0200000000000000 01"),
			AioDiscardEvent{Offset: 1, Length: 2, DiscardGranularityBytes: ^uint32(0)}, goldenTime},
		{"v4 discard not skipping",
			entry(t, 4, "00000000 0100000000000000 0200000000000000 00"),
			AioDiscardEvent{Offset: 1, Length: 2}, goldenTime},
		{"v6 write with a field added later",
			entry(t, 6, "01000000 0000000000000000 0100000000000000 01000000ff 99999999"),
			AioWriteEvent{Offset: 0, Length: 1, Data: []byte{0xff}}, goldenTime},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ee EventEntry
			if err := cephenc.Unmarshal(tt.in, &ee); err != nil {
				t.Fatal(err)
			}
			if !eventsEqual(ee.Event, tt.want) {
				t.Errorf("decoded %#v, want %#v", ee.Event, tt.want)
			}
			if !ee.Timestamp.Equal(tt.ts) {
				t.Errorf("timestamp %v, want %v", ee.Timestamp, tt.ts)
			}
		})
	}
}

func TestEventEntryDecodeErrors(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, cephenc.ErrShortBuffer},
		{"compat from the future", append([]byte{6, 2}, entry(t, 5, "02000000")[2:]...), cephenc.ErrVersion},
		{"write data past the struct", entry(t, 5, "01000000 0000000000000000 0100000000000000 05000000ff"), cephenc.ErrShortBuffer},
		{"missing metadata", entry(t, 5, "02000000")[:10], cephenc.ErrShortBuffer},
		{"no type", entry(t, 3, ""), cephenc.ErrShortBuffer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ee EventEntry
			if err := cephenc.Unmarshal(tt.in, &ee); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestZeroTimestampRoundTrips(t *testing.T) {
	b := cephenc.Marshal(EventEntry{Event: AioFlushEvent{}})
	if !bytes.HasSuffix(b, cephenctest.Hex(t, "0101 08000000 00000000 00000000")) {
		t.Errorf("zero time encoded as %x", b)
	}
	var ee EventEntry
	if err := cephenc.Unmarshal(b, &ee); err != nil || !ee.Timestamp.IsZero() {
		t.Errorf("decoded %v, %v", ee.Timestamp, err)
	}
}

func TestEventTypeString(t *testing.T) {
	tests := map[EventType]string{
		EventTypeAioDiscard:         "AioDiscard",
		EventTypeAioWrite:           "AioWrite",
		EventTypeAioFlush:           "AioFlush",
		EventTypeOpFinish:           "OpFinish",
		EventTypeResize:             "Resize",
		EventTypeDemotePromote:      "Demote/Promote",
		EventTypeMetadataRemove:     "MetadataRemove",
		EventTypeAioCompareAndWrite: "AioCompareAndWrite",
		20:                          "Unknown (20)",
	}
	for typ, want := range tests {
		if got := typ.String(); got != want {
			t.Errorf("%d: %q, want %q", uint32(typ), got, want)
		}
	}
}

func TestClientData(t *testing.T) {
	tests := []struct {
		name string
		meta ClientMeta
		hex  string
	}{
		{"image", ImageClientMeta{TagClass: 3, ResyncRequested: true},
			"0201 0d000000 00000000 0300000000000000 01"},
		{"mirror peer kept raw", UnknownClientMeta{Type: MirrorPeerClientMetaType, Raw: []byte{4, 0, 0, 0, 'a', 'b', 'c', 'd'}},
			"0201 0c000000 01000000 0400000061626364"},
		{"cli", UnknownClientMeta{Type: CLIClientMetaType}, "0201 04000000 02000000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := cephenctest.Hex(t, tt.hex)
			if got := cephenc.Marshal(ClientData{Meta: tt.meta}); !bytes.Equal(got, want) {
				t.Errorf("encoding %x, want %x", got, want)
			}
			var cd ClientData
			if err := cephenc.Unmarshal(want, &cd); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(cd.Meta, tt.meta) {
				t.Errorf("decoded %#v, want %#v", cd.Meta, tt.meta)
			}
		})
	}
	var cd ClientData
	if err := cephenc.Unmarshal(cephenctest.Hex(t, "0202 00000000"), &cd); !errors.Is(err, cephenc.ErrVersion) {
		t.Errorf("compat 2: %v", err)
	}
}

func TestTagData(t *testing.T) {
	td := TagData{MirrorUUID: "remote", Predecessor: TagPredecessor{
		MirrorUUID: LocalMirrorUUID, CommitValid: true, TagTid: 4, EntryTid: 1000,
	}}
	want := cephenctest.Hex(t, "06000000 72656d6f7465 00000000 01 0400000000000000 e803000000000000")
	if got := cephenc.Marshal(td); !bytes.Equal(got, want) {
		t.Errorf("encoding %x, want %x", got, want)
	}
	var got TagData
	if err := cephenc.Unmarshal(want, &got); err != nil || got != td {
		t.Errorf("decoded %+v, %v", got, err)
	}
	if err := cephenc.Unmarshal(want[:len(want)-1], &got); !errors.Is(err, cephenc.ErrShortBuffer) {
		t.Errorf("truncated: %v", err)
	}
}

func TestSplitWrite(t *testing.T) {
	tests := []struct {
		name    string
		offset  uint64
		size    int
		max     uint64
		lengths []uint64
	}{
		{"librbd default, 20 KiB", 8 << 20, 20480, DefaultMaxPayloadBytes, []uint64{16340, 4140}},
		{"exactly one full event", 0, 16340, DefaultMaxPayloadBytes, []uint64{16340}},
		{"one byte more", 0, 16341, DefaultMaxPayloadBytes, []uint64{16340, 1}},
		{"empty write is one empty event", 7, 0, DefaultMaxPayloadBytes, []uint64{0}},
		{"1 MiB cap", 0, 3 << 20, 1 << 20, []uint64{1<<20 - 44, 1<<20 - 44, 1<<20 - 44, 132}},
		{"tiny cap", 100, 5, 46, []uint64{2, 2, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := make([]byte, tt.size)
			for i := range data {
				data[i] = byte(i)
			}
			events := SplitWrite(tt.offset, data, tt.max)
			var lengths []uint64
			var joined []byte
			off := tt.offset
			for _, ev := range events {
				lengths = append(lengths, ev.Length)
				if ev.Offset != off || uint64(len(ev.Data)) != ev.Length {
					t.Errorf("event at %d of %d bytes (%d data), want offset %d", ev.Offset, ev.Length, len(ev.Data), off)
				}
				off += ev.Length
				joined = append(joined, ev.Data...)
				if n := uint64(len(cephenc.Marshal(EventEntry{Event: ev, Timestamp: goldenTime}))); n > tt.max {
					t.Errorf("payload %d > cap %d", n, tt.max)
				}
			}
			if !reflect.DeepEqual(lengths, tt.lengths) {
				t.Errorf("lengths %v, want %v", lengths, tt.lengths)
			}
			if !bytes.Equal(joined, data) {
				t.Error("events do not carry the data in order")
			}
		})
	}
}

func TestSplitWriteFullPayloadIsExactlyTheCap(t *testing.T) {
	ev := SplitWrite(0, make([]byte, 100000), DefaultMaxPayloadBytes)[0]
	if n := len(cephenc.Marshal(EventEntry{Event: ev, Timestamp: goldenTime})); n != DefaultMaxPayloadBytes {
		t.Errorf("full event payload %d bytes, want %d", n, DefaultMaxPayloadBytes)
	}
}

func TestSplitWritePanicsWithoutRoom(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("no panic")
		}
	}()
	SplitWrite(0, []byte{1}, AioWriteFixedSize)
}

func TestMaxAppendSize(t *testing.T) {
	tests := []struct {
		order uint8
		cap   uint64
		want  uint64
	}{
		{24, DefaultMaxPayloadBytes, 16384},
		{24, 0, 1<<24 - 33},
		{12, 1 << 20, 4096 - 33},
		{5, 0, 0},
		{64, 0, 0},
	}
	for _, tt := range tests {
		if got := MaxAppendSize(tt.order, tt.cap); got != tt.want {
			t.Errorf("MaxAppendSize(%d, %d) = %d, want %d", tt.order, tt.cap, got, tt.want)
		}
	}
}
