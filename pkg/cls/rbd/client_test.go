package clsrbd

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc/cephenctest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// TestWriteOpEncodings checks the input of every write call against the
// bytes cls_rbd_client.cc encodes (create_image, set_size, set_features,
// set_id, dir_add_image, dir_remove_image, dir_rename_image): integers
// little-endian, strings as u32 length + bytes.
func TestWriteOpEncodings(t *testing.T) {
	tests := []struct {
		name   string
		build  func(op *objstore.WriteOp)
		method string
		in     string
	}{
		{
			name:   "create",
			build:  func(op *objstore.WriteOp) { Create(op, 64<<20, 22, 0x45, "rbd_data.102770f22d36", -1) },
			method: "create",
			// u64 size, u8 order, u64 features, string prefix, s64 data_pool_id
			in: "0000000400000000 16 4500000000000000 15000000" + hex.EncodeToString([]byte("rbd_data.102770f22d36")) + " ffffffffffffffff",
		},
		{
			name:   "set_size",
			build:  func(op *objstore.WriteOp) { SetSize(op, 1<<30) },
			method: "set_size",
			in:     "0000004000000000",
		},
		{
			name:   "set_features",
			build:  func(op *objstore.WriteOp) { SetFeatures(op, FeatureJournaling, FeatureJournaling) },
			method: "set_features",
			in:     "4000000000000000 4000000000000000",
		},
		{
			name:   "set_id",
			build:  func(op *objstore.WriteOp) { SetID(op, "abc123") },
			method: "set_id",
			in:     "06000000 616263313233",
		},
		{
			name:   "dir_add_image",
			build:  func(op *objstore.WriteOp) { DirAddImage(op, "vol", "abc") },
			method: "dir_add_image",
			in:     "03000000 766f6c 03000000 616263",
		},
		{
			name:   "dir_remove_image",
			build:  func(op *objstore.WriteOp) { DirRemoveImage(op, "vol", "abc") },
			method: "dir_remove_image",
			in:     "03000000 766f6c 03000000 616263",
		},
		{
			name:   "dir_rename_image",
			build:  func(op *objstore.WriteOp) { DirRenameImage(op, "a", "b", "c") },
			method: "dir_rename_image",
			in:     "01000000 61 01000000 62 01000000 63",
		},
		{
			name:   "set_modify_timestamp",
			build:  SetModifyTimestamp,
			method: "set_modify_timestamp",
			in:     "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var op objstore.WriteOp
			tt.build(&op)
			steps := op.Steps()
			if len(steps) != 1 {
				t.Fatalf("%d steps, want 1", len(steps))
			}
			s := steps[0]
			if s.Kind != objstore.StepExec || s.Class != "rbd" || s.Method != tt.method {
				t.Fatalf("step = %v %s.%s, want exec rbd.%s", s.Kind, s.Class, s.Method, tt.method)
			}
			if want := cephenctest.Hex(t, tt.in); !bytes.Equal(s.Data, want) {
				t.Fatalf("input = %x, want %x", s.Data, want)
			}
		})
	}
}

// recordingReader answers every Exec of a ReadOp with canned output and
// records the calls.
type recordingReader struct {
	calls []objstore.Step
	out   map[string][]byte
	err   error
}

func (r *recordingReader) Read(_ context.Context, _ string, op *objstore.ReadOp) error {
	for _, s := range op.Steps() {
		r.calls = append(r.calls, *s)
		s.Result = r.out[s.Method]
	}
	return r.err
}

