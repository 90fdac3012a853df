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
