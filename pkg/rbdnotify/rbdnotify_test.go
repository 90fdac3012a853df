package rbdnotify

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc/cephenctest"
)

// h decodes hex with spaces and newlines for readability.
var h = cephenctest.MustHex

var req12 = AsyncRequestID{Client: ClientID{GID: 0, Handle: 1}, RequestID: 2}

// testInstances are librbd's NotifyMessage::generate_test_instances.
func testInstances() []Payload {
	user := SnapshotNamespace{}
	return []Payload{
		AcquiredLock{Client: ClientID{1, 2}},
		ReleasedLock{Client: ClientID{1, 2}},
		RequestLock{Client: ClientID{1, 2}, Force: true},
		HeaderUpdate{},
		AsyncProgress{Request: req12, Offset: 3, Total: 4},
		AsyncComplete{Request: req12, Result: 3},
		Flatten{Request: req12},
		Resize{Request: req12, Size: 123, AllowShrink: true},
		SnapCreate{Request: req12, Namespace: user, Name: "foo", Flags: 1},
		SnapRemove{Namespace: user, Name: "foo", Request: req12},
		SnapProtect{Namespace: user, Name: "foo"},
		SnapUnprotect{Namespace: user, Name: "foo"},
		RebuildObjectMap{Request: req12},
		Rename{ImageName: "foo"},
		UpdateFeatures{Features: 1, Enabled: true},
		Migrate{Request: req12},
		Sparsify{Request: req12, SparseSize: 1},
		Quiesce{Request: req12},
		Unquiesce{Request: req12},
		// Beyond librbd's instances: the other namespaces and a rename.
		SnapRename{SnapID: 7, Name: "bar"},
		SnapRemove{Namespace: SnapshotNamespace{Type: SnapNamespaceGroup, GroupPool: 3, GroupID: "g", GroupSnapshotID: "s"}, Name: "x"},
		SnapRemove{Namespace: SnapshotNamespace{Type: SnapNamespaceTrash, OriginalName: "o", OriginalType: SnapNamespaceUser}, Name: "y"},
		SnapCreate{Namespace: SnapshotNamespace{Type: SnapNamespaceMirror, Raw: []byte{1, 2, 3}}, Name: "m"},
	}
}

func TestRoundTrip(t *testing.T) {
	for _, p := range testInstances() {
		b := Marshal(p)
		m, err := Parse(b)
		if err != nil {
			t.Fatalf("%v: %v", p.Op(), err)
		}
		if m.Version != NotifyMessageVersion {
			t.Errorf("%v: version %d", p.Op(), m.Version)
		}
		if !reflect.DeepEqual(m.Payload, p) {
			t.Errorf("%v: decoded %#v, want %#v", p.Op(), m.Payload, p)
		}
		if again := Marshal(m.Payload); !bytes.Equal(again, b) {
			t.Errorf("%v: re-encoding differs:\n%x\n%x", p.Op(), again, b)
		}
		if s := p.Op().String(); strings.HasPrefix(s, "Unknown") {
			t.Errorf("op %d has no name", p.Op())
		}
	}
}

// TestGolden checks encodings derived field by field from librbd's
// WatchNotifyTypes.cc (Pacific): ENCODE_START(7, 1), the op, the payload.
func TestGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    Payload
		want string
	}{
		{"request lock", RequestLock{Client: ClientID{GID: 4123, Handle: 94000000000001}, Force: true}, `
			07 01 15000000  02000000
			1b10000000000000  01e09b147e550000  01`},
		{"acquired lock", AcquiredLock{Client: ClientID{GID: 1, Handle: 2}}, `
			07 01 14000000  00000000  0100000000000000 0200000000000000`},
		{"header update", HeaderUpdate{}, `07 01 04000000 03000000`},
		{"resize", Resize{Request: AsyncRequestID{Client: ClientID{5, 6}, RequestID: 7}, Size: 1 << 30, AllowShrink: false}, `
			07 01 25000000  07000000  0000004000000000
			0500000000000000 0600000000000000 0700000000000000  00`},
		{"async complete", AsyncComplete{Request: req12, Result: -int32(syscall.EBUSY)}, `
			07 01 20000000  05000000  0000000000000000 0100000000000000 0200000000000000  f0ffffff`},
		{"snap create", SnapCreate{Request: req12, Name: "s1", Flags: 2}, `
			07 01 34000000  08000000  02000000 7331  01 01 04000000 00000000
			0000000000000000 0100000000000000 0200000000000000  0200000000000000`},
		{"update features", UpdateFeatures{Features: 64, Enabled: false}, `
			07 01 0d000000  0f000000  4000000000000000 00`},
	} {
		got := Marshal(tc.p)
		if want := h(tc.want); !bytes.Equal(got, want) {
			t.Errorf("%s:\n got %x\nwant %x", tc.name, got, want)
		}
	}
	if got, want := Response(syscall.EROFS), h("01 01 04000000 e2ffffff"); !bytes.Equal(got, want) {
		t.Errorf("response -EROFS: %x, want %x", got, want)
	}
}

