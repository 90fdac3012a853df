package clsrbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc/cephenctest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/classtest"
)

// newPool is an empty pool with the rbd class.
func newPool() *classtest.Pool {
	return classtest.NewPool(map[string]objstore.Class{className: Class()})
}

func call1(t *testing.T, o *classtest.Object, method string, in []byte) ([]byte, error) {
	t.Helper()
	m, ok := Class()[method]
	if !ok {
		t.Fatalf("no method %s", method)
	}
	return m.Call(o, in)
}

func mustCreate(t *testing.T, p *classtest.Pool, oid string, size uint64, order uint8, features uint64, prefix string) {
	t.Helper()
	var op objstore.WriteOp
	op.Create(true)
	Create(&op, size, order, features, prefix, -1)
	if err := p.Operate(context.Background(), oid, &op); err != nil {
		t.Fatalf("create %s: %v", oid, err)
	}
}

// TestCreateHeaderLayout checks the omap rbd.create writes against
// cls_rbd.cc create(): keys size, order, features, object_prefix, snap_seq
// and the three timestamps (utime_t: u32 sec, u32 nsec, all the same
// instant), nothing else without the data-pool feature.
func TestCreateHeaderLayout(t *testing.T) {
	p := newPool()
	before := time.Now().Truncate(time.Second)
	mustCreate(t, p, HeaderOID("102770f22d36"), 64<<20, 22, 0x45, "rbd_data.102770f22d36")
	after := time.Now()
	o := p.Objects[HeaderOID("102770f22d36")]
	want := map[string][]byte{
		"size":          cephenctest.Hex(t, "0000000400000000"),
		"order":         cephenctest.Hex(t, "16"),
		"features":      cephenctest.Hex(t, "4500000000000000"),
		"object_prefix": append(cephenctest.Hex(t, "15000000"), "rbd_data.102770f22d36"...),
		"snap_seq":      cephenctest.Hex(t, "0000000000000000"),
	}
	ts := o.Omap["create_timestamp"]
	if len(ts) != 8 {
		t.Fatalf("create_timestamp = %x, want 8 bytes", ts)
	}
	created := time.Unix(int64(binary.LittleEndian.Uint32(ts)), int64(binary.LittleEndian.Uint32(ts[4:])))
	if created.Before(before) || created.After(after) {
		t.Fatalf("create_timestamp %v not in [%v, %v]", created, before, after)
	}
	for _, k := range []string{"create_timestamp", "access_timestamp", "modify_timestamp"} {
		want[k] = ts
	}
	if !maps.EqualFunc(o.Omap, want, bytes.Equal) {
		t.Fatalf("header omap:\n got %x\nwant %x", o.Omap, want)
	}
	if len(o.Data) != 0 {
		t.Fatalf("header data = %x, want none", o.Data)
	}
}

func TestCreateErrors(t *testing.T) {
	enc := func(size uint64, order uint8, features uint64, prefix string, pool *int64) []byte {
		var e cephenc.Encoder
		e.U64(size)
		e.U8(order)
		e.U64(features)
		e.String(prefix)
		if pool != nil {
			e.S64(*pool)
		}
		return e.Data()
	}
	pool5 := int64(5)
	none := int64(-1)
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"ok without pool id", enc(1, 22, 1, "rbd_data.x", nil), nil},
		{"ok with pool -1", enc(1, 22, 1, "rbd_data.x", &none), nil},
		{"data pool", enc(1, 22, FeatureDataPool, "rbd_data.1.x", &pool5), nil},
		{"unknown feature", enc(1, 22, 1<<40, "rbd_data.x", nil), syscall.ENOSYS},
		{"empty prefix", enc(1, 22, 1, "", nil), syscall.EINVAL},
		{"operations", enc(1, 22, FeatureOperations, "rbd_data.x", nil), syscall.EINVAL},
		{"data pool feature without pool", enc(1, 22, FeatureDataPool, "rbd_data.x", nil), syscall.EINVAL},
		{"pool without feature", enc(1, 22, 1, "rbd_data.x", &pool5), syscall.EINVAL},
		{"truncated", enc(1, 22, 1, "rbd_data.x", nil)[:12], syscall.EINVAL},
		{"partial pool id", append(enc(1, 22, 1, "rbd_data.x", nil), 1, 2), syscall.EINVAL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := classtest.NewObject()
			_, err := call1(t, o, "create", tt.in)
			if tt.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if _, err := call1(t, o, "create", tt.in); !errors.Is(err, syscall.EEXIST) {
					t.Fatalf("second create = %v, want EEXIST", err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("create = %v, want %v", err, tt.want)
			}
		})
	}
	o := classtest.NewObject()
	if _, err := call1(t, o, "create", enc(1, 22, FeatureDataPool, "rbd_data.1.x", &pool5)); err != nil {
		t.Fatal(err)
	}
	if got := o.Omap["data_pool_id"]; !bytes.Equal(got, cephenctest.Hex(t, "0500000000000000")) {
		t.Fatalf("data_pool_id = %x", got)
	}
}

