package rbdnotify

import (
	"reflect"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
)

// FuzzParse: decoding never panics, and whatever decodes re-encodes (as a
// current writer would) to a message that decodes to the same payload.
func FuzzParse(f *testing.F) {
	for _, p := range testInstances() {
		f.Add(Marshal(p))
	}
	f.Add([]byte{})
	f.Add(h(`01 01 04000000 00000000`))
	f.Add(h(`05 01 1d000000 08000000 03000000 666f6f 01 01 0c000000 02000000 00000000 00000000`))
	f.Add(h(`07 01 07000000 63000000 aabbcc`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			return
		}
		again, err := Parse(Marshal(m.Payload))
		if err != nil {
			t.Fatalf("re-encoded %#v does not decode: %v", m.Payload, err)
		}
		if !reflect.DeepEqual(again.Payload, m.Payload) {
			t.Fatalf("round trip changed the payload:\n%#v\n%#v", m.Payload, again.Payload)
		}
	})
}

// FuzzParseResponse: a reply decodes or fails cleanly, and round-trips.
func FuzzParseResponse(f *testing.F) {
	f.Add(Response(30))
	f.Add(Response(0))
	f.Add([]byte{})
	f.Add(h("02 01 08000000 e2ffffff 00000000"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, ok, err := ParseResponse(b)
		if err != nil || !ok {
			return
		}
		r2, ok, err := ParseResponse(cephenc.Marshal(r))
		if err != nil || !ok || r2 != r {
			t.Fatalf("round trip of %+v: %+v %v %v", r, r2, ok, err)
		}
	})
}

// FuzzSnapshotNamespace: a namespace decodes or fails cleanly, and
// round-trips.
func FuzzSnapshotNamespace(f *testing.F) {
	for _, ns := range []SnapshotNamespace{{}, {Type: SnapNamespaceGroup, GroupPool: -1, GroupID: "g", GroupSnapshotID: "s"},
		{Type: SnapNamespaceTrash, OriginalName: "n", OriginalType: 1}, {Type: SnapNamespaceMirror, Raw: []byte{1, 0, 0}}} {
		f.Add(cephenc.Marshal(ns))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var ns SnapshotNamespace
		if cephenc.Unmarshal(b, &ns) != nil {
			return
		}
		var again SnapshotNamespace
		if err := cephenc.Unmarshal(cephenc.Marshal(ns), &again); err != nil || !reflect.DeepEqual(again, ns) {
			t.Fatalf("round trip of %#v: %#v %v", ns, again, err)
		}
	})
}
