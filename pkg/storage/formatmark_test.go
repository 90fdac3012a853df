package storage

import (
	"context"
	"errors"
	"testing"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// TestFormatBlankMarker runs the marker through its states on a real image
// of the local backend: set by MarkFormatBlank (the image's id: new), the
// operator's override, a value copied from another image (foreign), and
// cleared.
func TestFormatBlankMarker(t *testing.T) {
	ctx := context.Background()
	_, pool := openTestImage(t, "img", 8<<20)
	set := func(v string) {
		t.Helper()
		id, oid, err := headerOf(ctx, pool, "img")
		if err != nil {
			t.Fatal(err)
		}
		if v == "<id>" {
			v = id
		}
		var op objstore.WriteOp
		clsrbd.MetadataSet(&op, map[string]string{MetaFormatBlank: v})
		if err := pool.Operate(ctx, oid, &op); err != nil {
			t.Fatal(err)
		}
	}
	get := func() FormatBlank {
		t.Helper()
		f, err := GetFormatBlank(ctx, pool, "img")
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	if f := get(); f != FormatBlankUnset || f.Allowed() {
		t.Fatalf("new image without marker: %v", f)
	}
	if err := MarkFormatBlank(ctx, pool, "img"); err != nil {
		t.Fatal(err)
	}
	if f := get(); f != FormatBlankNew || !f.Allowed() {
		t.Fatalf("after MarkFormatBlank: %v", f)
	}
	for _, tt := range []struct {
		value string
		want  FormatBlank
	}{
		{"true", FormatBlankOverridden},
		{"a1b2c3d4e5f6", FormatBlankForeign},
		{"<id>", FormatBlankNew},
	} {
		set(tt.value)
		if f := get(); f != tt.want || f.Allowed() != (tt.want != FormatBlankForeign) {
			t.Errorf("value %q: %v, want %v", tt.value, f, tt.want)
		}
	}
	for range 2 { // idempotent
		if err := ClearFormatBlank(ctx, pool, "img"); err != nil {
			t.Fatal(err)
		}
	}
	if f := get(); f != FormatBlankUnset {
		t.Fatalf("after ClearFormatBlank: %v", f)
	}
	if err := MarkFormatBlank(ctx, pool, "missing"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("missing image: %v, want ErrNotFound", err)
	}
}