// TestOlderVersions decodes messages as older librbd versions wrote them.
func TestOlderVersions(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want Payload
	}{
		{"v1 acquired lock (no client id)", `01 01 04000000 00000000`, AcquiredLock{}},
		{"v2 request lock (no force flag)", `02 01 14000000 02000000 0100000000000000 0200000000000000`,
			RequestLock{Client: ClientID{1, 2}}},
		{"v3 resize (no allow_shrink: allowed)", `03 01 24000000 07000000 7b00000000000000
			0000000000000000 0100000000000000 0200000000000000`, Resize{Request: req12, Size: 123, AllowShrink: true}},
		{"v4 snap create (name only)", `04 01 0b000000 08000000 03000000 666f6f`, SnapCreate{Name: "foo"}},
		{"v5 snap create (namespace after the name)", `05 01 1d000000 08000000 03000000 666f6f
			01 01 0c000000 02000000 00000000 00000000`,
			SnapCreate{Name: "foo", Namespace: SnapshotNamespace{Type: SnapNamespaceTrash}}},
		{"v6 snap remove", `06 01 13000000 09000000 01000000 78  01 01 04000000 00000000`, SnapRemove{Name: "x"}},
		{"v7 snap remove without a request id (early Pacific)", `07 01 13000000 09000000 01000000 78  01 01 04000000 00000000`, SnapRemove{Name: "x"}},
		{"v7 snap remove as `rbd snap rm` of Ceph 16.2.15 sends it", `07012b00000009000000010000007801010400000000000000c810000000000000e0670144e17f00000100000000000000`,
			SnapRemove{Name: "x", Request: AsyncRequestID{Client: ClientID{GID: 0x10c8, Handle: 0x7fe1440167e0}, RequestID: 1}}},
		{"unknown op", `07 01 07000000 63000000 aabbcc`, Unknown{Code: 99, Data: []byte{0xaa, 0xbb, 0xcc}}},
		{"a newer writer's extra bytes are skipped", `09 01 0c000000 03000000 ffffffffffffffff`, HeaderUpdate{}},
	} {
		m, err := Parse(h(tc.in))
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !reflect.DeepEqual(m.Payload, tc.want) {
			t.Errorf("%s: got %#v, want %#v", tc.name, m.Payload, tc.want)
		}
	}
	if m, err := Parse(nil); err != nil || m.Payload != (HeaderUpdate{}) {
		t.Errorf("empty notification: %#v, %v; want the legacy header update", m, err)
	}
}

func TestMalformed(t *testing.T) {
	for _, in := range []string{
		`07`,                                  // truncated envelope
		`07 01 ff000000 02000000`,             // length beyond the input
		`07 02 04000000 02000000`,             // compat 2: a writer this decoder cannot read
		`07 01 08000000 02000000 01000000`,    // request lock cut inside the client id
		`07 01 06000000 0e000000 0500`,        // rename: string length cut
		`07 01 0c000000 0e000000 ff000000 41`, // rename: string longer than the struct
	} {
		if _, err := Parse(h(in)); !errors.Is(err, cephenc.ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", in, err)
		}
	}
}

func TestResponse(t *testing.T) {
	r, ok, err := ParseResponse(Response(syscall.EROFS))
	if err != nil || !ok || r.Result != -int32(syscall.EROFS) || !errors.Is(r.Err(), syscall.EROFS) {
		t.Fatalf("response: %+v %v %v", r, ok, err)
	}
	if _, ok, err := ParseResponse(nil); ok || err != nil {
		t.Fatalf("empty reply: %v %v", ok, err)
	}
	if r, ok, err := ParseResponse(Response(0)); !ok || err != nil || r.Err() != nil {
		t.Fatalf("ResponseMessage(0): %+v %v %v", r, ok, err)
	}
	if _, _, err := ParseResponse(h("01 01 02000000 0000")); !errors.Is(err, cephenc.ErrMalformed) {
		t.Fatalf("short response: %v", err)
	}
}
