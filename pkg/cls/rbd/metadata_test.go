package clsrbd

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// TestMetadata checks metadata_set/get/remove against cls_rbd.cc: the
// values live in header omap keys "metadata_<key>" as raw bytes (what `rbd
// image-meta set` writes), a missing key is ENOENT for get and no error for
// remove.
func TestMetadata(t *testing.T) {
	ctx := context.Background()
	p := newPool()
	oid := HeaderOID("1234abcd")
	mustCreate(t, p, oid, 1<<20, 22, 0x45, "rbd_data.1234abcd")

	var op objstore.WriteOp
	MetadataSet(&op, map[string]string{"csi-rbdj.format-blank": "1234abcd", "conf_rbd_cache": "false"})
	if err := p.Operate(ctx, oid, &op); err != nil {
		t.Fatal(err)
	}
	if got := p.Objects[oid].Omap["metadata_csi-rbdj.format-blank"]; !bytes.Equal(got, []byte("1234abcd")) {
		t.Fatalf("omap value = %q, want the raw bytes 1234abcd", got)
	}
	tests := []struct {
		key, want string
		err       error
	}{
		{key: "csi-rbdj.format-blank", want: "1234abcd"},
		{key: "conf_rbd_cache", want: "false"},
		{key: "missing", err: objstore.ErrNotFound},
	}
	for _, tt := range tests {
		got, err := MetadataGet(ctx, p, oid, tt.key)
		if !errors.Is(err, tt.err) || got != tt.want {
			t.Errorf("MetadataGet(%q) = %q, %v; want %q, %v", tt.key, got, err, tt.want, tt.err)
		}
	}
	for _, key := range []string{"csi-rbdj.format-blank", "csi-rbdj.format-blank"} { // twice: idempotent
		var op objstore.WriteOp
		MetadataRemove(&op, key)
		if err := p.Operate(ctx, oid, &op); err != nil {
			t.Fatalf("remove %s: %v", key, err)
		}
	}
	if _, err := MetadataGet(ctx, p, oid, "csi-rbdj.format-blank"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("after remove: %v, want ErrNotFound", err)
	}
	if got, err := MetadataGet(ctx, p, oid, "conf_rbd_cache"); err != nil || got != "false" {
		t.Fatalf("the other key: %q, %v", got, err)
	}
	if _, err := MetadataGet(ctx, p, HeaderOID("nope"), "x"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("missing header: %v, want ErrNotFound", err)
	}
}