func TestHeaderMethods(t *testing.T) {
	ctx := context.Background()
	p := newPool()
	hdr := HeaderOID("abc")
	mustCreate(t, p, hdr, 10<<20, 22, FeatureLayering|FeatureExclusiveLock|FeatureJournaling, "rbd_data.abc")

	size, order, err := GetSize(ctx, p, hdr, NoSnap)
	if err != nil || size != 10<<20 || order != 22 {
		t.Fatalf("GetSize = %d, %d, %v", size, order, err)
	}
	f, inc, err := GetFeatures(ctx, p, hdr, false)
	if err != nil || f != 0x45 || inc != 0x45 {
		t.Fatalf("GetFeatures(rw) = %x, %x, %v", f, inc, err)
	}
	if _, inc, _ := GetFeatures(ctx, p, hdr, true); inc != FeatureLayering {
		t.Fatalf("GetFeatures(ro) incompatible = %x, want layering", inc)
	}
	if pfx, err := GetObjectPrefix(ctx, p, hdr); err != nil || pfx != "rbd_data.abc" {
		t.Fatalf("GetObjectPrefix = %q, %v", pfx, err)
	}
	if dp, err := GetDataPool(ctx, p, hdr); err != nil || dp != -1 {
		t.Fatalf("GetDataPool = %d, %v", dp, err)
	}
	if sc, err := GetSnapContext(ctx, p, hdr); err != nil || sc.Seq != 0 || len(sc.Snaps) != 0 {
		t.Fatalf("GetSnapContext = %+v, %v", sc, err)
	}
	if pi, err := GetParent(ctx, p, hdr, NoSnap); err != nil || pi != (ParentInfo{PoolID: -1, SnapID: NoSnap}) {
		t.Fatalf("GetParent = %+v, %v", pi, err)
	}
	if pfx, ord, err := GetImmutableMetadata(ctx, p, hdr); err != nil || pfx != "rbd_data.abc" || ord != 22 {
		t.Fatalf("GetImmutableMetadata = %q, %d, %v", pfx, ord, err)
	}
	m, err := GetMutableMetadata(ctx, p, hdr, false)
	if err != nil || m.Size != 10<<20 || m.Features != 0x45 || m.Incompatible != 0x45 || m.Parent.HasParent() {
		t.Fatalf("GetMutableMetadata = %+v, %v", m, err)
	}
	if _, _, err := GetStripeUnitCount(ctx, p, hdr); !errors.Is(err, syscall.ENOEXEC) {
		t.Fatalf("GetStripeUnitCount without striping = %v, want ENOEXEC", err)
	}
	if all, err := GetAllFeatures(ctx, p, hdr); err != nil || all != FeaturesAll {
		t.Fatalf("GetAllFeatures = %x, %v", all, err)
	}
	ct, err := GetCreateTimestamp(ctx, p, hdr)
	if err != nil || time.Since(ct) > time.Minute {
		t.Fatalf("GetCreateTimestamp = %v, %v", ct, err)
	}

	// set_size: grow and shrink.
	for _, s := range []uint64{1 << 40, 4096, 0} {
		var op objstore.WriteOp
		SetSize(&op, s)
		if err := p.Operate(ctx, hdr, &op); err != nil {
			t.Fatal(err)
		}
		if got, _, _ := GetSize(ctx, p, hdr, NoSnap); got != s {
			t.Fatalf("size after SetSize(%d) = %d", s, got)
		}
	}

	// set_modify_timestamp moves the modify timestamp only.
	old := slices.Clone(p.Objects[hdr].Omap["modify_timestamp"])
	time.Sleep(2 * time.Millisecond)
	var op objstore.WriteOp
	SetModifyTimestamp(&op)
	if err := p.Operate(ctx, hdr, &op); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(old, p.Objects[hdr].Omap["modify_timestamp"]) {
		t.Fatal("modify_timestamp unchanged")
	}
	if !bytes.Equal(p.Objects[hdr].Omap["create_timestamp"], p.Objects[hdr].Omap["access_timestamp"]) {
		t.Fatal("access_timestamp changed")
	}

	// Every read method on a missing header is ENOENT; set_size too.
	for _, name := range []string{"get_size", "get_features", "get_object_prefix", "get_data_pool", "get_snapcontext", "get_parent", "get_stripe_unit_count", "get_create_timestamp", "get_all_features", "get_id", "dir_get_id", "dir_get_name", "dir_list"} {
		var op objstore.ReadOp
		op.Exec("rbd", name, cephenctest.Hex(t, "feffffffffffffff feffffffffffffff"))
		if err := p.Read(ctx, "missing", &op); !errors.Is(err, objstore.ErrNotFound) {
			t.Errorf("%s on a missing object = %v, want ENOENT", name, err)
		}
	}
	op = objstore.WriteOp{}
	SetSize(&op, 1)
	if err := p.Operate(ctx, "missing", &op); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("set_size on a missing object = %v, want ENOENT", err)
	}
}

