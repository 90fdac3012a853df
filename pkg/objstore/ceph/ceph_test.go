//go:build ceph && pacific

package ceph_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/objstoretest"
)

func TestMain(m *testing.M) { cephtest.Main(m) }

// TestContract runs the object-store contract suite against pool rbd of
// the real cluster.
func TestContract(t *testing.T) {
	objstoretest.Run(t, func(t *testing.T) objstore.Pool {
		p := cephtest.Pool(t)
		removeAtEnd(t, p, "objstoretest.")
		return p
	})
}

// removeAtEnd removes the objects named prefix* when t ends: the suite
// leaves its objects behind, and memstore never gives memory back.
func removeAtEnd(t *testing.T, p objstore.Pool, prefix string) {
	t.Cleanup(func() {
		ctx := context.Background()
		oids, err := p.List(ctx, prefix)
		if err != nil {
			t.Errorf("list %s*: %v", prefix, err)
			return
		}
		for _, oid := range oids {
			op := &objstore.WriteOp{}
			op.Remove()
			if err := p.Operate(ctx, oid, op); err != nil && !errors.Is(err, objstore.ErrNotFound) {
				t.Errorf("remove %s: %v", oid, err)
			}
		}
	})
}

// createObject creates object oid through p, to be removed through cleanup
// (a pool whose client outlives the test's) when t ends.
func createObject(t *testing.T, p, cleanup objstore.Pool, oid string) {
	t.Helper()
	removeAtEnd(t, cleanup, oid)
	op := &objstore.WriteOp{}
	op.Create(false)
	if err := p.Operate(context.Background(), oid, op); err != nil {
		t.Fatal(err)
	}
}

// TestContractTwoClients runs the two-client part of the suite with two
// client instances (two librados handles: two addresses, two global ids).
func TestContractTwoClients(t *testing.T) {
	objstoretest.RunTwoClients(t, func(t *testing.T) (objstore.Pool, objstore.Pool) {
		a := cephtest.Pool(t)
		removeAtEnd(t, a, "objstoretest2.")
		return a, cephtest.Pool(t)
	})
}

