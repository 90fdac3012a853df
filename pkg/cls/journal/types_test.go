package clsjournal

import (
	"bytes"
	"encoding/hex"
	"errors"
	"path/filepath"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc/cephenctest"
)

// goldenOmap loads the header omap a librbd of Ceph 16.2.15 wrote (see
// testdata/README.md), values as bytes.
func goldenOmap(t testing.TB, name string) map[string][]byte {
	t.Helper()
	return cephenctest.ReadHexMap(t, filepath.Join("testdata", "journal-header-omap-"+name+".json"))
}

// librbdClientData is the ClientData librbd registers its client with:
// image client meta, tag class 0, no resync requested.
var librbdClientData = []byte{2, 1, 13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// librbdTagData is a TagData with the local mirror uuid and an empty
// predecessor, as librbd writes for its first tags.
var librbdTagData = make([]byte, 25)

// cleanCommitPosition is the commit position librbd flushed on close in
// golden-clean: the newest committed entry of each of the 4 splay objects.
var cleanCommitPosition = ObjectSetPosition{ObjectPositions: []ObjectPosition{
	{ObjectNumber: 1, TagTid: 1, EntryTid: 5},
	{ObjectNumber: 0, TagTid: 1, EntryTid: 4},
	{ObjectNumber: 3, TagTid: 1, EntryTid: 3},
	{ObjectNumber: 2, TagTid: 1, EntryTid: 2},
}}

func TestGoldenEncodings(t *testing.T) {
	crash, clean := goldenOmap(t, "crash"), goldenOmap(t, "clean")
	type codec interface {
		cephenc.Encodable
		cephenc.Decodable
	}
	tests := []struct {
		name   string
		golden []byte
		want   codec
		fresh  func() codec
		equal  func(a, b codec) bool
	}{
		{
			name:   "client with empty commit position",
			golden: crash["client_"],
			want:   &Client{ID: "", Data: librbdClientData, State: ClientStateConnected},
			fresh:  func() codec { return &Client{} },
			equal:  func(a, b codec) bool { return a.(*Client).Equal(*b.(*Client)) },
		},
		{
			name:   "client with 4 commit positions",
			golden: clean["client_"],
			want:   &Client{ID: "", Data: librbdClientData, CommitPosition: cleanCommitPosition},
			fresh:  func() codec { return &Client{} },
			equal:  func(a, b codec) bool { return a.(*Client).Equal(*b.(*Client)) },
		},
		{
			name:   "tag 0",
			golden: crash["tag_0000000000000000"],
			want:   &Tag{Tid: 0, TagClass: 0, Data: librbdTagData},
			fresh:  func() codec { return &Tag{} },
			equal:  func(a, b codec) bool { return a.(*Tag).Equal(*b.(*Tag)) },
		},
		{
			name:   "tag 1",
			golden: crash["tag_0000000000000001"],
			want:   &Tag{Tid: 1, TagClass: 0, Data: librbdTagData},
			fresh:  func() codec { return &Tag{} },
			equal:  func(a, b codec) bool { return a.(*Tag).Equal(*b.(*Tag)) },
		},
		{
			name:   "object position",
			golden: clean["client_"][43:73],
			want:   &ObjectPosition{ObjectNumber: 1, TagTid: 1, EntryTid: 5},
			fresh:  func() codec { return &ObjectPosition{} },
			equal:  func(a, b codec) bool { return *a.(*ObjectPosition) == *b.(*ObjectPosition) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if len(tt.golden) == 0 {
				t.Fatal("golden value missing")
			}
			if got := cephenc.Marshal(tt.want); !bytes.Equal(got, tt.golden) {
				t.Errorf("encoding\n got %x\nwant %x", got, tt.golden)
			}
			got := tt.fresh()
			if err := cephenc.Unmarshal(tt.golden, got); err != nil {
				t.Fatal(err)
			}
			if !tt.equal(got, tt.want) {
				t.Errorf("decoded %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestGoldenHeaderScalars(t *testing.T) {
	crash := goldenOmap(t, "crash")
	// What librbd's journal got: order 24, splay width 4, pool -1, sets 0,
	// two tags allocated in class 0.
	want := map[string]string{
		"order":          "18",
		"splay_width":    "04",
		"pool_id":        "ffffffffffffffff",
		"minimum_set":    "0000000000000000",
		"active_set":     "0000000000000000",
		"next_tag_tid":   "0200000000000000",
		"next_tag_class": "0100000000000000",
	}
	for k, v := range want {
		if got := hex.EncodeToString(crash[k]); got != v {
			t.Errorf("%s = %s, want %s", k, got, v)
		}
	}
}

func TestObjectSetPositionString(t *testing.T) {
	// As `rbd journal status` prints it for golden-clean.
	want := "[positions=[[object_number=1, tag_tid=1, entry_tid=5], [object_number=0, tag_tid=1, entry_tid=4], " +
		"[object_number=3, tag_tid=1, entry_tid=3], [object_number=2, tag_tid=1, entry_tid=2]]]"
	if got := cleanCommitPosition.String(); got != want {
		t.Errorf("got %s", got)
	}
	if got := ClientStateDisconnected.String(); got != "disconnected" {
		t.Errorf("state %s", got)
	}
}

func TestDecodeErrors(t *testing.T) {
	clean := goldenOmap(t, "clean")["client_"]
	tests := []struct {
		name string
		in   []byte
		v    cephenc.Decodable
		want error
	}{
		{"truncated client", clean[:len(clean)-1], &Client{}, cephenc.ErrShortBuffer},
		{"client from the future", append([]byte{2, 2}, clean[2:]...), &Client{}, cephenc.ErrVersion},
		{"position count beyond input", []byte{1, 1, 4, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f}, &ObjectSetPosition{}, cephenc.ErrShortBuffer},
		{"empty tag", nil, &Tag{}, cephenc.ErrShortBuffer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := cephenc.Unmarshal(tt.in, tt.v); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestForwardCompatibleClient(t *testing.T) {
	// A future Client v2 with an extra field decodes; the field is skipped.
	var e cephenc.Encoder
	m := e.Start(2, 1)
	e.String("mirror")
	e.Bytes([]byte{1})
	ObjectSetPosition{}.Encode(&e)
	e.U8(uint8(ClientStateDisconnected))
	e.U64(99) // new in v2
	e.Finish(m)
	var c Client
	if err := cephenc.Unmarshal(e.Data(), &c); err != nil {
		t.Fatal(err)
	}
	if c.ID != "mirror" || c.State != ClientStateDisconnected {
		t.Errorf("got %+v", c)
	}
}