func TestSetFeatures(t *testing.T) {
	base := FeatureLayering | FeatureExclusiveLock | FeatureDeepFlatten
	tests := []struct {
		name           string
		features, mask uint64
		want           uint64
		err            error
	}{
		{"enable journaling", FeatureJournaling, FeatureJournaling, base | FeatureJournaling, nil},
		{"disable exclusive lock", 0, FeatureExclusiveLock, base &^ FeatureExclusiveLock, nil},
		{"disable deep flatten", 0, FeatureDeepFlatten, base &^ FeatureDeepFlatten, nil},
		{"enable deep flatten", FeatureDeepFlatten, FeatureDeepFlatten, 0, syscall.EINVAL},
		{"disable layering", 0, FeatureLayering, 0, syscall.EINVAL},
		{"enable layering", FeatureLayering, FeatureLayering, 0, syscall.EINVAL},
		{"internal", FeatureOperations, FeatureOperations, 0, syscall.EINVAL},
		{"unknown bits masked off", 1 << 40, 1 << 40, base, nil},
		{"no change", 0, 0, base, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := classtest.NewObject()
			o.Exists = true
			o.Omap["features"] = u64Bytes(base)
			var e cephenc.Encoder
			e.U64(tt.features)
			e.U64(tt.mask)
			_, err := call1(t, o, "set_features", e.Data())
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("set_features = %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := binary.LittleEndian.Uint64(o.Omap["features"]); got != tt.want {
				t.Fatalf("features = %x, want %x", got, tt.want)
			}
		})
	}
}

func TestSnapContextAndSnapshotSize(t *testing.T) {
	o := classtest.NewObject()
	if _, err := call1(t, o, "create", cephenc.MarshalFunc(func(e *cephenc.Encoder) {
		e.U64(100)
		e.U8(22)
		e.U64(1)
		e.String("rbd_data.x")
	})); err != nil {
		t.Fatal(err)
	}
	// Snapshot records as a Ceph 16 OSD writes them: ENCODE_START(8, 8)
	// then u64 id, string name, u64 image_size, u8 protection, u64 flags,
	// the user namespace, utime, u32 child count, no parent overlap.
	for _, id := range []uint64{3, 0x11, 7} {
		var e cephenc.Encoder
		m := e.Start(8, 8)
		e.U64(id)
		e.String(fmt.Sprint("snap", id))
		e.U64(id * 1000)
		e.Raw(cephenctest.Hex(t, "00 0000000000000000 01010400000000000000 86d9146b2ac0a400 00000000 00"))
		e.Finish(m)
		o.Omap[snapKey(id)] = e.Data()
	}
	o.Omap["snap_seq"] = u64Bytes(0x12)
	o.Omap["snapshot_zzz"] = nil // sorts after the real ones; parses as 0
	out, err := call1(t, o, "get_snapcontext", nil)
	if err != nil {
		t.Fatal(err)
	}
	var sc SnapContext
	if err := sc.Decode(cephenc.NewDecoder(out)); err != nil {
		t.Fatal(err)
	}
	if sc.Seq != 0x12 || !slices.Equal(sc.Snaps, []uint64{0, 0x11, 7, 3}) {
		t.Fatalf("snap context = %+v", sc)
	}
	out, err = call1(t, o, "get_size", u64Bytes(0x11))
	if err != nil || !bytes.Equal(out, cephenctest.Hex(t, "16 6842000000000000")) {
		t.Fatalf("get_size(snap 0x11) = %x, %v", out, err)
	}
	if _, err := call1(t, o, "get_size", u64Bytes(4)); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("get_size(missing snap) = %v, want ENOENT", err)
	}
	if out, err := call1(t, o, "get_parent", u64Bytes(0x11)); err != nil || !bytes.Equal(out[:8], u64Bytes(^uint64(0))) {
		t.Fatalf("get_parent(snap) = %x, %v, want no parent", out, err)
	}
	// Snapshot keys are many pages long (RBD_MAX_KEYS_READ is 64).
	for id := uint64(100); id < 300; id++ {
		o.Omap[snapKey(id)] = nil
	}
	out, _ = call1(t, o, "get_snapcontext", nil)
	if err := sc.Decode(cephenc.NewDecoder(out)); err != nil || len(sc.Snaps) != 204 || sc.Snaps[1] != 299 {
		t.Fatalf("snap context of 204 snapshots = %d snaps, first %v, %v", len(sc.Snaps), sc.Snaps[:2], err)
	}
}

