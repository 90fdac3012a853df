package classtest

import (
	"context"
	"errors"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// testClass writes the input to the omap key "k" (write) or reads it back,
// or writes from a read-only method (sneak).
var testClass = objstore.Class{
	"set": {Write: true, Call: func(ctx objstore.MethodContext, in []byte) ([]byte, error) {
		return nil, ctx.OmapSet(map[string][]byte{"k": in})
	}},
	"get": {Call: func(ctx objstore.MethodContext, _ []byte) ([]byte, error) { return ctx.OmapGet("k") }},
	"sneak": {Call: func(ctx objstore.MethodContext, in []byte) ([]byte, error) {
		return nil, ctx.WriteFull(in)
	}},
	"who": {Call: func(ctx objstore.MethodContext, _ []byte) ([]byte, error) { return []byte(ctx.Caller().Addr), nil }},
}

func TestPool(t *testing.T) {
	ctx := context.Background()
	p := NewPool(map[string]objstore.Class{"t": testClass})
	var op objstore.WriteOp
	op.Exec("t", "set", []byte("v"))
	op.Append([]byte("data"))
	if err := p.Operate(ctx, "o", &op); err != nil {
		t.Fatal(err)
	}
	if o := p.Objects["o"]; string(o.Omap["k"]) != "v" || string(o.Data) != "data" || o.OmapWrites != 1 {
		t.Fatalf("object %+v", o)
	}

	// All or nothing.
	var bad objstore.WriteOp
	bad.Exec("t", "set", []byte("w"))
	bad.Exec("t", "nope", nil)
	if err := p.Operate(ctx, "o", &bad); !errors.Is(err, objstore.ErrNotSupp) {
		t.Fatalf("unknown method: %v", err)
	}
	if string(p.Objects["o"].Omap["k"]) != "v" {
		t.Fatal("a failed operation changed the object")
	}

	read := func(p *Pool, oid, method string) ([]byte, error) {
		var op objstore.ReadOp
		r := op.Exec("t", method, nil)
		err := p.Read(ctx, oid, &op)
		return r.Out(), err
	}
	if out, err := read(p, "o", "get"); err != nil || string(out) != "v" {
		t.Fatalf("get = %q, %v", out, err)
	}
	if out, err := read(p.As(objstore.ClientInfo{ID: 1, Addr: "a:0/1"}), "o", "who"); err != nil || string(out) != "a:0/1" {
		t.Fatalf("who = %q, %v", out, err)
	}
	if _, err := read(p, "o", "sneak"); !errors.Is(err, objstore.ErrPerm) {
		t.Fatalf("read-only method that writes: %v", err)
	}
	if _, err := read(p, "o", "set"); !errors.Is(err, objstore.ErrPerm) {
		t.Fatalf("write method in a read: %v", err)
	}
	if _, err := read(p, "missing", "who"); err != nil {
		t.Fatalf("read-only method on a missing object: %v", err)
	}

	p.OSD = true
	if _, err := read(p, "o", "set"); !errors.Is(err, objstore.ErrInvalid) {
		t.Fatalf("OSD: write method in a read: %v", err)
	}
	if _, err := read(p, "missing", "who"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("OSD: read-only method on a missing object: %v", err)
	}

	var rm objstore.WriteOp
	rm.Remove()
	if err := p.Operate(ctx, "o", &rm); err != nil || len(p.Objects) != 0 {
		t.Fatalf("remove: %v, objects %v", err, p.Objects)
	}
}

func TestOmapList(t *testing.T) {
	o := NewObject()
	if err := o.OmapSet(map[string][]byte{"a1": nil, "a2": nil, "a3": nil, "b1": nil, "c": nil}); err != nil {
		t.Fatal(err)
	}
	page, err := o.OmapList("a1", "a", 1)
	if err != nil || len(page.Entries) != 1 || page.Entries[0].Key != "a2" || !page.More {
		t.Fatalf("page %+v, %v", page, err)
	}
	page, _ = o.OmapList("a2", "a", 5)
	if len(page.Entries) != 1 || page.Entries[0].Key != "a3" || page.More {
		t.Fatalf("last page %+v", page)
	}
}
