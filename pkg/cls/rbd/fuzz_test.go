package clsrbd

import (
	"slices"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/classtest"
)

// populated returns an object holding a header, a directory and an id at
// once, so that every method finds something to read.
func populated(t testing.TB) *classtest.Object {
	o := classtest.NewObject()
	if _, err := create(o, cephenc.MarshalFunc(func(e *cephenc.Encoder) {
		e.U64(1 << 30)
		e.U8(22)
		e.U64(FeatureLayering | FeatureStripingV2 | FeatureExclusiveLock)
		e.String("rbd_data.abc")
	})); err != nil {
		t.Fatal(err)
	}
	overlap := uint64(4096)
	o.Omap[keyParent] = cephenc.MarshalFunc(parentRecord{poolID: 1, imageID: "p", snapID: 2, headOverlap: &overlap}.encode)
	o.Omap[snapKey(2)] = cephenc.MarshalFunc(func(e *cephenc.Encoder) {
		m := e.Start(8, 8)
		e.U64(2)
		e.String("s")
		e.U64(4096)
		e.Finish(m)
	})
	o.Omap[dirKeyForName("vol")] = encString("abc")
	o.Omap[dirKeyForID("abc")] = encString("vol")
	o.Data = encString("abc")
	return o
}

// hasErrno reports whether err carries an errno, as every method error must
// (it becomes the return code a Ceph client sees).
func hasErrno(err error) bool { return objstore.Errno(err) != 0 }

// FuzzMethodInput calls every method with arbitrary input: no panic, every
// failure carries an errno, and a successful output decodes with the
// client's decoder.
func FuzzMethodInput(f *testing.F) {
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range Class() {
			if !yield(n) {
				return
			}
		}
	})
	f.Add(uint8(0), []byte{})
	f.Add(uint8(1), u64Bytes(NoSnap))
	f.Add(uint8(2), cephenc.MarshalFunc(func(e *cephenc.Encoder) { e.String("vol"); e.String("abc") }))
	f.Add(uint8(3), cephenc.MarshalFunc(func(e *cephenc.Encoder) { e.String(""); e.U64(100) }))
	f.Add(uint8(4), cephenc.MarshalFunc(func(e *cephenc.Encoder) {
		e.U64(1)
		e.U8(12)
		e.U64(1)
		e.String("p")
		e.S64(-1)
	}))
	f.Fuzz(func(t *testing.T, which uint8, in []byte) {
		name := names[int(which)%len(names)]
		o := populated(t)
		out, err := Class()[name].Call(o, in)
		if err != nil {
			if !hasErrno(err) {
				t.Fatalf("%s: error without errno: %v", name, err)
			}
			return
		}
		checkOutput(t, name, out)
	})
}

// checkOutput decodes a method's output as the client would.
func checkOutput(t *testing.T, name string, out []byte) {
	d := cephenc.NewDecoder(out)
	switch name {
	case "get_size":
		decodeSize(d)
	case "get_features", "get_stripe_unit_count":
		d.U64()
		d.U64()
	case "get_object_prefix", "get_id", "dir_get_id", "dir_get_name":
		d.Str()
	case "get_data_pool", "get_all_features", "op_features_get":
		d.U64()
	case "children_list":
		_, _ = decChildren(d)
	case "get_snapcontext":
		var c SnapContext
		_ = c.Decode(d)
	case "get_parent":
		decodeParentInfo(d)
	case "get_create_timestamp", "get_access_timestamp", "get_modify_timestamp":
		var u UTime
		_ = u.Decode(d)
	case "dir_list":
		decodeDirEntries(d)
	default:
		if len(out) != 0 {
			t.Fatalf("%s: unexpected output %x", name, out)
		}
		return
	}
	if err := d.Err(); err != nil {
		t.Fatalf("%s: output %x does not decode: %v", name, out, err)
	}
}