func TestParent(t *testing.T) {
	overlap := uint64(1 << 20)
	tests := []struct {
		name     string
		features uint64
		stored   []byte
		want     ParentInfo
		err      error
	}{
		{"no parent", FeatureLayering, nil, ParentInfo{PoolID: -1, SnapID: NoSnap}, nil},
		{"v2 parent", FeatureLayering, cephenc.MarshalFunc(parentRecord{poolID: 2, imageID: "p1", snapID: 4, headOverlap: &overlap}.encode), ParentInfo{2, "p1", 4, 1 << 20}, nil},
		{"v2 parent without head overlap", FeatureLayering, cephenc.MarshalFunc(parentRecord{poolID: 2, imageID: "p1", snapID: 4}.encode), ParentInfo{2, "p1", 4, 0}, nil},
		// ENCODE_START(1, 1), s64 pool, string id, u64 snap, u64 overlap
		{"v1 parent", FeatureLayering, cephenctest.Hex(t, "0101 1e000000 0300000000000000 02000000 7031 0500000000000000 0000200000000000"), ParentInfo{3, "p1", 5, 2 << 20}, nil},
		{"namespace", FeatureLayering, cephenc.MarshalFunc(parentRecord{poolID: 2, poolNamespace: "ns", imageID: "p1", snapID: 4}.encode), ParentInfo{}, syscall.EXDEV},
		{"corrupt", FeatureLayering, []byte{2, 2, 9}, ParentInfo{}, syscall.EIO},
		{"no layering", FeatureExclusiveLock, cephenc.MarshalFunc(parentRecord{poolID: 2, imageID: "p1", snapID: 4, headOverlap: &overlap}.encode), ParentInfo{PoolID: -1, SnapID: NoSnap}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPool()
			mustCreate(t, p, "h", 8<<20, 22, tt.features, "rbd_data.x")
			if tt.stored != nil {
				p.Objects["h"].Omap["parent"] = tt.stored
			}
			got, err := GetParent(context.Background(), p, "h", NoSnap)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("GetParent = %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("GetParent = %+v, %v, want %+v", got, err, tt.want)
			}
			if got.HasParent() != (tt.want.Overlap > 0) {
				t.Fatalf("HasParent = %v", got.HasParent())
			}
		})
	}

	// Shrinking a clone below its overlap shrinks the overlap.
	p := newPool()
	mustCreate(t, p, "h", 8<<20, 22, FeatureLayering, "rbd_data.x")
	p.Objects["h"].Omap["parent"] = cephenc.MarshalFunc(parentRecord{poolID: 2, imageID: "p1", snapID: 4, headOverlap: &overlap}.encode)
	var op objstore.WriteOp
	SetSize(&op, 4096)
	if err := p.Operate(context.Background(), "h", &op); err != nil {
		t.Fatal(err)
	}
	if got, _ := GetParent(context.Background(), p, "h", NoSnap); got.Overlap != 4096 {
		t.Fatalf("overlap after shrink = %d, want 4096", got.Overlap)
	}
}

