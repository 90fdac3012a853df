package local

import (
	"bytes"
	"context"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// TestLazyOperations: lazy operations apply atomically and are visible at
// once like any other; a later synced operation of the client makes them
// durable (a batch of lazy operations alone skips the log sync).
func TestLazyOperations(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	pool, err := c.Pool(ctx, "rbd")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		op := &objstore.WriteOp{}
		op.SetLazy()
		op.Write(uint64(i)*10, bytes.Repeat([]byte{byte(i)}, 10))
		if err := pool.Operate(ctx, "obj", op); err != nil {
			t.Fatal(err)
		}
	}
	synced := &objstore.WriteOp{}
	synced.SetOmap(map[string][]byte{"k": []byte("v")})
	if err := pool.Operate(ctx, "other", synced); err != nil {
		t.Fatal(err)
	}
	c.Close()

	c2, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	pool2, _ := c2.Pool(ctx, "rbd")
	rd := &objstore.ReadOp{}
	res := rd.Read(0, 0)
	if err := pool2.Read(ctx, "obj", rd); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		if got := res.Data()[i*10 : i*10+10]; !bytes.Equal(got, bytes.Repeat([]byte{byte(i)}, 10)) {
			t.Fatalf("lazy write %d lost: %v", i, got)
		}
	}
}

// TestSyncAfterLazy: lazy operations are synced by the client's next
// non-lazy operation even when that one logs nothing — a Sync, or an
// operation that fails — and only then (objstore.WriteOp.SetLazy's
// contract); a Sync with nothing lazy to sync costs no log sync.
func TestSyncAfterLazy(t *testing.T) {
	ctx := context.Background()
	lazyWrite := func(t *testing.T, pool objstore.Pool) {
		t.Helper()
		op := &objstore.WriteOp{}
		op.SetLazy()
		op.Append([]byte("entry"))
		if err := pool.Operate(ctx, "log", op); err != nil {
			t.Fatal(err)
		}
	}
	sync := func(t *testing.T, pool objstore.Pool) {
		t.Helper()
		if err := pool.(interface{ Sync(context.Context) error }).Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	failing := func(t *testing.T, pool objstore.Pool) {
		t.Helper()
		op := &objstore.WriteOp{}
		op.AssertExists()
		op.Write(0, []byte("x"))
		if err := pool.Operate(ctx, "missing", op); err == nil {
			t.Fatal("write to a missing object with assert-exists succeeded")
		}
	}
	for _, tc := range []struct {
		name      string
		steps     []func(*testing.T, objstore.Pool)
		wantSyncs uint64
	}{
		{"sync with nothing lazy", []func(*testing.T, objstore.Pool){sync, sync}, 0},
		{"lazy alone", []func(*testing.T, objstore.Pool){lazyWrite, lazyWrite}, 0},
		{"lazy then sync", []func(*testing.T, objstore.Pool){lazyWrite, lazyWrite, sync}, 1},
		{"lazy then sync twice", []func(*testing.T, objstore.Pool){lazyWrite, sync, sync}, 1},
		{"lazy, sync, lazy, sync", []func(*testing.T, objstore.Pool){lazyWrite, sync, lazyWrite, sync}, 2},
		{"lazy then a failing operation", []func(*testing.T, objstore.Pool){lazyWrite, failing, sync}, 1},
		{"a failing operation alone", []func(*testing.T, objstore.Pool){failing}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Open(t.TempDir(), Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			pool, err := c.Pool(ctx, "rbd")
			if err != nil {
				t.Fatal(err)
			}
			before := c.Stats().Syncs
			for _, step := range tc.steps {
				step(t, pool)
			}
			if got := c.Stats().Syncs - before; got != tc.wantSyncs {
				t.Fatalf("log syncs: got %d, want %d", got, tc.wantSyncs)
			}
		})
	}
}