// TestReadCallEncodings checks the input of every read call and the
// decoding of its output against cls_rbd_client.cc (get_size_start,
// get_features_start with snap id CEPH_NOSNAP, dir_list_start, ...).
func TestReadCallEncodings(t *testing.T) {
	ctx := context.Background()
	r := &recordingReader{out: map[string][]byte{
		"get_size":             cephenctest.Hex(t, "16 0000000001000000"),
		"get_features":         cephenctest.Hex(t, "4500000000000000 4500000000000000"),
		"get_object_prefix":    cephenctest.Hex(t, "05000000 7262645f64"),
		"get_snapcontext":      cephenctest.Hex(t, "0500000000000000 02000000 0500000000000000 0200000000000000"),
		"get_parent":           cephenctest.Hex(t, "ffffffffffffffff 00000000 feffffffffffffff 0000000000000000"),
		"dir_list":             cephenctest.Hex(t, "02000000 01000000 61 02000000 6964 01000000 62 02000000 6a6b"),
		"get_id":               cephenctest.Hex(t, "03000000 616263"),
		"get_data_pool":        cephenctest.Hex(t, "ffffffffffffffff"),
		"get_create_timestamp": cephenctest.Hex(t, "10000000 20000000"),
	}}
	size, order, err := GetSize(ctx, r, "h", NoSnap)
	if err != nil || size != 1<<32 || order != 22 {
		t.Fatalf("GetSize = %d, %d, %v", size, order, err)
	}
	f, inc, err := GetFeatures(ctx, r, "h", true)
	if err != nil || f != 0x45 || inc != 0x45 {
		t.Fatalf("GetFeatures = %x, %x, %v", f, inc, err)
	}
	p, err := GetObjectPrefix(ctx, r, "h")
	if err != nil || p != "rbd_d" {
		t.Fatalf("GetObjectPrefix = %q, %v", p, err)
	}
	sc, err := GetSnapContext(ctx, r, "h")
	if err != nil || sc.Seq != 5 || len(sc.Snaps) != 2 || sc.Snaps[0] != 5 || sc.Snaps[1] != 2 {
		t.Fatalf("GetSnapContext = %+v, %v", sc, err)
	}
	pi, err := GetParent(ctx, r, "h", NoSnap)
	if err != nil || pi.PoolID != -1 || pi.SnapID != NoSnap || pi.HasParent() {
		t.Fatalf("GetParent = %+v, %v", pi, err)
	}
	ents, err := DirList(ctx, r, DirectoryOID, "", 1024)
	if err != nil || len(ents) != 2 || ents[0] != (DirEntry{"a", "id"}) || ents[1] != (DirEntry{"b", "jk"}) {
		t.Fatalf("DirList = %+v, %v", ents, err)
	}
	id, err := GetID(ctx, r, "rbd_id.x")
	if err != nil || id != "abc" {
		t.Fatalf("GetID = %q, %v", id, err)
	}
	dp, err := GetDataPool(ctx, r, "h")
	if err != nil || dp != -1 {
		t.Fatalf("GetDataPool = %d, %v", dp, err)
	}
	ts, err := GetCreateTimestamp(ctx, r, "h")
	if err != nil || ts.Unix() != 16 || ts.Nanosecond() != 32 {
		t.Fatalf("GetCreateTimestamp = %v, %v", ts, err)
	}

	wantIn := map[string]string{
		"get_size":          "feffffffffffffff",
		"get_features":      "feffffffffffffff 01",
		"get_object_prefix": "",
		"get_snapcontext":   "",
		"get_parent":        "feffffffffffffff",
		"dir_list":          "00000000 0004000000000000",
		"get_id":            "",
		"get_data_pool":     "",
	}
	for _, c := range r.calls {
		want, ok := wantIn[c.Method]
		if !ok {
			continue
		}
		if c.Class != "rbd" || !bytes.Equal(c.Data, cephenctest.Hex(t, want)) {
			t.Errorf("%s.%s input = %x, want %s", c.Class, c.Method, c.Data, want)
		}
	}
}

func TestClientRejectsBadOutput(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		out  map[string][]byte
		call func(r Reader) error
	}{
		{"short size", map[string][]byte{"get_size": {22}}, func(r Reader) error { _, _, err := GetSize(ctx, r, "h", NoSnap); return err }},
		{"truncated prefix", map[string][]byte{"get_object_prefix": {9, 0, 0, 0, 'a'}}, func(r Reader) error { _, err := GetObjectPrefix(ctx, r, "h"); return err }},
		{"snapc count too large", map[string][]byte{"get_snapcontext": cephenctest.Hex(t, "0500000000000000 ffffffff")}, func(r Reader) error { _, err := GetSnapContext(ctx, r, "h"); return err }},
		{"snapc not descending", map[string][]byte{"get_snapcontext": cephenctest.Hex(t, "0500000000000000 02000000 0200000000000000 0500000000000000")}, func(r Reader) error { _, err := GetSnapContext(ctx, r, "h"); return err }},
		{"dir list truncated", map[string][]byte{"dir_list": cephenctest.Hex(t, "01000000 01000000 61")}, func(r Reader) error { _, err := DirList(ctx, r, DirectoryOID, "", 10); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(&recordingReader{out: tt.out}); err == nil {
				t.Fatal("no error")
			}
		})
	}
	// A backend error comes back wrapped, errno intact.
	r := &recordingReader{err: &objstore.OpError{Op: "exec", OID: "h", Err: syscall.ENOENT}}
	if _, _, err := GetSize(ctx, r, "h", NoSnap); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("GetSize on a failing reader = %v, want ENOENT", err)
	}
}

func TestFeatureNames(t *testing.T) {
	f, err := ParseFeatures("layering, exclusive-lock,journaling")
	if err != nil || f != 0x45 {
		t.Fatalf("ParseFeatures = %x, %v", f, err)
	}
	if f, err := ParseFeatures("61"); err != nil || f != 61 {
		t.Fatalf("ParseFeatures(61) = %d, %v", f, err)
	}
	if _, err := ParseFeatures("layering,bogus"); err == nil {
		t.Fatal("ParseFeatures accepted an unknown feature")
	}
	got := strings.Join(FeatureNames(0x45|1<<20), ",")
	if got != "layering,exclusive-lock,journaling,0x100000" {
		t.Fatalf("FeatureNames = %s", got)
	}
}