func TestStripeUnitCount(t *testing.T) {
	p := newPool()
	mustCreate(t, p, "h", 8<<20, 22, FeatureLayering|FeatureStripingV2, "rbd_data.x")
	u, c, err := GetStripeUnitCount(context.Background(), p, "h")
	if err != nil || u != 4<<20 || c != 1 {
		t.Fatalf("default striping = %d, %d, %v", u, c, err)
	}
	p.Objects["h"].Omap["stripe_unit"] = u64Bytes(65536)
	p.Objects["h"].Omap["stripe_count"] = u64Bytes(8)
	if u, c, _ := GetStripeUnitCount(context.Background(), p, "h"); u != 65536 || c != 8 {
		t.Fatalf("striping = %d, %d", u, c)
	}
}

func TestIDObject(t *testing.T) {
	ctx := context.Background()
	p := newPool()
	oid := IDOID("vol")

	// librbd's create_id_object: exclusive create + set_id.
	var op objstore.WriteOp
	op.Create(true)
	SetID(&op, "102770f22d36")
	if err := p.Operate(ctx, oid, &op); err != nil {
		t.Fatal(err)
	}
	// The id is the object's data, encoded as a Ceph string.
	if want := append(cephenctest.Hex(t, "0c000000"), "102770f22d36"...); !bytes.Equal(p.Objects[oid].Data, want) {
		t.Fatalf("rbd_id data = %x, want %x", p.Objects[oid].Data, want)
	}
	if id, err := GetID(ctx, p, oid); err != nil || id != "102770f22d36" {
		t.Fatalf("GetID = %q, %v", id, err)
	}

	tests := []struct {
		name   string
		oid    string
		create bool
		id     string
		want   error
	}{
		{"already set", oid, false, "abc", syscall.EEXIST},
		{"exclusive create of existing", oid, true, "abc", syscall.EEXIST},
		{"missing object", IDOID("other"), false, "abc", syscall.ENOENT},
		{"invalid id", IDOID("other"), true, "ab-c", syscall.EINVAL},
		{"empty id", IDOID("other"), true, "", syscall.EINVAL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var op objstore.WriteOp
			if tt.create {
				op.Create(true)
			}
			SetID(&op, tt.id)
			if err := p.Operate(ctx, tt.oid, &op); !errors.Is(err, tt.want) {
				t.Fatalf("set_id = %v, want %v", err, tt.want)
			}
		})
	}
	if _, ok := p.Objects[IDOID("other")]; ok {
		t.Fatal("failed set_id left an object behind")
	}

	// An empty id object has no id; a corrupt one is EIO.
	p.Objects["empty"] = &classtest.Object{Exists: true, Omap: map[string][]byte{}}
	if _, err := GetID(ctx, p, "empty"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("GetID(empty) = %v, want ENOENT", err)
	}
	p.Objects["bad"] = &classtest.Object{Exists: true, Data: []byte{9, 0, 0, 0, 'x'}, Omap: map[string][]byte{}}
	if _, err := GetID(ctx, p, "bad"); !errors.Is(err, syscall.EIO) {
		t.Fatalf("GetID(corrupt) = %v, want EIO", err)
	}
}

