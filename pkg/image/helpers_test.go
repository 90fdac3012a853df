package image

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local/localtest"
)

// newPool returns pool "rbd" of a new local cluster. NoSync skips fsync
// (the tests do not cut power).
func newPool(t testing.TB) objstore.Pool {
	t.Helper()
	_, p := localtest.Open(t, t.TempDir(), local.Options{NoSync: true})
	return p
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func mustCreate(t testing.TB, p objstore.Pool, name string, size int64, o CreateOptions) *Image {
	t.Helper()
	ctx := ctxT(t)
	if err := Create(ctx, p, name, size, o); err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	img, err := Open(ctx, p, name)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	return img
}

// newTestImage creates image "vol" of size bytes in 4 KiB objects (order
// 12: a few KiB of I/O already span objects) on a new pool.
func newTestImage(t testing.TB, size int64) (objstore.Pool, *Image) {
	t.Helper()
	p := newPool(t)
	return p, mustCreate(t, p, "vol", size, CreateOptions{Order: 12})
}

func objects(t testing.TB, p objstore.Pool, prefix string) []string {
	t.Helper()
	names, err := p.List(ctxT(t), prefix)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

// omap returns every omap entry of oid (nil if it does not exist).
func omap(t testing.TB, p objstore.Pool, oid string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	after := ""
	for {
		var op objstore.ReadOp
		r := op.GetOmapVals(after, "", 100)
		err := p.Read(ctxT(t), oid, &op)
		if errors.Is(err, objstore.ErrNotFound) {
			return nil
		}
		if err != nil {
			t.Fatal(err)
		}
		pg := r.Page()
		for _, kv := range pg.Entries {
			out[kv.Key] = kv.Value
			after = kv.Key
		}
		if !pg.More {
			return out
		}
	}
}

func data(t testing.TB, p objstore.Pool, oid string) ([]byte, bool) {
	t.Helper()
	var op objstore.ReadOp
	r := op.Read(0, 0)
	err := p.Read(ctxT(t), oid, &op)
	if errors.Is(err, objstore.ErrNotFound) {
		return nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return r.Data(), true
}

// faultPool fails the write operations fail picks, before they reach the
// pool.
type faultPool struct {
	objstore.Pool
	mu   sync.Mutex
	fail func(oid string, op *objstore.WriteOp) error
}

func (p *faultPool) Operate(ctx context.Context, oid string, op *objstore.WriteOp) error {
	p.mu.Lock()
	f := p.fail
	p.mu.Unlock()
	if f != nil {
		if err := f(oid, op); err != nil {
			return &objstore.OpError{Op: "operate", OID: oid, Err: err}
		}
	}
	return p.Pool.Operate(ctx, oid, op)
}

func hasExec(op *objstore.WriteOp, method string) bool {
	for _, s := range op.Steps() {
		if s.Kind == objstore.StepExec && s.Method == method {
			return true
		}
	}
	return false
}

// wantNoImageObjects checks that pool holds nothing of any image: at most
// an empty directory.
func wantNoImageObjects(t *testing.T, p objstore.Pool) {
	t.Helper()
	for _, oid := range objects(t, p, "") {
		if oid == clsrbd.DirectoryOID {
			if m := omap(t, p, oid); len(m) != 0 {
				t.Errorf("directory not empty: %v", slices.Sorted(maps.Keys(m)))
			}
			continue
		}
		t.Errorf("object %s left behind", oid)
	}
}
