package rbdjournal

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc/cephenctest"
)

// testEntry is a journal entry as framed in a journal data object.
type testEntry struct {
	entryTid, tagTid uint64
	payload          []byte
}

const preamble = 0x3141592653589793

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// rawCRC32C is Ceph's crc32c(0, b): CRC-32C with a zero seed and no final
// inversion. Go's Update inverts on the way in and out, so invert around it.
func rawCRC32C(b []byte) uint32 { return ^crc32.Update(^uint32(0), castagnoli, b) }

// parseEntries is a minimal, test-only parser of a journal data object:
// u64 preamble | u8 version 1 | u64 entry tid | u64 tag tid | u32 len +
// payload | u32 crc of everything before it. (pkg/journal owns the real one.)
func parseEntries(t *testing.T, obj []byte) []testEntry {
	t.Helper()
	var entries []testEntry
	for len(obj) > 0 {
		if len(obj) < 33 {
			t.Fatalf("%d trailing bytes", len(obj))
		}
		if p := binary.LittleEndian.Uint64(obj); p != preamble {
			t.Fatalf("preamble %#x", p)
		}
		if obj[8] != 1 {
			t.Fatalf("entry version %d", obj[8])
		}
		n := int(binary.LittleEndian.Uint32(obj[25:]))
		end := 29 + n
		if end+4 > len(obj) {
			t.Fatalf("entry of %d bytes past the object's end", n)
		}
		if got, want := rawCRC32C(obj[:end]), binary.LittleEndian.Uint32(obj[end:]); got != want {
			t.Fatalf("crc %#x, stored %#x", got, want)
		}
		entries = append(entries, testEntry{
			entryTid: binary.LittleEndian.Uint64(obj[9:]),
			tagTid:   binary.LittleEndian.Uint64(obj[17:]),
			payload:  obj[29:end],
		})
		obj = obj[end+4:]
	}
	return entries
}

