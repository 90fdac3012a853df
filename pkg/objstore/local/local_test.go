package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/objstoretest"
)

func testOptions() Options {
	cls := objstoretest.Classes()
	cls["crashtest"] = crashClass()
	return Options{Classes: cls}
}

// openT opens a client of dir, closed at the end of the test.
func openT(t testing.TB, dir string, opts Options) *Cluster {
	t.Helper()
	c, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// createT creates object oid in p.
func createT(t testing.TB, p objstore.Pool, oid string) {
	t.Helper()
	op := &objstore.WriteOp{}
	op.Create(false)
	if err := p.Operate(context.Background(), oid, op); err != nil {
		t.Fatal(err)
	}
}

func poolT(t testing.TB, c *Cluster, name string) objstore.Pool {
	t.Helper()
	p, err := c.Pool(context.Background(), name)
	if err != nil {
		t.Fatalf("pool %s: %v", name, err)
	}
	return p
}

// twoClientsT opens two clients of one new store and their pools "rbd".
func twoClientsT(t testing.TB) (a, b *Cluster, pa, pb objstore.Pool) {
	t.Helper()
	dir := t.TempDir()
	a, b = openT(t, dir, testOptions()), openT(t, dir, testOptions())
	return a, b, poolT(t, a, "rbd"), poolT(t, b, "rbd")
}

func TestContract(t *testing.T) {
	objstoretest.Run(t, func(t *testing.T) objstore.Pool {
		return poolT(t, openT(t, t.TempDir(), testOptions()), "rbd")
	})
}

func TestContractTwoClients(t *testing.T) {
	objstoretest.RunTwoClients(t, func(t *testing.T) (a, b objstore.Pool) {
		dir := t.TempDir()
		return poolT(t, openT(t, dir, testOptions()), "rbd"), poolT(t, openT(t, dir, testOptions()), "rbd")
	})
}

func TestPools(t *testing.T) {
	dir := t.TempDir()
	a := openT(t, dir, testOptions())
	ctx := context.Background()
	rbd := poolT(t, a, "rbd")
	other := poolT(t, a, "other")
	if rbd.ID() != 1 || other.ID() != 2 || rbd.Name() != "rbd" || other.Name() != "other" {
		t.Fatalf("pools %s=%d %s=%d", rbd.Name(), rbd.ID(), other.Name(), other.ID())
	}
	if again := poolT(t, a, "rbd"); again.ID() != 1 {
		t.Fatalf("rbd again has id %d", again.ID())
	}
	b := openT(t, dir, testOptions())
	if p := poolT(t, b, "other"); p.ID() != 2 {
		t.Fatalf("second client sees other as %d", p.ID())
	}
	third := poolT(t, b, "third")
	if p, err := a.PoolByID(ctx, third.ID()); err != nil || p.Name() != "third" || third.ID() != 3 {
		t.Fatalf("pool by id: %v, %v", p, err)
	}
	if _, err := a.PoolByID(ctx, 99); objstore.Errno(err) != syscall.ENOENT {
		t.Fatalf("missing pool: %v", err)
	}
	if ps, err := b.ListPools(ctx); err != nil || len(ps) != 3 {
		t.Fatalf("list pools %v, %v", ps, err)
	}
	// Pools are separate namespaces.
	for i, p := range []objstore.Pool{rbd, other} {
		op := &objstore.WriteOp{}
		op.WriteFull([]byte{byte(i)})
		if err := p.Operate(ctx, "same", op); err != nil {
			t.Fatal(err)
		}
	}
	for i, p := range []objstore.Pool{rbd, other} {
		op := &objstore.ReadOp{}
		r := op.Read(0, 0)
		if err := p.Read(ctx, "same", op); err != nil || !bytes.Equal(r.Data(), []byte{byte(i)}) {
			t.Fatalf("pool %d: %q, %v", i, r.Data(), err)
		}
	}
}

func TestClientIdentity(t *testing.T) {
	dir := t.TempDir()
	seen := map[string]bool{}
	var last uint64
	for i := 0; i < 5; i++ {
		c := openT(t, dir, testOptions())
		ci := c.Client()
		if !strings.HasPrefix(ci.Addr, "local:0/") || seen[ci.Addr] || ci.ID <= last {
			t.Fatalf("client %d: %+v (last id %d)", i, ci, last)
		}
		if p := poolT(t, c, "rbd"); p.Client() != ci {
			t.Fatalf("pool client %+v != %+v", p.Client(), ci)
		}
		seen[ci.Addr] = true
		last = ci.ID
	}
}

func TestClosed(t *testing.T) {
	c := openT(t, t.TempDir(), testOptions())
	p := poolT(t, c, "rbd")
	c.Close()
	op := &objstore.WriteOp{}
	op.Create(false)
	if err := p.Operate(context.Background(), "x", op); objstore.Errno(err) != syscall.ENOTCONN {
		t.Fatalf("operate after close: %v", err)
	}
	rop := &objstore.ReadOp{}
	rop.Stat()
	if err := p.Read(context.Background(), "x", rop); objstore.Errno(err) != syscall.ENOTCONN {
		t.Fatalf("read after close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestNoGoroutineLeak checks that Close stops every goroutine a client started.
func TestNoGoroutineLeak(t *testing.T) {
	dir := t.TempDir()
	before := runtime.NumGoroutine()
	for i := 0; i < 3; i++ {
		a, err := Open(dir, testOptions())
		if err != nil {
			t.Fatal(err)
		}
		b, err := Open(dir, testOptions())
		if err != nil {
			t.Fatal(err)
		}
		pa, pb := poolT(t, a, "rbd"), poolT(t, b, "rbd")
		createT(t, pa, "w")
		for _, p := range []objstore.Pool{pa, pb} {
			if _, err := p.Watch(context.Background(), "w", newRecHandler("r")); err != nil {
				t.Fatal(err)
			}
		}
		if res, err := pb.Notify(context.Background(), "w", nil, 5*time.Second); err != nil || len(res.Acks) != 2 {
			t.Fatalf("notify %+v %v", res, err)
		}
		a.Close()
		b.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines before, %d after:\n%s", before, n, buf[:runtime.Stack(buf, true)])
	}
}

// TestCloseUnregistersWatches: a closed client's watches disappear for others.
func TestCloseUnregistersWatches(t *testing.T) {
	_, b, pa, pb := twoClientsT(t)
	createT(t, pa, "w")
	h := newRecHandler("r")
	if _, err := pb.Watch(context.Background(), "w", h); err != nil {
		t.Fatal(err)
	}
	if ws, _ := pa.ListWatchers(context.Background(), "w"); len(ws) != 1 {
		t.Fatalf("watchers %+v", ws)
	}
	b.Close()
	if ws, _ := pa.ListWatchers(context.Background(), "w"); len(ws) != 0 {
		t.Fatalf("watchers after close %+v", ws)
	}
	select {
	case err := <-h.errs:
		t.Fatalf("closing reported a watch error: %v", err)
	default:
	}
}

// closingHandler closes its own watch from inside its callbacks.
type closingHandler struct {
	w    chan objstore.Watch
	done chan struct{}
}

func (h *closingHandler) HandleNotify(ctx context.Context, n *objstore.Notification) {
	n.Ack(nil)
	(<-h.w).Close(ctx) // must not deadlock
	close(h.done)
}

func (h *closingHandler) HandleWatchError(context.Context, error) {}

func TestWatchCloseFromHandler(t *testing.T) {
	c := openT(t, t.TempDir(), testOptions())
	p := poolT(t, c, "rbd")
	createT(t, p, "w")
	h := &closingHandler{w: make(chan objstore.Watch, 1), done: make(chan struct{})}
	w, err := p.Watch(context.Background(), "w", h)
	if err != nil {
		t.Fatal(err)
	}
	h.w <- w
	if _, err := p.Notify(context.Background(), "w", nil, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close from the handler deadlocked")
	}
	if ws, _ := p.ListWatchers(context.Background(), "w"); len(ws) != 0 {
		t.Fatalf("watchers %+v", ws)
	}
}

// TestBlocklist fences a client of the same process: its operations fail
// with ESHUTDOWN, its watch is lost, writes racing Blocklist either land
// before it returns or fail; unblocklisting and expiry restore it.
func TestBlocklist(t *testing.T) {
	ctx := context.Background()
	a, b, pa, pb := twoClientsT(t)
	createT(t, pb, "obj")
	h := newRecHandler("r")
	w, err := pb.Watch(ctx, "obj", h)
	if err != nil {
		t.Fatal(err)
	}
	// Writers race the blocklist.
	var wg sync.WaitGroup
	var acked atomic.Int64
	stop := make(chan struct{})
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				op := &objstore.WriteOp{}
				op.Append([]byte{1})
				err := pb.Operate(ctx, "obj", op)
				if err == nil {
					acked.Add(1)
					continue
				}
				if objstore.Errno(err) != syscall.ESHUTDOWN {
					t.Errorf("write: %v", err)
				}
				return
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	if err := a.Blocklist(ctx, b.Client().Addr, time.Hour); err != nil {
		t.Fatal(err)
	}
	size := func() uint64 {
		op := &objstore.ReadOp{}
		st := op.Stat()
		if err := pa.Read(ctx, "obj", op); err != nil {
			t.Fatal(err)
		}
		return st.Stat().Size
	}
	fenced := size()
	wg.Wait()
	close(stop)
	if got := size(); got != fenced || uint64(acked.Load()) != fenced {
		t.Fatalf("size at blocklist %d, now %d, acknowledged writes %d", fenced, got, acked.Load())
	}
	select {
	case err := <-h.errs:
		if objstore.Errno(err) != syscall.ESHUTDOWN {
			t.Fatalf("watch error %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no watch error")
	}
	if objstore.Errno(w.Check()) != syscall.ESHUTDOWN {
		t.Fatalf("check: %v", w.Check())
	}
	rop := &objstore.ReadOp{}
	rop.Stat()
	if err := pb.Read(ctx, "obj", rop); objstore.Errno(err) != syscall.ESHUTDOWN {
		t.Fatalf("read: %v", err)
	}
	if _, err := pb.Watch(ctx, "obj", h); objstore.Errno(err) != syscall.ESHUTDOWN {
		t.Fatalf("watch: %v", err)
	}
	if _, err := pb.Notify(ctx, "obj", nil, time.Second); objstore.Errno(err) != syscall.ESHUTDOWN {
		t.Fatalf("notify: %v", err)
	}
	if _, err := pb.List(ctx, ""); objstore.Errno(err) != syscall.ESHUTDOWN {
		t.Fatalf("list: %v", err)
	}
	// The other client is unaffected.
	op := &objstore.WriteOp{}
	op.Append([]byte{2})
	if err := pa.Operate(ctx, "obj", op); err != nil {
		t.Fatal(err)
	}
	if err := a.Unblocklist(ctx, b.Client().Addr); err != nil {
		t.Fatal(err)
	}
	op = &objstore.WriteOp{}
	op.Append([]byte{3})
	if err := pb.Operate(ctx, "obj", op); err != nil {
		t.Fatalf("write after unblocklist: %v", err)
	}
	// An entry expires.
	if err := a.Blocklist(ctx, b.Client().Addr, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := pb.Operate(ctx, "obj", op); objstore.Errno(err) != syscall.ESHUTDOWN {
		t.Fatalf("write while blocklisted: %v", err)
	}
	time.Sleep(400 * time.Millisecond)
	if err := pb.Operate(ctx, "obj", op); err != nil {
		t.Fatalf("write after expiry: %v", err)
	}
}

// TestCancelWaitingForLock: an operation waiting for the commit lock held by
// another client honours its context and is not applied.
func TestCancelWaitingForLock(t *testing.T) {
	dir := t.TempDir()
	a := openT(t, dir, testOptions())
	b := openT(t, dir, testOptions())
	pb := poolT(t, b, "rbd")
	if err := a.lockCommit(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	op := &objstore.WriteOp{}
	op.Create(true)
	start := time.Now()
	err := pb.Operate(ctx, "x", op)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Fatalf("operate: %v after %v", err, time.Since(start))
	}
	a.unlockCommit()
	time.Sleep(50 * time.Millisecond)
	rop := &objstore.ReadOp{}
	rop.Stat()
	if err := pb.Read(context.Background(), "x", rop); objstore.Errno(err) != syscall.ENOENT {
		t.Fatalf("the cancelled operation was applied: %v", err)
	}
	if err := pb.Operate(context.Background(), "x", op); err != nil {
		t.Fatal(err)
	}
}

func TestNotifyCancel(t *testing.T) {
	c := openT(t, t.TempDir(), testOptions())
	p := poolT(t, c, "rbd")
	createT(t, p, "w")
	if _, err := p.Watch(context.Background(), "w", silentHandler{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := p.Notify(ctx, "w", nil, time.Minute)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("notify: %v after %v", err, time.Since(start))
	}
}

type silentHandler struct{}

func (silentHandler) HandleNotify(context.Context, *objstore.Notification) {}
func (silentHandler) HandleWatchError(context.Context, error)              {}

// TestDeadApplier: a client dies in the middle of applying an operation
// while another client has the directory open. A reader must neither see
// the half-applied operation nor hang: it repairs it from the log.
func TestDeadApplier(t *testing.T) {
	dir := t.TempDir()
	c := openT(t, dir, testOptions())
	p := poolT(t, c, "rbd")
	ch := startChild(t, "midapply", "LOCAL_TEST_DIR="+dir, "LOCAL_TEST_OPS=10")
	ch.expect("ack 10", time.Minute)
	<-ch.done
	ch.Wait()
	seqs := verifyChunkObject(t, p, "midapply") // reads repair the object first
	if len(seqs) != 11 {
		t.Fatalf("ops %v, want 1..11 (the logged operation is completed)", seqs)
	}
	cw, err := newChunkWriter(context.Background(), p, []string{"midapply"})
	if err != nil {
		t.Fatal(err)
	}
	if err := cw.append(context.Background(), "midapply", 12, 10, true); err != nil {
		t.Fatal(err)
	}
	if seqs := verifyChunkObject(t, p, "midapply"); len(seqs) != 12 {
		t.Fatalf("ops %v", seqs)
	}
}

// TestCheckpointAndReopen: data written across several checkpoints, under
// long (hashed) names too, survives reopening and lists.
func TestCheckpointAndReopen(t *testing.T) {
	dir := t.TempDir()
	opts := testOptions()
	opts.MaxLogBytes = 256 << 10
	c := openT(t, dir, opts)
	p := poolT(t, c, "rbd")
	ctx := context.Background()
	want := map[string][]byte{}
	for i := 0; i < 200; i++ {
		oid := fmt.Sprintf("obj.%d.%s", i%7, strings.Repeat("n", (i%3)*150))
		op := &objstore.WriteOp{}
		b := bytes.Repeat([]byte{byte(i)}, 1000+i*10)
		op.Append(b)
		if err := p.Operate(ctx, oid, op); err != nil {
			t.Fatal(err)
		}
		want[oid] = append(want[oid], b...)
	}
	c.Close()
	// The last client to close checkpointed: nothing is left to replay.
	if offs, _ := walRecords(t, filepath.Join(dir, "wal")); len(offs) != 0 {
		t.Fatalf("%d records left in the log after the last close", len(offs))
	}
	c = openT(t, dir, opts)
	p = poolT(t, c, "rbd")
	names, err := p.List(ctx, "obj.")
	if err != nil || len(names) != len(want) {
		t.Fatalf("list %d names, want %d: %v", len(names), len(want), err)
	}
	for oid, data := range want {
		op := &objstore.ReadOp{}
		r := op.Read(0, 0)
		if err := p.Read(ctx, oid, op); err != nil || !bytes.Equal(r.Data(), data) {
			t.Fatalf("%s: %d bytes, %v", oid, len(r.Data()), err)
		}
	}
}

// TestRemoveDisconnectsWatchers: as an OSD does, removing an object
// disconnects its watchers.
func TestRemoveDisconnectsWatchers(t *testing.T) {
	c := openT(t, t.TempDir(), testOptions())
	p := poolT(t, c, "rbd")
	createT(t, p, "w")
	h := newRecHandler("r")
	w, err := p.Watch(context.Background(), "w", h)
	if err != nil {
		t.Fatal(err)
	}
	op := &objstore.WriteOp{}
	op.Remove()
	if err := p.Operate(context.Background(), "w", op); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-h.errs:
		if objstore.Errno(err) != syscall.ENOTCONN || objstore.Errno(w.Check()) != syscall.ENOTCONN {
			t.Fatalf("watch error %v, check %v", err, w.Check())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watch not disconnected")
	}
}

// TestExecSeesUncommittedState: in local, a class method sees everything the
// earlier steps of its operation did (data and omap too, which Ceph's reads
// from a method do not), and the later steps see what it did.
func TestExecSeesUncommittedState(t *testing.T) {
	c := openT(t, t.TempDir(), testOptions())
	p := poolT(t, c, "rbd")
	ctx := context.Background()
	op := &objstore.WriteOp{}
	op.WriteFull([]byte("hello there"))
	op.Exec("hello", "turn_it_to_11", nil)
	op.Append([]byte(", general"))
	if err := p.Operate(ctx, "a", op); err != nil {
		t.Fatal(err)
	}
	op = &objstore.WriteOp{}
	op.SetOmap(map[string][]byte{"n": []byte("40")})
	op.Exec("numops", "add", objstoretest.NumopsArgs("n", 2))
	op.Exec("numops", "mul", objstoretest.NumopsArgs("n", 10))
	if err := p.Operate(ctx, "b", op); err != nil {
		t.Fatal(err)
	}
	rop := &objstore.ReadOp{}
	d := rop.Read(0, 0)
	if err := p.Read(ctx, "a", rop); err != nil || string(d.Data()) != "HELLO THERE, general" {
		t.Fatalf("a = %q, %v", d.Data(), err)
	}
	rop = &objstore.ReadOp{}
	v := rop.GetOmapValsByKeys("n")
	if err := p.Read(ctx, "b", rop); err != nil || len(v.Page().Entries) != 1 || string(v.Page().Entries[0].Value) != "420" {
		t.Fatalf("b = %+v, %v", v.Page(), err)
	}
}
