package clsjournal

import (
	"bytes"
	"maps"
	"slices"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/classtest"
)

// seedGolden adds every value of the golden header omaps to f's corpus.
func seedGolden(f *testing.F) {
	for _, name := range []string{"crash", "clean"} {
		omap := goldenOmap(f, name)
		for _, k := range slices.Sorted(maps.Keys(omap)) {
			f.Add(omap[k])
		}
	}
}

// fuzzCodec checks that decoding arbitrary input does not panic and that
// whatever decodes re-encodes to a value that decodes the same.
func fuzzCodec[T any, P interface {
	*T
	cephenc.Decodable
	cephenc.Encodable
}](f *testing.F, equal func(a, b *T) bool) {
	seedGolden(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		v := P(new(T))
		if err := cephenc.Unmarshal(in, v); err != nil {
			return
		}
		again := P(new(T))
		if err := cephenc.Unmarshal(cephenc.Marshal(v), again); err != nil {
			t.Fatalf("re-encoded value does not decode: %v", err)
		}
		if !equal((*T)(v), (*T)(again)) {
			t.Fatalf("round trip changed %+v into %+v", v, again)
		}
	})
}

func FuzzObjectPosition(f *testing.F) {
	fuzzCodec(f, func(a, b *ObjectPosition) bool { return *a == *b })
}

func FuzzObjectSetPosition(f *testing.F) {
	fuzzCodec(f, func(a, b *ObjectSetPosition) bool { return a.Equal(*b) })
}

func FuzzClient(f *testing.F) {
	fuzzCodec(f, func(a, b *Client) bool { return a.Equal(*b) })
}

func FuzzTag(f *testing.F) {
	fuzzCodec(f, func(a, b *Tag) bool { return a.Equal(*b) })
}

// FuzzClassMethods calls every method of the class with fuzzed input on a
// populated header, optionally with one omap value replaced by fuzzed bytes,
// and checks that nothing panics and every failure carries an errno.
func FuzzClassMethods(f *testing.F) {
	methods := slices.Sorted(maps.Keys(Class()))
	keys := []string{"", keyOrder, keySplayWidth, keyActiveSet, keyMinimumSet, keyNextTagTid,
		keyNextTagClass, clientKey(""), clientKey("b"), tagKey(0), tagKey(1)}
	for i, m := range methods {
		var e cephenc.Encoder
		switch m {
		case "client_commit":
			e.String("")
			cleanCommitPosition.Encode(&e)
		case "tag_create":
			e.U64(2)
			e.U64(TagClassNew)
			e.Bytes(librbdTagData)
		case "tag_list":
			e.Raw(encodeTagListInput(0, 256, "", nil))
		case "client_list":
			e.String("")
			e.U64(256)
		case "client_register", "client_update_data":
			e.String("b")
			e.Bytes(librbdClientData)
		case "get_client", "client_unregister":
			e.String("b")
		default:
			e.U64(1)
		}
		f.Add(uint8(i), e.Data(), uint8(0), []byte(nil))
	}
	f.Add(uint8(0), []byte{}, uint8(8), []byte{1, 1, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, method uint8, in []byte, key uint8, value []byte) {
		o := fuzzHeader(t)
		if k := keys[int(key)%len(keys)]; k != "" {
			o.Omap[k] = value
		}
		name := methods[int(method)%len(methods)]
		out, err := Class()[name].Call(o, in)
		if err != nil {
			if objstore.Errno(err) == 0 {
				t.Fatalf("%s failed without an errno: %v", name, err)
			}
			return
		}
		if len(out) > len(in)+totalSize(o)+64 {
			t.Fatalf("%s returned %d bytes", name, len(out))
		}
	})
}

// fuzzHeader is the golden-clean header with a second client and a data
// payload, as a fresh test double.
func fuzzHeader(t *testing.T) *classtest.Object {
	p := newPool()
	steps := []func(*objstore.WriteOp){
		func(op *objstore.WriteOp) { Create(op, 24, 4, -1) },
		func(op *objstore.WriteOp) { ClientRegister(op, "", librbdClientData) },
		func(op *objstore.WriteOp) { TagCreate(op, 0, TagClassNew, librbdTagData) },
		func(op *objstore.WriteOp) { TagCreate(op, 1, 0, librbdTagData) },
		commit("", cleanCommitPosition.ObjectPositions...),
		register("b"),
		func(op *objstore.WriteOp) { op.Append(bytes.Repeat([]byte{0x11}, 32)) },
	}
	for _, s := range steps {
		if err := operate(p, s); err != nil {
			t.Fatal(err)
		}
	}
	return p.Objects[testOID]
}

func totalSize(o *classtest.Object) int {
	n := len(o.Data)
	for k, v := range o.Omap {
		n += len(k) + len(v)
	}
	return n
}