// goldenEntries reads the entries of golden-crash's 4 splay objects, in
// entry tid order.
func goldenEntries(t *testing.T) []testEntry {
	t.Helper()
	var all []testEntry
	for i := range 4 {
		obj, err := os.ReadFile(filepath.Join("testdata", "golden-crash", fmt.Sprintf("journal_data.1.10257c397567.%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range parseEntries(t, obj) {
			if got := e.entryTid % 4; got != uint64(i) {
				t.Errorf("entry %d in splay object %d", e.entryTid, i)
			}
			all = append(all, e)
		}
	}
	slices.SortFunc(all, func(a, b testEntry) int { return int(a.entryTid) - int(b.entryTid) })
	return all
}

func ts(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse("2006-01-02T15:04:05.000000", s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestGoldenJournalEntries(t *testing.T) {
	const mib = 1 << 20
	fill := func(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }
	// The 6 entries librbd journaled (README), with the timestamps
	// `rbd journal inspect` printed (to the microsecond).
	want := []struct {
		event Event
		ts    string
	}{
		{AioWriteEvent{Offset: 0, Length: 4096, Data: fill(0x11, 4096)}, "2026-11-21T10:14:18.489074"},
		{AioWriteEvent{Offset: 1 * mib, Length: 4096, Data: fill(0x22, 4096)}, "2026-11-21T10:14:18.490383"},
		{AioWriteEvent{Offset: 8 * mib, Length: 16340, Data: fill(0x33, 16340)}, "2026-11-21T10:14:18.491311"},
		{AioWriteEvent{Offset: 8*mib + 16340, Length: 4140, Data: fill(0x33, 4140)}, "2026-11-21T10:14:18.491313"},
		{AioFlushEvent{}, "2026-11-21T10:14:18.492251"},
		{AioWriteEvent{Offset: 16 * mib, Length: 512, Data: fill(0x44, 512)}, "2026-11-21T10:14:18.492703"},
	}
	entries := goldenEntries(t)
	if len(entries) != len(want) {
		t.Fatalf("%d entries, want %d", len(entries), len(want))
	}
	for i, e := range entries {
		t.Run(fmt.Sprintf("entry %d", i), func(t *testing.T) {
			if e.entryTid != uint64(i) || e.tagTid != 1 {
				t.Errorf("entry tid %d tag tid %d, want %d and 1", e.entryTid, e.tagTid, i)
			}
			var ee EventEntry
			if err := cephenc.Unmarshal(e.payload, &ee); err != nil {
				t.Fatal(err)
			}
			if !eventsEqual(ee.Event, want[i].event) {
				t.Errorf("event %s %s, want %s", ee.Event.Type(), describe(ee.Event), describe(want[i].event))
			}
			if got := ee.Timestamp.Truncate(time.Microsecond); !got.Equal(ts(t, want[i].ts)) {
				t.Errorf("timestamp %v, want %s", ee.Timestamp, want[i].ts)
			}
			// Re-encoding the event with the same timestamp gives librbd's
			// bytes back.
			if got := cephenc.Marshal(EventEntry{Event: want[i].event, Timestamp: ee.Timestamp}); !bytes.Equal(got, e.payload) {
				t.Errorf("re-encoded payload differs:\n got %x\nwant %x", head(got), head(e.payload))
			}
		})
	}
}

func head(b []byte) []byte { return b[:min(len(b), 64)] }

func describe(ev Event) string {
	if w, ok := ev.(AioWriteEvent); ok {
		return fmt.Sprintf("{%d %d %d bytes}", w.Offset, w.Length, len(w.Data))
	}
	return fmt.Sprintf("%+v", ev)
}

func TestGoldenSplitMatchesLibrbd(t *testing.T) {
	// Step 3 of the golden run: a 20480-byte write at 8 MiB.
	entries := goldenEntries(t)
	data := bytes.Repeat([]byte{0x33}, 20480)
	events := SplitWrite(8<<20, data, MaxAppendSize(24, DefaultMaxPayloadBytes))
	if len(events) != 2 {
		t.Fatalf("%d events", len(events))
	}
	for i, ev := range events {
		var got EventEntry
		if err := cephenc.Unmarshal(entries[2+i].payload, &got); err != nil {
			t.Fatal(err)
		}
		if !eventsEqual(got.Event, ev) {
			t.Errorf("event %d: %s, librbd wrote %s", i, describe(ev), describe(got.Event))
		}
		if n := len(cephenc.Marshal(EventEntry{Event: ev, Timestamp: got.Timestamp})); n > DefaultMaxPayloadBytes {
			t.Errorf("payload of %d bytes", n)
		}
	}
}

// goldenHeaderOmap is the journal header omap of testdata/golden-crash.
func goldenHeaderOmap(t testing.TB) map[string][]byte {
	t.Helper()
	return cephenctest.ReadHexMap(t, filepath.Join("testdata", "golden-crash", "journal-header-omap.json"))
}

func TestGoldenClientAndTagData(t *testing.T) {
	omap := goldenHeaderOmap(t)
	// The data fields of the cls Client and Tag records: skip the
	// envelopes and fixed fields (client: header 6, empty id 4, data
	// length 4; tag: header 6, tid 8, class 8, data length 4).
	clientData := omap["client_"][14:33]
	tagData := omap["tag_0000000000000001"][26:]

	var cd ClientData
	if err := cephenc.Unmarshal(clientData, &cd); err != nil {
		t.Fatal(err)
	}
	if cd.Meta != (ImageClientMeta{TagClass: 0}) {
		t.Errorf("client meta %+v", cd.Meta)
	}
	if got := cephenc.Marshal(ClientData{Meta: ImageClientMeta{}}); !bytes.Equal(got, clientData) {
		t.Errorf("client data %x, want %x", got, clientData)
	}

	var td TagData
	if err := cephenc.Unmarshal(tagData, &td); err != nil {
		t.Fatal(err)
	}
	if td != (TagData{MirrorUUID: LocalMirrorUUID}) {
		t.Errorf("tag data %+v", td)
	}
	if got := cephenc.Marshal(TagData{}); !bytes.Equal(got, tagData) {
		t.Errorf("tag data %x, want %x", got, tagData)
	}
}
