//go:build ceph && pacific

package ceph

import (
	"bytes"
	"errors"
	"slices"
	"syscall"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// TestDecodeShimResults: the omap page and the notify reply the shim
// encodes decode back, and every truncation of them is an EIO-class error
// (errShortResult), never a panic or a silently shorter result.
func TestDecodeShimResults(t *testing.T) {
	var e cephenc.Encoder
	e.Bool(true)
	e.U32(2)
	e.String("a")
	e.Bytes(nil)
	e.String("b")
	e.Bytes([]byte("vb"))
	page := e.Data()
	got, err := decodePage(page)
	want := objstore.OmapPage{More: true, Entries: []objstore.KV{{Key: "a", Value: []byte{}}, {Key: "b", Value: []byte("vb")}}}
	if err != nil || got.More != want.More || !slices.EqualFunc(got.Entries, want.Entries, func(x, y objstore.KV) bool {
		return x.Key == y.Key && bytes.Equal(x.Value, y.Value) && x.Value != nil
	}) {
		t.Errorf("decodePage = %+v, %v; want %+v", got, err, want)
	}

	e = cephenc.Encoder{}
	e.U32(1)
	e.U64(4123)
	e.U64(7)
	e.Bytes([]byte("pong"))
	e.U32(1)
	e.U64(4124)
	e.U64(8)
	reply := e.Data()
	res, err := decodeNotifyReply(reply)
	if err != nil || len(res.Acks) != 1 || res.Acks[0].Watcher.Client.ID != 4123 || res.Acks[0].Watcher.Cookie != 7 ||
		string(res.Acks[0].Reply) != "pong" || len(res.TimedOut) != 1 || res.TimedOut[0].Client.ID != 4124 || res.TimedOut[0].Cookie != 8 {
		t.Errorf("decodeNotifyReply = %+v, %v", res, err)
	}

	for n := range len(page) {
		if _, err := decodePage(page[:n]); !errors.Is(err, syscall.EIO) {
			t.Errorf("decodePage of %d of %d bytes: %v, want EIO", n, len(page), err)
		}
	}
	for n := 1; n < len(reply); n++ { // an empty reply is no acks
		if _, err := decodeNotifyReply(reply[:n]); !errors.Is(err, syscall.EIO) {
			t.Errorf("decodeNotifyReply of %d of %d bytes: %v, want EIO", n, len(reply), err)
		}
	}
}