func TestDirectory(t *testing.T) {
	ctx := context.Background()
	p := newPool()
	add := func(name, id string) error {
		var op objstore.WriteOp
		DirAddImage(&op, name, id)
		return p.Operate(ctx, DirectoryOID, &op)
	}
	remove := func(name, id string) error {
		var op objstore.WriteOp
		DirRemoveImage(&op, name, id)
		return p.Operate(ctx, DirectoryOID, &op)
	}
	if _, err := DirList(ctx, p, DirectoryOID, "", 10); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("DirList of a missing directory = %v, want ENOENT", err)
	}
	if err := add("vol", "abc"); err != nil {
		t.Fatal(err)
	}
	// Omap layout (cls_rbd.cc dir_add_image_helper): name_<name> -> string
	// id, id_<id> -> string name.
	want := map[string][]byte{
		"name_vol": cephenctest.Hex(t, "03000000 616263"),
		"id_abc":   cephenctest.Hex(t, "03000000 766f6c"),
	}
	if got := p.Objects[DirectoryOID].Omap; !maps.EqualFunc(got, want, bytes.Equal) {
		t.Fatalf("directory omap = %x, want %x", got, want)
	}

	tests := []struct {
		name string
		do   func() error
		want error
	}{
		{"duplicate name", func() error { return add("vol", "def") }, syscall.EEXIST},
		{"duplicate id", func() error { return add("vol2", "abc") }, syscall.EBADF},
		{"empty name", func() error { return add("", "def") }, syscall.EINVAL},
		{"invalid id", func() error { return add("x", "a.b") }, syscall.EINVAL},
		{"remove mismatch", func() error { return remove("vol", "xyz") }, syscall.ENOENT},
		{"remove unknown", func() error { return remove("nope", "abc") }, syscall.ENOENT},
		{"rename onto itself", func() error {
			var op objstore.WriteOp
			DirRenameImage(&op, "vol", "vol", "abc")
			return p.Operate(ctx, DirectoryOID, &op)
		}, syscall.EEXIST},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.do(); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	// ESTALE: both keys exist but map elsewhere.
	if err := add("other", "def"); err != nil {
		t.Fatal(err)
	}
	if err := remove("vol", "def"); !errors.Is(err, syscall.ESTALE) {
		t.Fatalf("remove of crossed name/id = %v, want ESTALE", err)
	}
	if id, err := DirGetID(ctx, p, DirectoryOID, "vol"); err != nil || id != "abc" {
		t.Fatalf("DirGetID = %q, %v", id, err)
	}
	if name, err := DirGetName(ctx, p, DirectoryOID, "def"); err != nil || name != "other" {
		t.Fatalf("DirGetName = %q, %v", name, err)
	}
	if _, err := DirGetID(ctx, p, DirectoryOID, "nope"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("DirGetID(unknown) = %v", err)
	}
	var op objstore.WriteOp
	DirRenameImage(&op, "other", "renamed", "def")
	if err := p.Operate(ctx, DirectoryOID, &op); err != nil {
		t.Fatal(err)
	}
	if name, _ := DirGetName(ctx, p, DirectoryOID, "def"); name != "renamed" {
		t.Fatalf("name after rename = %q", name)
	}
	if err := remove("renamed", "def"); err != nil {
		t.Fatal(err)
	}
	if err := remove("vol", "abc"); err != nil {
		t.Fatal(err)
	}
	if got := p.Objects[DirectoryOID].Omap; len(got) != 0 {
		t.Fatalf("directory after removing everything = %v", got)
	}

	// Listing pages through more than RBD_MAX_KEYS_READ names, in name
	// order, resuming after start_after.
	var names []string
	for i := range 150 {
		n := fmt.Sprintf("img%03d", i)
		names = append(names, n)
		if err := add(n, fmt.Sprintf("id%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	start := ""
	for {
		page, err := DirList(ctx, p, DirectoryOID, start, 70)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		if len(page) > 70 {
			t.Fatalf("page of %d entries, max 70", len(page))
		}
		for _, e := range page {
			got = append(got, e.Name)
			if want := fmt.Sprintf("id%d", len(got)-1); e.ID != want {
				t.Fatalf("id of %s = %s, want %s", e.Name, e.ID, want)
			}
		}
		start = page[len(page)-1].Name
	}
	if !slices.Equal(got, names) {
		t.Fatalf("listed %d names: %v", len(got), got)
	}
	if page, _ := DirList(ctx, p, DirectoryOID, "", 0); len(page) != 0 {
		t.Fatalf("max 0 listed %d", len(page))
	}
}

func TestWriteMethodsRefusedInReads(t *testing.T) {
	p := newPool()
	var op objstore.ReadOp
	op.Exec("rbd", "dir_add_image", cephenc.MarshalFunc(func(e *cephenc.Encoder) { e.String("a"); e.String("b") }))
	if err := p.Read(context.Background(), DirectoryOID, &op); !errors.Is(err, objstore.ErrPerm) {
		t.Fatalf("write method in a read = %v", err)
	}
	for name, m := range Class() {
		wantWrite := name == "create" || name[:4] == "set_" || name == "dir_add_image" || name == "dir_remove_image" || name == "dir_rename_image" ||
			name == "metadata_set" || name == "metadata_remove" ||
			name == "snapshot_add" || name == "snapshot_remove" || name == "snapshot_trash_add" || name == "copyup" ||
			name == "op_features_set" || name == "child_attach" || name == "child_detach" || name == "remove_parent"
		if m.Write != wantWrite {
			t.Errorf("%s: Write = %v, want %v", name, m.Write, wantWrite)
		}
	}
}