func TestIdentity(t *testing.T) {
	c := cephtest.Connect(t)
	p := cephtest.PoolOf(t, c)
	ci := c.Client()
	if ci.ID == 0 || !strings.HasPrefix(ci.Addr, "127.0.0.1:0/") {
		t.Fatalf("client %+v: want a global id and 127.0.0.1:0/<nonce>", ci)
	}
	if p.Client() != ci || p.Name() != cephtest.PoolName || p.ID() <= 0 {
		t.Fatalf("pool %s id %d client %+v", p.Name(), p.ID(), p.Client())
	}
	again, err := c.Pool(context.Background(), cephtest.PoolName)
	if err != nil || again != objstore.Pool(p) {
		t.Fatalf("pool not cached: %v", err)
	}
	names, err := c.ListPools(context.Background())
	if err != nil || !contains(names, cephtest.PoolName) {
		t.Fatalf("pools %q, %v", names, err)
	}
	// Without a mgr (hack/ceph-up.sh starts none) the numbers are 0.
	if st, err := c.Stats(context.Background()); err != nil {
		t.Fatalf("stats %+v, %v", st, err)
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func TestWrongPool(t *testing.T) {
	c := cephtest.Connect(t)
	_, err := c.Pool(context.Background(), "no-such-pool")
	if !errors.Is(err, ceph.ErrPoolNotFound) || !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("open missing pool: %v, want ErrPoolNotFound wrapping ENOENT", err)
	}
	if !strings.Contains(err.Error(), `"no-such-pool"`) {
		t.Errorf("error does not name the pool: %v", err)
	}
}

// TestConnectErrors checks the errors for monitors that do not answer and
// for credentials the monitors refuse, and that no error shows the key.
func TestConnectErrors(t *testing.T) {
	key := cephtest.AdminKey(t)
	mons := cephtest.MonHost(t)
	ctx := context.Background()

	t.Run("explicit monitors and key", func(t *testing.T) {
		c, err := ceph.Connect(ctx, ceph.Config{MonHosts: []string{mons}, User: "admin", Key: key, ConnectTimeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Pool(ctx, cephtest.PoolName); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("unreachable monitors", func(t *testing.T) {
		start := time.Now()
		// Nothing listens on this port of the loopback.
		_, err := ceph.Connect(ctx, ceph.Config{MonHosts: []string{"127.0.0.1:1"}, Key: key, ConnectTimeout: 2 * time.Second})
		if !errors.Is(err, ceph.ErrMonUnreachable) {
			t.Fatalf("got %v, want ErrMonUnreachable", err)
		}
		if d := time.Since(start); d > 15*time.Second {
			t.Errorf("took %v with a 2 s connect timeout", d)
		}
		t.Logf("after %v: %v", time.Since(start).Round(time.Millisecond), err)
		noKey(t, err, key)
	})
	t.Run("wrong key", func(t *testing.T) {
		wrong := []byte(key)
		// Change a character of the secret part (the key is base64 of a
		// 12-byte header and the secret).
		i := len(wrong) - 6
		wrong[i] = map[bool]byte{true: 'B', false: 'A'}[wrong[i] == 'A']
		start := time.Now()
		_, err := ceph.Connect(ctx, ceph.Config{MonHosts: []string{mons}, Key: string(wrong), ConnectTimeout: 5 * time.Second})
		if !errors.Is(err, ceph.ErrAuth) {
			t.Fatalf("got %v, want ErrAuth", err)
		}
		t.Logf("after %v: %v", time.Since(start).Round(time.Millisecond), err)
		noKey(t, err, string(wrong))
	})
	t.Run("wrong user", func(t *testing.T) {
		_, err := ceph.Connect(ctx, ceph.Config{MonHosts: []string{mons}, User: "nobody", Key: key, ConnectTimeout: 5 * time.Second})
		if !errors.Is(err, ceph.ErrAuth) {
			t.Fatalf("got %v, want ErrAuth", err)
		}
		t.Logf("%v", err)
		noKey(t, err, key)
	})
	t.Run("malformed key", func(t *testing.T) {
		_, err := ceph.Connect(ctx, ceph.Config{MonHosts: []string{mons}, Key: "not-a-key", ConnectTimeout: 5 * time.Second})
		if !errors.Is(err, ceph.ErrAuth) {
			t.Fatalf("got %v, want ErrAuth", err)
		}
		noKey(t, err, "not-a-key")
	})
	t.Run("no monitors", func(t *testing.T) {
		if _, err := ceph.Connect(ctx, ceph.Config{Key: key}); err == nil {
			t.Fatal("connected without monitors")
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := ceph.Connect(cctx, ceph.Config{MonHosts: []string{"127.0.0.1:1"}, Key: key, ConnectTimeout: 5 * time.Second})
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
			t.Fatalf("got %v after %v, want the context's error at once", err, time.Since(start))
		}
	})
	t.Run("config does not print the key", func(t *testing.T) {
		cfg := ceph.Config{MonHosts: []string{mons}, Key: key}
		for _, s := range []string{cfg.String(), cfg.GoString()} {
			noKey(t, errors.New(s), key)
		}
	})
}

func noKey(t *testing.T, err error, key string) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), key) {
		t.Fatalf("error shows the key: %v", err)
	}
}

// TestCancelReturnsPromptly checks that a call whose context ends while
// librados blocks returns ctx.Err() at once: a notify waiting for a watcher
// that never acks.
func TestCancelReturnsPromptly(t *testing.T) {
	p := cephtest.Pool(t)
	ctx := context.Background()
	oid := "cephtest.cancel." + time.Now().Format("150405.000000")
	createObject(t, p, p, oid)
	w, err := p.Watch(ctx, oid, silent{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(context.Background())
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = p.Notify(cctx, oid, []byte("x"), 20*time.Second)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("notify: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("cancelled notify returned after %v", d)
	}
}

// TestClose: Close unregisters live watches, later calls fail with
// ErrClosed, and a second Close is a no-op.
func TestClose(t *testing.T) {
	ctx := context.Background()
	c, err := ceph.Connect(ctx, cephtest.Config(t))
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.OpenPool(ctx, cephtest.PoolName)
	if err != nil {
		t.Fatal(err)
	}
	other := cephtest.Pool(t)
	oid := fmt.Sprintf("cephtest.close.%d", time.Now().UnixNano())
	createObject(t, p, other, oid)
	if _, err := p.Watch(ctx, oid, silent{}); err != nil {
		t.Fatal(err)
	}
	if ws, err := other.ListWatchers(ctx, oid); err != nil || len(ws) != 1 {
		t.Fatalf("watchers %+v, %v", ws, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if ws, err := other.ListWatchers(ctx, oid); err != nil || len(ws) != 0 {
		t.Fatalf("watchers after close %+v, %v", ws, err)
	}
	op := &objstore.WriteOp{}
	op.Create(false)
	if err := p.Operate(ctx, oid, op); !errors.Is(err, ceph.ErrClosed) {
		t.Fatalf("operate after close: %v", err)
	}
	if _, err := c.Pool(ctx, "rbd2"); !errors.Is(err, ceph.ErrClosed) {
		t.Fatalf("pool after close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

type silent struct{}

func (silent) HandleNotify(context.Context, *objstore.Notification) {}
func (silent) HandleWatchError(context.Context, error)              {}
