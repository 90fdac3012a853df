package clsrbd

import (
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
)

// TestMirrorPeerDecode decodes cls::rbd::MirrorPeer records as pacific
// encodes them (v2: direction, mirror uuid, last seen) and as v1 did, in a
// list as mirror_peer_list returns it.
func TestMirrorPeerDecode(t *testing.T) {
	b := cephenc.MarshalFunc(func(e *cephenc.Encoder) {
		e.U32(2)
		m := e.Start(2, 1)
		e.String("b4317c99-da5c-4883-a3ee-8206a615477b")
		e.String("site-a")
		e.String("client.admin")
		e.S64(-1)
		e.U8(2)
		e.String("74411482-7938-48e4-9170-8837cdbbaeac")
		e.U32(1765000000)
		e.U32(0)
		e.Finish(m)
		m = e.Start(1, 1)
		e.String("0b1d")
		e.String("old-site")
		e.String("client.mirror")
		e.S64(3)
		e.Finish(m)
	})
	d := cephenc.NewDecoder(b)
	n := d.Count(6)
	var got []MirrorPeer
	for range n {
		var p MirrorPeer
		if err := p.Decode(d); err != nil {
			t.Fatal(err)
		}
		got = append(got, p)
	}
	want := []MirrorPeer{
		{UUID: "b4317c99-da5c-4883-a3ee-8206a615477b", SiteName: "site-a", ClientName: "client.admin", Direction: 2, MirrorUUID: "74411482-7938-48e4-9170-8837cdbbaeac"},
		{UUID: "0b1d", SiteName: "old-site", ClientName: "client.mirror"},
	}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("peers %+v, want %+v", got, want)
	}
	if err := (&MirrorPeer{}).Decode(cephenc.NewDecoder(b[4:10])); err == nil {
		t.Fatal("a truncated record decoded")
	}
}
