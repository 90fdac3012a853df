//go:build ceph && pacific

package ceph_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
)

type errHandler struct {
	once sync.Once
	errc chan error
}

func (h *errHandler) HandleNotify(_ context.Context, n *objstore.Notification) { n.Ack(nil) }
func (h *errHandler) HandleWatchError(_ context.Context, err error) {
	h.once.Do(func() { h.errc <- err })
}

// TestBlocklistFencing: a client blocklisted by another gets ESHUTDOWN on its
// next operation, and its watch reports an error; the fencer sees the entry
// in the blocklist and can remove it.
func TestBlocklistFencing(t *testing.T) {
	ctx := context.Background()
	fencer := cephtest.Connect(t)
	fp := cephtest.PoolOf(t, fencer)
	victim := cephtest.Connect(t)
	vp := cephtest.PoolOf(t, victim)
	oid := fmt.Sprintf("cephtest.fence.%d", time.Now().UnixNano())
	op := &objstore.WriteOp{}
	op.WriteFull([]byte("before"))
	if err := vp.Operate(ctx, oid, op); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		op := &objstore.WriteOp{}
		op.Remove()
		fp.Operate(ctx, oid, op)
	})
	h := &errHandler{errc: make(chan error, 1)}
	w, err := vp.Watch(ctx, oid, h)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(context.Background())
	if ws, err := fp.ListWatchers(ctx, oid); err != nil || len(ws) != 1 || ws[0].Client != victim.Client() {
		t.Fatalf("watchers %+v (victim %+v), %v", ws, victim.Client(), err)
	}

	addr := victim.Client().Addr
	start := time.Now()
	if err := fencer.Blocklist(ctx, addr, 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := fencer.Unblocklist(ctx, addr); err != nil {
			t.Errorf("unblocklist: %v", err)
		}
	})
	t.Logf("blocklist add took %v", time.Since(start).Round(time.Millisecond))
	bl, err := fencer.ListBlocklist(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if until, ok := bl[addr]; !ok || until.Before(time.Now().Add(9*time.Minute)) || until.After(time.Now().Add(11*time.Minute)) {
		t.Fatalf("blocklist %v lacks %s for 10 minutes", bl, addr)
	}

	// The victim's next write and read fail with ESHUTDOWN.
	opStart := time.Now()
	op = &objstore.WriteOp{}
	op.WriteFull([]byte("after"))
	err = vp.Operate(ctx, oid, op)
	if !errors.Is(err, objstore.ErrBlocklisted) {
		t.Fatalf("write of a blocklisted client: %v, want ESHUTDOWN", err)
	}
	var oe *objstore.OpError
	if !errors.As(err, &oe) || oe.OID != oid {
		t.Fatalf("error %v is not an OpError naming %s", err, oid)
	}
	t.Logf("victim's write failed after %v: %v", time.Since(opStart).Round(time.Millisecond), err)
	rop := &objstore.ReadOp{}
	rop.Read(0, 0)
	if err := vp.Read(ctx, oid, rop); !errors.Is(err, objstore.ErrBlocklisted) {
		t.Fatalf("read of a blocklisted client: %v, want ESHUTDOWN", err)
	}

	// The data is what it was before the fence.
	rop = &objstore.ReadOp{}
	d := rop.Read(0, 0)
	if err := fp.Read(ctx, oid, rop); err != nil || string(d.Data()) != "before" {
		t.Fatalf("data after the fence %q, %v", d.Data(), err)
	}

	// The victim's watch is lost: the handler hears of it once, Check says so.
	select {
	case err := <-h.errc:
		t.Logf("watch error after %v: %v", time.Since(start).Round(time.Millisecond), err)
		if err == nil {
			t.Fatal("nil watch error")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("no watch error within 60 s of the blocklisting")
	}
	if err := w.Check(); err == nil {
		t.Fatal("check of a lost watch: nil")
	}
	// The OSD dropped the watch.
	if ws, err := fp.ListWatchers(ctx, oid); err != nil || len(ws) != 0 {
		t.Fatalf("watchers after the fence %+v, %v", ws, err)
	}
}