// FuzzStoredValues corrupts the stored values every read method decodes:
// no panic, failures carry an errno (EIO for undecodable values).
func FuzzStoredValues(f *testing.F) {
	f.Add(uint8(0), []byte{}, []byte{1, 2, 3})
	f.Add(uint8(4), u64Bytes(7), []byte{0xff, 0xff, 0xff, 0xff})
	f.Add(uint8(5), []byte{2, 2, 0xff, 0xff, 0xff, 0x7f}, []byte{8, 8, 4, 0, 0, 0})
	keys := []string{keySize, keyOrder, keyFeatures, keyObjectPrefix, keySnapSeq, keyParent,
		keyCreateTimestamp, keyDataPoolID, keyStripeUnit, keyStripeCount, snapKey(2), dirKeyForName("vol"), dirKeyForID("abc")}
	class := Class()
	f.Fuzz(func(t *testing.T, which uint8, v1, v2 []byte) {
		k := keys[int(which)%len(keys)]
		o := populated(t)
		o.Omap[k] = v1
		o.Data = v2
		for name, m := range class {
			if m.Write {
				continue
			}
			in := u64Bytes(NoSnap)
			switch name {
			case "get_size", "get_parent":
				if which&0x80 != 0 {
					in = u64Bytes(2)
				}
			case "dir_get_id":
				in = encString("vol")
			case "dir_get_name":
				in = encString("abc")
			case "dir_list":
				in = cephenc.MarshalFunc(func(e *cephenc.Encoder) { e.String(""); e.U64(10) })
			}
			out, err := m.Call(o, in)
			if err != nil {
				if !hasErrno(err) {
					t.Fatalf("%s with %s=%x: error without errno: %v", name, k, v1, err)
				}
				continue
			}
			checkOutput(t, name, out)
		}
	})
}

// FuzzDecoders feeds arbitrary bytes to every decoder of a method output or
// stored value: no panic, and no allocation beyond what the input can hold.
func FuzzDecoders(f *testing.F) {
	f.Add(cephenc.MarshalFunc(SnapContext{Seq: 5, Snaps: []uint64{5, 3}}.Encode))
	f.Add(cephenc.MarshalFunc(parentRecord{poolID: 1, imageID: "x", snapID: 3}.encode))
	f.Add(cephenc.MarshalFunc(func(e *cephenc.Encoder) { encodeDirEntries(e, []DirEntry{{"a", "b"}}) }))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, b []byte) {
		var c SnapContext
		if err := c.Decode(cephenc.NewDecoder(b)); err == nil {
			if len(c.Snaps)*8 > len(b) {
				t.Fatalf("%d snaps from %d bytes", len(c.Snaps), len(b))
			}
			if err := cephenc.Unmarshal(cephenc.MarshalFunc(c.Encode), &c); err != nil {
				t.Fatalf("re-encoded snap context does not decode: %v", err)
			}
		}
		var p parentRecord
		if err := p.decode(cephenc.NewDecoder(b)); err == nil {
			var q parentRecord
			if err := q.decode(cephenc.NewDecoder(cephenc.MarshalFunc(p.encode))); err != nil {
				t.Fatalf("re-encoded parent does not decode: %v", err)
			}
			if q.poolID != p.poolID || q.imageID != p.imageID || q.snapID != p.snapID || q.poolNamespace != p.poolNamespace ||
				(q.headOverlap == nil) != (p.headOverlap == nil) || q.headOverlap != nil && *q.headOverlap != *p.headOverlap {
				t.Fatalf("parent round trip: %+v != %+v", q, p)
			}
		}
		d := cephenc.NewDecoder(b)
		if ents := decodeDirEntries(d); len(ents)*8 > len(b) {
			t.Fatalf("%d entries from %d bytes", len(ents), len(b))
		}
		decodeParentInfo(cephenc.NewDecoder(b))
		decSnapImageSize(cephenc.NewDecoder(b))
		var u UTime
		_ = u.Decode(cephenc.NewDecoder(b))
		snapIDFromKey(string(b))
	})
}
