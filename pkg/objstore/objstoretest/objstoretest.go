// Package objstoretest is the contract test suite of objstore.Pool. It tests
// only behaviour that Ceph (librados against an OSD) has too, so it runs
// unchanged against every backend, including a real cluster: object names
// carry a random per-run prefix and the only object classes called are
// Ceph's built-in "hello" and "numops" (see Classes for Go versions of
// them, which a backend running Go classes must register).
//
// Where Ceph and the contract name different errors for one case the suite
// accepts both (reading a missing xattr: ENODATA in Ceph, ErrNotFound in the
// contract; a read-only class method that writes: EIO in Ceph).
package objstoretest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/testwait"
	"golang.org/x/sync/errgroup"
)

// Run runs the single-client part of the suite on a pool from newPool,
// which is called once. The pool may hold other objects; the suite only
// touches objects whose names start with a random per-run prefix.
func Run(t *testing.T, newPool func(t *testing.T) objstore.Pool) {
	p := newPool(t)
	s := &suite{p: p, prefix: "objstoretest." + randHex(4) + "."}
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, s *suite)
	}{
		{"Identity", testIdentity},
		{"ReadMissing", testReadMissing},
		{"Create", testCreate},
		{"Remove", testRemove},
		{"Write", testWrite},
		{"WriteFull", testWriteFull},
		{"Append", testAppend},
		{"Vectored", testVectored},
		{"Truncate", testTruncate},
		{"Zero", testZero},
		{"ReadRanges", testReadRanges},
		{"Stat", testStat},
		{"OmapSetGet", testOmapSetGet},
		{"OmapPaging", testOmapPaging},
		{"OmapRemoveClear", testOmapRemoveClear},
		{"Xattrs", testXattrs},
		{"AssertExists", testAssertExists},
		{"CmpExt", testCmpExt},
		{"SubmitOrder", testSubmitOrder},
		{"CompoundRead", testCompoundRead},
		{"Atomicity", testAtomicity},
		{"Exec", testExec},
		{"ExecSeesTransaction", testExecSeesTransaction},
		{"List", testList},
		{"ObjectNames", testObjectNames},
		{"ConcurrentAppends", testConcurrentAppends},
		{"ConcurrentOmap", testConcurrentOmap},
		{"ConcurrentNumops", testConcurrentNumops},
		{"WatchNotify", testWatchNotify},
		{"NotifyTimeout", testNotifyTimeout},
		{"WatchClose", testWatchClose},
		{"WatchMissing", testWatchMissing},
		{"Cancelled", testCancelled},
		{"SelfManagedSnaps", testSnaps},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, s) })
	}
}

// RunTwoClients runs the part of the suite that needs two client instances
// (a and b) on one pool; newPools is called once.
func RunTwoClients(t *testing.T, newPools func(t *testing.T) (a, b objstore.Pool)) {
	a, b := newPools(t)
	if a.Client().Addr == b.Client().Addr {
		t.Fatalf("the two pools share client address %q", a.Client().Addr)
	}
	s := &suite{p: a, q: b, prefix: "objstoretest2." + randHex(4) + "."}
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, s *suite)
	}{
		{"ReadYourWrites", testTwoReadYourWrites},
		{"NotifyBetweenClients", testTwoNotify},
		{"NotifyBothWatchers", testTwoNotifyBoth},
		{"NotifyTimeout", testTwoNotifyTimeout},
		{"ConcurrentAppends", testTwoConcurrentAppends},
		{"ConcurrentNumops", testTwoConcurrentNumops},
		{"CreateExclusiveRace", testTwoCreateRace},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, s) })
	}
}

type suite struct {
	p, q   objstore.Pool
	prefix string
	mu     sync.Mutex
	n      int
}

// oid returns a fresh object name.
func (s *suite) oid(t *testing.T) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	return fmt.Sprintf("%s%s.%d", s.prefix, t.Name(), s.n)
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// --- helpers ---

func operate(t *testing.T, p objstore.Pool, oid string, build func(op *objstore.WriteOp)) error {
	t.Helper()
	op := &objstore.WriteOp{}
	build(op)
	return p.Operate(ctxT(t), oid, op)
}

// mustWatch registers h on oid through p, closed when t ends.
func mustWatch(t *testing.T, p objstore.Pool, oid string, h objstore.WatchHandler) objstore.Watch {
	t.Helper()
	w, err := p.Watch(ctxT(t), oid, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(context.Background()) })
	return w
}

func mustOperate(t *testing.T, p objstore.Pool, oid string, build func(op *objstore.WriteOp)) {
	t.Helper()
	if err := operate(t, p, oid, build); err != nil {
		t.Fatalf("operate %s: %v", oid, err)
	}
}

func wantErrno(t *testing.T, what string, err error, want ...syscall.Errno) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: succeeded, want %v", what, want)
	}
	got := objstore.Errno(err)
	for _, w := range want {
		if got == w {
			return
		}
	}
	t.Fatalf("%s: got %v (errno %d), want %v", what, err, got, want)
}

func readData(t *testing.T, p objstore.Pool, oid string) ([]byte, error) {
	t.Helper()
	op := &objstore.ReadOp{}
	r := op.Read(0, 0)
	if err := p.Read(ctxT(t), oid, op); err != nil {
		return nil, err
	}
	return r.Data(), nil
}

func mustData(t *testing.T, p objstore.Pool, oid string) []byte {
	t.Helper()
	b, err := readData(t, p, oid)
	if err != nil {
		t.Fatalf("read %s: %v", oid, err)
	}
	return b
}

func wantData(t *testing.T, p objstore.Pool, oid string, want []byte) {
	t.Helper()
	got := mustData(t, p, oid)
	if !bytes.Equal(got, want) {
		t.Fatalf("data of %s = %q, want %q", oid, trunc(got), trunc(want))
	}
	if st := mustStat(t, p, oid); st.Size != uint64(len(want)) {
		t.Fatalf("size of %s = %d, want %d", oid, st.Size, len(want))
	}
}

func trunc(b []byte) []byte {
	if len(b) > 80 {
		return append(append([]byte{}, b[:80]...), "..."...)
	}
	return b
}

func stat(t *testing.T, p objstore.Pool, oid string) (objstore.Stat, error) {
	t.Helper()
	op := &objstore.ReadOp{}
	r := op.Stat()
	err := p.Read(ctxT(t), oid, op)
	return r.Stat(), err
}

func mustStat(t *testing.T, p objstore.Pool, oid string) objstore.Stat {
	t.Helper()
	st, err := stat(t, p, oid)
	if err != nil {
		t.Fatalf("stat %s: %v", oid, err)
	}
	return st
}

func wantMissing(t *testing.T, p objstore.Pool, oid string) {
	t.Helper()
	_, err := stat(t, p, oid)
	wantErrno(t, "stat "+oid, err, syscall.ENOENT)
}

func omapAll(t *testing.T, p objstore.Pool, oid string) map[string]string {
	t.Helper()
	out := map[string]string{}
	after := ""
	for {
		op := &objstore.ReadOp{}
		r := op.GetOmapVals(after, "", 100)
		if err := p.Read(ctxT(t), oid, op); err != nil {
			t.Fatalf("omap of %s: %v", oid, err)
		}
		pg := r.Page()
		for _, kv := range pg.Entries {
			out[kv.Key] = string(kv.Value)
			after = kv.Key
		}
		if !pg.More {
			return out
		}
	}
}

func wantOmap(t *testing.T, p objstore.Pool, oid string, want map[string]string) {
	t.Helper()
	got := omapAll(t, p, oid)
	if len(got) != len(want) {
		t.Fatalf("omap of %s = %v, want %v", oid, got, want)
	}
	for k, v := range want {
		if gv, ok := got[k]; !ok || gv != v {
			t.Fatalf("omap of %s = %v, want %v", oid, got, want)
		}
	}
}

func xattrs(t *testing.T, p objstore.Pool, oid string) map[string][]byte {
	t.Helper()
	op := &objstore.ReadOp{}
	r := op.GetXattrs()
	if err := p.Read(ctxT(t), oid, op); err != nil {
		t.Fatalf("xattrs of %s: %v", oid, err)
	}
	return r.Values()
}

func kv(pairs ...string) map[string][]byte {
	m := map[string][]byte{}
	for i := 0; i+1 < len(pairs); i += 2 {
		m[pairs[i]] = []byte(pairs[i+1])
	}
	return m
}

func exec(t *testing.T, p objstore.Pool, oid, class, method string, in []byte) ([]byte, error) {
	t.Helper()
	op := &objstore.ReadOp{}
	r := op.Exec(class, method, in)
	err := p.Read(ctxT(t), oid, op)
	return r.Out(), err
}

// --- single-client tests ---

func testIdentity(t *testing.T, s *suite) {
	if s.p.Name() == "" {
		t.Error("pool has no name")
	}
	if s.p.Client().Addr == "" {
		t.Error("client has no address")
	}
}

func testReadMissing(t *testing.T, s *suite) {
	oid := s.oid(t)
	for _, tc := range []struct {
		name string
		add  func(op *objstore.ReadOp)
	}{
		{"read", func(op *objstore.ReadOp) { op.Read(0, 10) }},
		{"stat", func(op *objstore.ReadOp) { op.Stat() }},
		{"omap-vals", func(op *objstore.ReadOp) { op.GetOmapVals("", "", 10) }},
		{"omap-by-keys", func(op *objstore.ReadOp) { op.GetOmapValsByKeys("a") }},
		{"getxattr", func(op *objstore.ReadOp) { op.GetXattr("a") }},
		{"getxattrs", func(op *objstore.ReadOp) { op.GetXattrs() }},
		{"assert-exists", func(op *objstore.ReadOp) { op.AssertExists() }},
		{"exec", func(op *objstore.ReadOp) { op.Exec("hello", "say_hello", nil) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			op := &objstore.ReadOp{}
			tc.add(op)
			wantErrno(t, tc.name, s.p.Read(ctxT(t), oid, op), syscall.ENOENT)
		})
	}
	var oe *objstore.OpError
	op := &objstore.ReadOp{}
	op.Stat()
	if err := s.p.Read(ctxT(t), oid, op); !errors.As(err, &oe) || !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("error %v is not an *objstore.OpError wrapping ENOENT", err)
	}
}

func testCreate(t *testing.T, s *suite) {
	oid := s.oid(t)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Create(true) })
	wantData(t, s.p, oid, []byte{})
	wantErrno(t, "exclusive create of existing", operate(t, s.p, oid, func(op *objstore.WriteOp) { op.Create(true) }), syscall.EEXIST)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.WriteFull([]byte("keep")) })
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Create(false) })
	wantData(t, s.p, oid, []byte("keep"))

	oid2 := s.oid(t)
	mustOperate(t, s.p, oid2, func(op *objstore.WriteOp) { op.Create(false) })
	wantData(t, s.p, oid2, []byte{})
}

func testRemove(t *testing.T, s *suite) {
	oid := s.oid(t)
	wantErrno(t, "remove missing", operate(t, s.p, oid, func(op *objstore.WriteOp) { op.Remove() }), syscall.ENOENT)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) {
		op.WriteFull([]byte("data"))
		op.SetOmap(kv("k", "v"))
		op.SetXattr("x", []byte("y"))
	})
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Remove() })
	wantMissing(t, s.p, oid)
	_, err := readData(t, s.p, oid)
	wantErrno(t, "read removed", err, syscall.ENOENT)

	// Recreating starts empty: no data, omap or xattrs of the old object.
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.SetOmap(kv("new", "1")) })
	wantData(t, s.p, oid, []byte{})
	wantOmap(t, s.p, oid, map[string]string{"new": "1"})
	if x := xattrs(t, s.p, oid); len(x) != 0 {
		t.Fatalf("recreated object has xattrs %v", x)
	}

	// Remove and recreate in one operation.
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) {
		op.Remove()
		op.Create(true)
		op.Append([]byte("fresh"))
	})
	wantData(t, s.p, oid, []byte("fresh"))
	wantOmap(t, s.p, oid, map[string]string{})

	// Write then remove in one operation: the object does not exist.
	oid2 := s.oid(t)
	mustOperate(t, s.p, oid2, func(op *objstore.WriteOp) {
		op.Write(0, []byte("x"))
		op.Remove()
	})
	wantMissing(t, s.p, oid2)
}

func testWrite(t *testing.T, s *suite) {
	oid := s.oid(t)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Write(0, []byte("hello world")) })
	wantData(t, s.p, oid, []byte("hello world"))
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Write(6, []byte("WORLD")) })
	wantData(t, s.p, oid, []byte("hello WORLD"))
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Write(8, []byte("rld, again")) })
	wantData(t, s.p, oid, []byte("hello WOrld, again"))

	// Writing past the end leaves a zero-filled gap.
	oid2 := s.oid(t)
	mustOperate(t, s.p, oid2, func(op *objstore.WriteOp) { op.Write(5, []byte("x")) })
	wantData(t, s.p, oid2, []byte{0, 0, 0, 0, 0, 'x'})

	// Several writes in one operation apply in order.
	oid3 := s.oid(t)
	mustOperate(t, s.p, oid3, func(op *objstore.WriteOp) {
		op.Write(0, []byte("aaaa"))
		op.Write(2, []byte("bb"))
		op.Write(6, []byte("c"))
	})
	wantData(t, s.p, oid3, []byte("aabb\x00\x00c"))

	// Past the maximum object size (Ceph: osd_max_object_size, 128 MiB by default).
	wantErrno(t, "write at 1 TiB", operate(t, s.p, oid3, func(op *objstore.WriteOp) { op.Write(1<<40, []byte("x")) }), syscall.EFBIG)
	wantErrno(t, "truncate to 1 TiB", operate(t, s.p, oid3, func(op *objstore.WriteOp) { op.Truncate(1 << 40) }), syscall.EFBIG)
	wantData(t, s.p, oid3, []byte("aabb\x00\x00c"))
}

func testWriteFull(t *testing.T, s *suite) {
	oid := s.oid(t)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.WriteFull([]byte("a longer first version")) })
	wantData(t, s.p, oid, []byte("a longer first version"))
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.WriteFull([]byte("short")) })
	wantData(t, s.p, oid, []byte("short"))
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.WriteFull(nil) })
	wantData(t, s.p, oid, []byte{})
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.WriteFull(bytes.Repeat([]byte("z"), 100000)) })
	wantData(t, s.p, oid, bytes.Repeat([]byte("z"), 100000))
}

func testAppend(t *testing.T, s *suite) {
	oid := s.oid(t)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Append([]byte("one")) })
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Append([]byte(",two")) })
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) {
		op.Append([]byte(",three"))
		op.Append([]byte(",four"))
	})
	wantData(t, s.p, oid, []byte("one,two,three,four"))
}

// testVectored: Writev and Appendv write the concatenation of their
// pieces (empty pieces, none at all, large ones), in order with the
// operation's other steps, and fail as one write would.
func testVectored(t *testing.T, s *suite) {
	big := make([]byte, 300<<10)
	for i := range big {
		big[i] = byte(i*7 + i>>10)
	}
	for _, tc := range []struct {
		name  string
		build func(op *objstore.WriteOp)
		want  []byte
	}{
		{"writev", func(op *objstore.WriteOp) {
			op.Writev(0, [][]byte{[]byte("hello"), nil, []byte(" "), []byte("world")})
		}, []byte("hello world")},
		{"writev past the end", func(op *objstore.WriteOp) {
			op.Writev(3, [][]byte{[]byte("ab"), []byte("cd")})
		}, []byte("\x00\x00\x00abcd")},
		{"writev of nothing creates", func(op *objstore.WriteOp) { op.Writev(0, nil) }, []byte{}},
		{"writev over earlier steps", func(op *objstore.WriteOp) {
			op.Write(0, []byte("aaaaaaaa"))
			op.Writev(2, [][]byte{[]byte("b"), []byte("cc")})
			op.Append([]byte("z"))
		}, []byte("aabccaaaz")},
		{"appendv", func(op *objstore.WriteOp) {
			op.Append([]byte("one"))
			op.Appendv([][]byte{[]byte(",two"), {}, []byte(",three")})
			op.Appendv([][]byte{[]byte(",four")})
		}, []byte("one,two,three,four")},
		{"large pieces", func(op *objstore.WriteOp) {
			op.Appendv([][]byte{big[:100], big[100 : 200<<10], big[200<<10:]})
			op.Writev(uint64(len(big)), [][]byte{big[:70<<10], big[70<<10:]})
		}, append(append([]byte{}, big...), big...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			oid := s.oid(t)
			mustOperate(t, s.p, oid, tc.build)
			wantData(t, s.p, oid, tc.want)
		})
	}
	oid := s.oid(t)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Write(0, []byte("keep")) })
	wantErrno(t, "writev at 1 TiB", operate(t, s.p, oid, func(op *objstore.WriteOp) {
		op.Append([]byte("lost"))
		op.Writev(1<<40, [][]byte{[]byte("x"), []byte("y")})
	}), syscall.EFBIG)
	wantData(t, s.p, oid, []byte("keep"))
}

func testTruncate(t *testing.T, s *suite) {
	oid := s.oid(t)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.WriteFull([]byte("0123456789")) })
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Truncate(4) })
	wantData(t, s.p, oid, []byte("0123"))
	// Growing zero-fills, also where data used to be.
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Truncate(8) })
	wantData(t, s.p, oid, []byte("0123\x00\x00\x00\x00"))
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) {
		op.Truncate(2)
		op.Truncate(3)
	})
	wantData(t, s.p, oid, []byte("01\x00"))
	// Truncating a missing object is a no-op.
	oid2 := s.oid(t)
	mustOperate(t, s.p, oid2, func(op *objstore.WriteOp) { op.Truncate(10) })
	wantMissing(t, s.p, oid2)
}

func testZero(t *testing.T, s *suite) {
	oid := s.oid(t)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.WriteFull([]byte("0123456789")) })
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Zero(2, 3) })
	wantData(t, s.p, oid, []byte("01\x00\x00\x0056789"))
	// Zeroing across or past the end never extends the object. A range
	// reaching the end may shrink it to the range's start instead of
	// writing zeros (Ceph's OSD truncates; local keeps the size): the bytes
	// read back are the same up to the old end, zeros past the new one.
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Zero(8, 100) })
	wantZeroTail(t, s.p, oid, []byte("01\x00\x00\x00567"), 10)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Zero(50, 10) })
	wantZeroTail(t, s.p, oid, []byte("01\x00\x00\x00567"), 10)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.WriteFull([]byte("0123456789")) })
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Zero(6, 4) }) // exactly to the end
	wantZeroTail(t, s.p, oid, []byte("012345"), 10)
	// A large zero within a large object.
	big := bytes.Repeat([]byte{0xab}, 1<<20)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.WriteFull(big) })
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Zero(1000, 600000) })
	want := append([]byte{}, big...)
	clear(want[1000:601000])
	wantData(t, s.p, oid, want)
	// Zeroing a missing object is a no-op.
	oid2 := s.oid(t)
	mustOperate(t, s.p, oid2, func(op *objstore.WriteOp) { op.Zero(0, 10) })
	wantMissing(t, s.p, oid2)
}

// wantZeroTail checks that oid holds keep followed by zeros, and is either
// len(keep) bytes (shrunk) or oldSize bytes long.
func wantZeroTail(t *testing.T, p objstore.Pool, oid string, keep []byte, oldSize int) {
	t.Helper()
	got := mustData(t, p, oid)
	if len(got) != len(keep) && len(got) != oldSize {
		t.Fatalf("size of %s = %d, want %d or %d", oid, len(got), len(keep), oldSize)
	}
	want := append(append([]byte{}, keep...), make([]byte, len(got)-len(keep))...)
	if !bytes.Equal(got, want) {
		t.Fatalf("data of %s = %q, want %q", oid, trunc(got), trunc(want))
	}
	if st := mustStat(t, p, oid); st.Size != uint64(len(got)) {
		t.Fatalf("stat size of %s = %d, read %d bytes", oid, st.Size, len(got))
	}
}

func testReadRanges(t *testing.T, s *suite) {
	oid := s.oid(t)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.WriteFull([]byte("0123456789")) })
	for _, tc := range []struct {
		off, n uint64
		want   string
	}{
		{0, 0, "0123456789"},
		{3, 0, "3456789"},
		{3, 4, "3456"},
		{8, 10, "89"},
		{10, 5, ""},
		{100, 0, ""},
	} {
		op := &objstore.ReadOp{}
		r := op.Read(tc.off, tc.n)
		if err := s.p.Read(ctxT(t), oid, op); err != nil {
			t.Fatalf("read %d+%d: %v", tc.off, tc.n, err)
		}
		if string(r.Data()) != tc.want {
			t.Errorf("read %d+%d = %q, want %q", tc.off, tc.n, r.Data(), tc.want)
		}
	}
}

func testStat(t *testing.T, s *suite) {
	oid := s.oid(t)
	before := time.Now().Add(-time.Minute)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.WriteFull(make([]byte, 4096)) })
	st := mustStat(t, s.p, oid)
	if st.Size != 4096 {
		t.Fatalf("size %d, want 4096", st.Size)
	}
	mt := time.Unix(0, st.MTime)
	if mt.Before(before) || mt.After(time.Now().Add(time.Minute)) {
		t.Fatalf("mtime %v is not about now", mt)
	}
	time.Sleep(10 * time.Millisecond)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.SetOmap(kv("k", "v")) })
	st2 := mustStat(t, s.p, oid)
	if st2.MTime < st.MTime {
		t.Fatalf("mtime went back from %d to %d", st.MTime, st2.MTime)
	}
	if st2.Size != 4096 {
		t.Fatalf("omap write changed the size to %d", st2.Size)
	}
}

func testOmapSetGet(t *testing.T, s *suite) {
	oid := s.oid(t)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.SetOmap(kv("b", "2", "a", "1", "c", "")) })
	// SetOmap creates the object, empty.
	wantData(t, s.p, oid, []byte{})
	wantOmap(t, s.p, oid, map[string]string{"a": "1", "b": "2", "c": ""})
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) {
		op.SetOmap(kv("a", "one"))
		op.SetOmap(map[string][]byte{"bin\x00key": {0, 1, 2, 255}})
	})
	op := &objstore.ReadOp{}
	r := op.GetOmapValsByKeys("missing", "bin\x00key", "a")
	if err := s.p.Read(ctxT(t), oid, op); err != nil {
		t.Fatal(err)
	}
	pg := r.Page()
	if len(pg.Entries) != 2 || pg.Entries[0].Key != "a" || string(pg.Entries[0].Value) != "one" ||
		pg.Entries[1].Key != "bin\x00key" || !bytes.Equal(pg.Entries[1].Value, []byte{0, 1, 2, 255}) {
		t.Fatalf("by keys = %+v", pg.Entries)
	}
	// Listing is in key order.
	op = &objstore.ReadOp{}
	r = op.GetOmapVals("", "", 100)
	if err := s.p.Read(ctxT(t), oid, op); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, e := range r.Page().Entries {
		keys = append(keys, e.Key)
	}
	if !sort.StringsAreSorted(keys) || len(keys) != 4 || r.Page().More {
		t.Fatalf("keys %q more=%v", keys, r.Page().More)
	}
}

func testOmapPaging(t *testing.T, s *suite) {
	oid := s.oid(t)
	all := map[string][]byte{}
	for i := 0; i < 120; i++ {
		all[fmt.Sprintf("key_%03d", i)] = []byte(fmt.Sprint(i))
	}
	for i := 0; i < 10; i++ {
		all[fmt.Sprintf("other_%d", i)] = []byte("o")
	}
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.SetOmap(all) })
	page := func(after, prefix string, max int) objstore.OmapPage {
		t.Helper()
		op := &objstore.ReadOp{}
		r := op.GetOmapVals(after, prefix, max)
		if err := s.p.Read(ctxT(t), oid, op); err != nil {
			t.Fatal(err)
		}
		return r.Page()
	}
	for _, tc := range []struct {
		name          string
		after, prefix string
		max           int
		first, last   string
		n             int
		more          bool
	}{
		{"first page", "", "", 10, "key_000", "key_009", 10, true},
		{"after", "key_009", "", 5, "key_010", "key_014", 5, true},
		{"after between keys", "key_0095", "", 2, "key_010", "key_011", 2, true},
		{"prefix", "", "other_", 100, "other_0", "other_9", 10, false},
		{"prefix exact fit", "", "other_", 10, "other_0", "other_9", 10, false},
		{"prefix and after", "other_4", "other_", 100, "other_5", "other_9", 5, false},
		{"after before prefix", "a", "other_", 3, "other_0", "other_2", 3, true},
		{"tail", "key_115", "key_", 100, "key_116", "key_119", 4, false},
		{"past the end", "zzz", "", 10, "", "", 0, false},
		{"no match", "", "nope", 10, "", "", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pg := page(tc.after, tc.prefix, tc.max)
			if len(pg.Entries) != tc.n || pg.More != tc.more {
				t.Fatalf("got %d entries more=%v, want %d more=%v", len(pg.Entries), pg.More, tc.n, tc.more)
			}
			if tc.n > 0 && (pg.Entries[0].Key != tc.first || pg.Entries[tc.n-1].Key != tc.last) {
				t.Fatalf("got %s..%s, want %s..%s", pg.Entries[0].Key, pg.Entries[tc.n-1].Key, tc.first, tc.last)
			}
		})
	}
	// Paging through everything visits every key once, in order.
	var got []string
	after := ""
	for {
		pg := page(after, "key_", 7)
		for _, e := range pg.Entries {
			if string(all[e.Key]) != string(e.Value) {
				t.Fatalf("%s = %q", e.Key, e.Value)
			}
			got = append(got, e.Key)
			after = e.Key
		}
		if !pg.More {
			break
		}
	}
	if len(got) != 120 || !sort.StringsAreSorted(got) {
		t.Fatalf("paged %d keys (sorted %v)", len(got), sort.StringsAreSorted(got))
	}
}

func testOmapRemoveClear(t *testing.T, s *suite) {
	oid := s.oid(t)
	wantErrno(t, "rm keys of missing object", operate(t, s.p, oid, func(op *objstore.WriteOp) { op.RmOmapKeys("a") }), syscall.ENOENT)
	wantErrno(t, "clear omap of missing object", operate(t, s.p, oid, func(op *objstore.WriteOp) { op.ClearOmap() }), syscall.ENOENT)
	wantMissing(t, s.p, oid)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) {
		op.WriteFull([]byte("data"))
		op.SetOmap(kv("a", "1", "b", "2", "c", "3"))
	})
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.RmOmapKeys("a", "nonexistent") })
	wantOmap(t, s.p, oid, map[string]string{"b": "2", "c": "3"})
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) {
		op.ClearOmap()
		op.SetOmap(kv("d", "4"))
	})
	wantOmap(t, s.p, oid, map[string]string{"d": "4"})
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) {
		op.SetOmap(kv("e", "5"))
		op.RmOmapKeys("e", "d")
	})
	wantOmap(t, s.p, oid, map[string]string{})
	wantData(t, s.p, oid, []byte("data"))
}

func testXattrs(t *testing.T, s *suite) {
	oid := s.oid(t)
	wantErrno(t, "rmxattr of missing object", operate(t, s.p, oid, func(op *objstore.WriteOp) { op.RmXattr("a") }), syscall.ENOENT)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.SetXattr("a", []byte("1")) })
	wantData(t, s.p, oid, []byte{}) // SetXattr creates the object
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) {
		op.SetXattr("b", []byte("2"))
		op.SetXattr("a", []byte("one"))
	})
	op := &objstore.ReadOp{}
	r := op.GetXattr("a")
	if err := s.p.Read(ctxT(t), oid, op); err != nil || string(r.Value()) != "one" {
		t.Fatalf("getxattr a = %q, %v", r.Value(), err)
	}
	op = &objstore.ReadOp{}
	op.GetXattr("nope")
	wantErrno(t, "getxattr missing", s.p.Read(ctxT(t), oid, op), syscall.ENOENT, syscall.ENODATA)
	x := xattrs(t, s.p, oid)
	if len(x) != 2 || string(x["a"]) != "one" || string(x["b"]) != "2" {
		t.Fatalf("xattrs %q", x)
	}
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) {
		op.RmXattr("a")
		op.RmXattr("nope")
	})
	x = xattrs(t, s.p, oid)
	if len(x) != 1 || string(x["b"]) != "2" {
		t.Fatalf("xattrs after rm %q", x)
	}
}

func testAssertExists(t *testing.T, s *suite) {
	oid := s.oid(t)
	wantErrno(t, "assert-exists on missing", operate(t, s.p, oid, func(op *objstore.WriteOp) {
		op.AssertExists()
		op.Write(0, []byte("x"))
	}), syscall.ENOENT)
	wantMissing(t, s.p, oid)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Create(true) })
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) {
		op.AssertExists()
		op.Write(0, []byte("x"))
	})
	wantData(t, s.p, oid, []byte("x"))
	op := &objstore.ReadOp{}
	op.AssertExists()
	if err := s.p.Read(ctxT(t), oid, op); err != nil {
		t.Fatal(err)
	}
}

func testCmpExt(t *testing.T, s *suite) {
	oid := s.oid(t)
	// Whatever a missing object compares as, the operation must fail and
	// create nothing.
	if err := operate(t, s.p, oid, func(op *objstore.WriteOp) {
		op.CmpExt(0, []byte("a"))
		op.Append([]byte("x"))
	}); err == nil {
		t.Fatal("cmpext on a missing object succeeded")
	}
	wantMissing(t, s.p, oid)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Append([]byte("abcdef")) })
	for _, tc := range []struct {
		name string
		off  uint64
		cmp  string
		ok   bool
	}{
		{"equal prefix", 0, "abc", true},
		{"equal middle", 2, "cde", true},
		{"equal to the end", 3, "def", true},
		{"differs", 1, "bcX", false},
		{"past the end is zeroes", 4, "ef\x00\x00", true},
		{"past the end is not data", 4, "efgh", false},
		{"wholly past the end", 10, "a", false},
		{"zeroes wholly past the end", 10, "\x00\x00", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := mustData(t, s.p, oid)
			err := operate(t, s.p, oid, func(op *objstore.WriteOp) {
				op.CmpExt(tc.off, []byte(tc.cmp))
				op.Append([]byte("+"))
			})
			after := mustData(t, s.p, oid)
			switch {
			case tc.ok && err != nil:
				t.Fatalf("cmpext(%d, %q) on %q: %v", tc.off, tc.cmp, before, err)
			case !tc.ok && !errors.Is(err, objstore.ErrMismatch):
				t.Fatalf("cmpext(%d, %q) on %q: got %v, want ErrMismatch", tc.off, tc.cmp, before, err)
			case !tc.ok && !bytes.Equal(before, after):
				t.Fatalf("a failed cmpext changed the object: %q -> %q", before, after)
			case tc.ok && string(after) != string(before)+"+":
				t.Fatalf("append after cmpext: %q -> %q", before, after)
			}
			if !tc.ok {
				return
			}
			// Restore for the next case.
			mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Truncate(6) })
		})
	}
}

// testSubmitOrder: operations submitted one after the other apply in that
// order on an object even when the caller waits for none of them first;
// an append guarded by the expected bytes of the previous one (cmpext)
// lands right after it.
func testSubmitOrder(t *testing.T, s *suite) {
	sub, ok := s.p.(objstore.Submitter)
	if !ok {
		t.Skip("pool does not implement objstore.Submitter")
	}
	oid := s.oid(t)
	var want []byte
	var waits []func() []error
	for i := range 32 {
		rec := []byte(fmt.Sprintf("%04d", i))
		op := &objstore.WriteOp{}
		if i > 0 {
			op.CmpExt(uint64(len(want)-4), want[len(want)-4:])
		}
		op.Append(rec)
		want = append(want, rec...)
		waits = append(waits, sub.Submit(ctxT(t), []objstore.BatchOp{{OID: oid, Op: op}}))
	}
	for i, w := range waits {
		if err := w()[0]; err != nil {
			t.Fatalf("submission %d: %v", i, err)
		}
	}
	wantData(t, s.p, oid, want)
}

func testCompoundRead(t *testing.T, s *suite) {
	oid := s.oid(t)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) {
		op.WriteFull([]byte("payload"))
		op.SetOmap(kv("k1", "v1", "k2", "v2"))
		op.SetXattr("x", []byte("y"))
	})
	op := &objstore.ReadOp{}
	op.AssertExists()
	d := op.Read(1, 3)
	st := op.Stat()
	om := op.GetOmapVals("", "", 10)
	bk := op.GetOmapValsByKeys("k2")
	xa := op.GetXattr("x")
	xs := op.GetXattrs()
	hi := op.Exec("hello", "say_hello", []byte("suite"))
	if err := s.p.Read(ctxT(t), oid, op); err != nil {
		t.Fatal(err)
	}
	if string(d.Data()) != "ayl" || st.Stat().Size != 7 || len(om.Page().Entries) != 2 ||
		len(bk.Page().Entries) != 1 || string(xa.Value()) != "y" || len(xs.Values()) != 1 ||
		string(hi.Out()) != "Hello, suite!" {
		t.Fatalf("results: %q %+v %+v %+v %q %q %q", d.Data(), st.Stat(), om.Page(), bk.Page(), xa.Value(), xs.Values(), hi.Out())
	}
	// A failing step fails the whole read.
	op = &objstore.ReadOp{}
	op.Read(0, 0)
	op.GetXattr("missing")
	wantErrno(t, "read with failing step", s.p.Read(ctxT(t), oid, op), syscall.ENOENT, syscall.ENODATA)
}

// testAtomicity checks that an operation failing at any step leaves the
// object exactly as it was.
func testAtomicity(t *testing.T, s *suite) {
	seed := func(t *testing.T, oid string) {
		mustOperate(t, s.p, oid, func(op *objstore.WriteOp) {
			op.WriteFull([]byte("original"))
			op.SetOmap(kv("a", "1"))
			op.SetXattr("x", []byte("y"))
		})
	}
	for _, tc := range []struct {
		name   string
		exists bool
		build  func(op *objstore.WriteOp)
		errno  []syscall.Errno
	}{
		{"write then exclusive create", true, func(op *objstore.WriteOp) {
			op.Write(0, []byte("CHANGED"))
			op.Append(bytes.Repeat([]byte("more"), 1000))
			op.SetOmap(kv("a", "2", "b", "3"))
			op.RmXattr("x")
			op.Create(true)
		}, []syscall.Errno{syscall.EEXIST}},
		{"truncate, zero, clear then remove twice", true, func(op *objstore.WriteOp) {
			op.Truncate(2)
			op.Zero(0, 1)
			op.ClearOmap()
			op.Remove()
			op.Remove()
		}, []syscall.Errno{syscall.ENOENT}},
		{"writefull then failing method", true, func(op *objstore.WriteOp) {
			op.WriteFull([]byte("new"))
			op.Exec("hello", "record_hello", nil) // EEXIST: the object exists
		}, []syscall.Errno{syscall.EEXIST}},
		{"method that wrote then failed", true, func(op *objstore.WriteOp) {
			op.Exec("hello", "write_return_data", []byte("input makes it fail"))
		}, []syscall.Errno{syscall.EINVAL}},
		{"unknown method after writes", true, func(op *objstore.WriteOp) {
			op.Append([]byte("tail"))
			op.Exec("hello", "no_such_method", nil)
		}, []syscall.Errno{syscall.EOPNOTSUPP}},
		{"create twice on missing", false, func(op *objstore.WriteOp) {
			op.Create(true)
			op.SetOmap(kv("a", "1"))
			op.Create(true)
		}, []syscall.Errno{syscall.EEXIST}},
		{"missing: append then method that wrote then failed", false, func(op *objstore.WriteOp) {
			op.Append([]byte("data"))
			op.Exec("hello", "write_return_data", []byte("x"))
		}, []syscall.Errno{syscall.EINVAL}},
		{"missing: method writes, later step fails", false, func(op *objstore.WriteOp) {
			op.Exec("hello", "record_hello", []byte("a"))
			op.Exec("hello", "record_hello", []byte("b"))
		}, []syscall.Errno{syscall.EEXIST}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			oid := s.oid(t)
			if tc.exists {
				seed(t, oid)
			}
			wantErrno(t, tc.name, operate(t, s.p, oid, tc.build), tc.errno...)
			if !tc.exists {
				wantMissing(t, s.p, oid)
				return
			}
			wantData(t, s.p, oid, []byte("original"))
			wantOmap(t, s.p, oid, map[string]string{"a": "1"})
			if x := xattrs(t, s.p, oid); len(x) != 1 || string(x["x"]) != "y" {
				t.Fatalf("xattrs %q", x)
			}
		})
	}
}

func testExec(t *testing.T, s *suite) {
	oid := s.oid(t)
	_, err := exec(t, s.p, oid, "hello", "say_hello", nil)
	wantErrno(t, "read method on missing object", err, syscall.ENOENT)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Create(true) })
	out, err := exec(t, s.p, oid, "hello", "say_hello", nil)
	if err != nil || string(out) != "Hello, world!" {
		t.Fatalf("say_hello = %q, %v", out, err)
	}
	out, err = exec(t, s.p, oid, "hello", "say_hello", []byte("Tester"))
	if err != nil || string(out) != "Hello, Tester!" {
		t.Fatalf("say_hello Tester = %q, %v", out, err)
	}
	_, err = exec(t, s.p, oid, "hello", "say_hello", bytes.Repeat([]byte{1}, 4096))
	wantErrno(t, "say_hello with long input", err, syscall.EINVAL)
	_, err = exec(t, s.p, oid, "no_such_class", "x", nil)
	wantErrno(t, "unknown class", err, syscall.EOPNOTSUPP)
	_, err = exec(t, s.p, oid, "hello", "no_such_method", nil)
	wantErrno(t, "unknown method", err, syscall.EOPNOTSUPP)
	wantErrno(t, "unknown class in write", operate(t, s.p, oid, func(op *objstore.WriteOp) { op.Exec("no_such_class", "x", nil) }), syscall.EOPNOTSUPP)

	// Write methods through a WriteOp.
	oid2 := s.oid(t)
	mustOperate(t, s.p, oid2, func(op *objstore.WriteOp) { op.Exec("hello", "record_hello", []byte("Tester")) })
	wantErrno(t, "record_hello again", operate(t, s.p, oid2, func(op *objstore.WriteOp) { op.Exec("hello", "record_hello", nil) }), syscall.EEXIST)
	out, err = exec(t, s.p, oid2, "hello", "replay", nil)
	if err != nil || string(out) != "Hello, Tester!" {
		t.Fatalf("replay = %q, %v", out, err)
	}
	if x := xattrs(t, s.p, oid2); len(x["said_by"]) == 0 {
		t.Fatalf("record_hello left no said_by xattr: %q", x)
	}
	mustOperate(t, s.p, oid2, func(op *objstore.WriteOp) { op.Exec("hello", "turn_it_to_11", nil) })
	wantData(t, s.p, oid2, []byte("HELLO, TESTER!"))

	// A write method's output is not an error.
	oid3 := s.oid(t)
	mustOperate(t, s.p, oid3, func(op *objstore.WriteOp) { op.Exec("hello", "write_return_data", nil) })
	if x := xattrs(t, s.p, oid3); string(x["foo"]) != "bar" {
		t.Fatalf("write_return_data xattrs %q", x)
	}

	// A read-only method may not write.
	wantErrno(t, "read-only method that writes", operate(t, s.p, oid2, func(op *objstore.WriteOp) {
		op.Exec("hello", "bad_writer", []byte("overwritten"))
	}), syscall.EIO, syscall.EPERM, syscall.EINVAL)
	wantData(t, s.p, oid2, []byte("HELLO, TESTER!"))

	// numops keeps decimal values in omap. (One call per operation: on Ceph
	// a method's omap reads do not see earlier steps of its operation.)
	oid4 := s.oid(t)
	for _, c := range []struct {
		method, key string
		v           float64
	}{{"add", "n", 5}, {"mul", "n", 3}, {"add", "m", -2}} {
		mustOperate(t, s.p, oid4, func(op *objstore.WriteOp) { op.Exec("numops", c.method, NumopsArgs(c.key, c.v)) })
	}
	wantOmap(t, s.p, oid4, map[string]string{"n": "15", "m": "-2"})
}

// testExecSeesTransaction checks what a class method sees of the earlier
// steps of its operation on Ceph too: the object's existence and size (its
// stat). (On Ceph, a method's data and omap reads see the state before the
// operation; local shows it the operation's own changes, see local's tests.)
// Later steps see the method's changes.
func testExecSeesTransaction(t *testing.T, s *suite) {
	oid := s.oid(t)
	wantErrno(t, "record_hello after create in same op", operate(t, s.p, oid, func(op *objstore.WriteOp) {
		op.Create(true)
		op.Exec("hello", "record_hello", nil)
	}), syscall.EEXIST)
	wantMissing(t, s.p, oid)

	oid2 := s.oid(t)
	mustOperate(t, s.p, oid2, func(op *objstore.WriteOp) {
		op.Exec("hello", "record_hello", []byte("you"))
		op.Append([]byte(" And you."))
		op.SetXattr("said_by", []byte("me"))
	})
	wantData(t, s.p, oid2, []byte("Hello, you! And you."))
	if x := xattrs(t, s.p, oid2); string(x["said_by"]) != "me" {
		t.Fatalf("xattrs %q", x)
	}
}

func testList(t *testing.T, s *suite) {
	pre := s.oid(t) + "/"
	want := []string{pre + "a", pre + "b", pre + "c.1", pre + "c.2"}
	for _, oid := range want {
		mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Create(true) })
	}
	got, err := s.p.List(ctxT(t), pre)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(got)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("list %q = %q, want %q", pre, got, want)
	}
	got, err = s.p.List(ctxT(t), pre+"c.")
	if err != nil || len(got) != 2 {
		t.Fatalf("list c. = %q, %v", got, err)
	}
	mustOperate(t, s.p, pre+"b", func(op *objstore.WriteOp) { op.Remove() })
	got, err = s.p.List(ctxT(t), pre)
	if err != nil || len(got) != 3 {
		t.Fatalf("list after remove = %q, %v", got, err)
	}
}

func testObjectNames(t *testing.T, s *suite) {
	base := s.oid(t)
	long := make([]byte, 400)
	for i := range long {
		long[i] = 'a' + byte(i%26)
	}
	names := []string{
		base + ".journal_data.1.10257c397567.12",
		base + ".rbd_header.abc",
		base + "/slash/../dots",
		base + " spaces and %percent%",
		base + ".ünïcödé",
		base + "." + string(long),
		base + "." + string(long) + "/other",
	}
	for i, oid := range names {
		mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.WriteFull([]byte(fmt.Sprint(i))) })
	}
	for i, oid := range names {
		wantData(t, s.p, oid, []byte(fmt.Sprint(i)))
	}
	got, err := s.p.List(ctxT(t), base)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(got)
	want := append([]string{}, names...)
	sort.Strings(want)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("list = %q\nwant %q", got, want)
	}
	for _, oid := range names {
		mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Remove() })
	}
	if got, _ := s.p.List(ctxT(t), base); len(got) != 0 {
		t.Fatalf("left after remove: %q", got)
	}
}

// chunk is a self-describing record appended by concurrency tests:
// "<writer>:<seq>:<payload>|" with a payload whose length varies.
func chunk(writer, seq int) []byte {
	payload := bytes.Repeat([]byte{byte('a' + (writer*7+seq)%26)}, 1+(writer*131+seq*17)%3000)
	return []byte(fmt.Sprintf("<%d:%d:%s|>", writer, seq, payload))
}

// checkChunks parses data as chunks and checks every (writer, seq) with
// seq < perWriter appears exactly once, intact, in per-writer order.
func checkChunks(t *testing.T, data []byte, writers, perWriter int) {
	t.Helper()
	next := make([]int, writers)
	for len(data) > 0 {
		var w, q int
		if _, err := fmt.Sscanf(string(data[:min(len(data), 40)]), "<%d:%d:", &w, &q); err != nil || w < 0 || w >= writers {
			t.Fatalf("garbage at %q", trunc(data))
		}
		c := chunk(w, q)
		if !bytes.HasPrefix(data, c) {
			t.Fatalf("chunk %d:%d damaged or interleaved: %q", w, q, trunc(data))
		}
		if q != next[w] {
			t.Fatalf("writer %d: chunk %d where %d expected", w, q, next[w])
		}
		next[w]++
		data = data[len(c):]
	}
	for w, n := range next {
		if n != perWriter {
			t.Fatalf("writer %d: %d chunks, want %d", w, n, perWriter)
		}
	}
}

func appendChunks(t *testing.T, p objstore.Pool, oid string, writers, perWriter, first int) {
	t.Helper()
	var g errgroup.Group
	for w := 0; w < writers; w++ {
		g.Go(func() error {
			for q := 0; q < perWriter; q++ {
				op := &objstore.WriteOp{}
				op.Append(chunk(first+w, q))
				if err := p.Operate(context.Background(), oid, op); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
}

func testConcurrentAppends(t *testing.T, s *suite) {
	oid := s.oid(t)
	const writers, per = 16, 40
	appendChunks(t, s.p, oid, writers, per, 0)
	checkChunks(t, mustData(t, s.p, oid), writers, per)
}

func testConcurrentOmap(t *testing.T, s *suite) {
	oid := s.oid(t)
	const writers, per = 8, 25
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for q := 0; q < per; q++ {
				op := &objstore.WriteOp{}
				op.SetOmap(kv(fmt.Sprintf("w%d_%03d", w, q), fmt.Sprint(q)))
				op.Append([]byte{byte(w)})
				if err := s.p.Operate(context.Background(), oid, op); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	if got := omapAll(t, s.p, oid); len(got) != writers*per {
		t.Fatalf("%d keys, want %d", len(got), writers*per)
	}
	if st := mustStat(t, s.p, oid); st.Size != writers*per {
		t.Fatalf("size %d, want %d", st.Size, writers*per)
	}
}

func numopsCount(t *testing.T, pools []objstore.Pool, oid string, perPool, goroutines, each int) {
	t.Helper()
	var wg sync.WaitGroup
	for _, p := range pools {
		for g := 0; g < goroutines; g++ {
			wg.Add(1)
			go func(p objstore.Pool) {
				defer wg.Done()
				for i := 0; i < each; i++ {
					op := &objstore.WriteOp{}
					op.Exec("numops", "add", NumopsArgs("count", 1))
					if err := p.Operate(context.Background(), oid, op); err != nil {
						t.Error(err)
						return
					}
				}
			}(p)
		}
	}
	wg.Wait()
	want := fmt.Sprint(len(pools) * goroutines * each)
	wantOmap(t, pools[0], oid, map[string]string{"count": want})
}

func testConcurrentNumops(t *testing.T, s *suite) {
	numopsCount(t, []objstore.Pool{s.p}, s.oid(t), 1, 8, 25)
}

// handler is a WatchHandler recording what it gets; it acks with
// reply(payload) unless noAck.
type handler struct {
	mu     sync.Mutex
	got    []*objstore.Notification
	errs   []error
	noAck  bool
	reply  func(p []byte) []byte
	notify chan struct{}
	errc   chan error
}

func newHandler() *handler {
	return &handler{notify: make(chan struct{}, 100), errc: make(chan error, 10)}
}

func (h *handler) HandleNotify(_ context.Context, n *objstore.Notification) {
	h.mu.Lock()
	h.got = append(h.got, n)
	h.mu.Unlock()
	if !h.noAck {
		r := []byte("ack:" + string(n.Payload))
		if h.reply != nil {
			r = h.reply(n.Payload)
		}
		n.Ack(r)
	}
	h.notify <- struct{}{}
}

func (h *handler) HandleWatchError(_ context.Context, err error) {
	h.mu.Lock()
	h.errs = append(h.errs, err)
	h.mu.Unlock()
	h.errc <- err
}

func (h *handler) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.got)
}

func watchersOf(t *testing.T, p objstore.Pool, oid string) []objstore.WatcherInfo {
	t.Helper()
	ws, err := p.ListWatchers(ctxT(t), oid)
	if err != nil {
		t.Fatalf("list watchers: %v", err)
	}
	return ws
}

func hasWatcher(ws []objstore.WatcherInfo, c objstore.ClientInfo, cookie uint64) bool {
	for _, w := range ws {
		if w.Cookie == cookie && w.Client.Addr == c.Addr && w.Client.ID == c.ID {
			return true
		}
	}
	return false
}

func testWatchNotify(t *testing.T, s *suite) {
	oid := s.oid(t)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Create(true) })
	res, err := s.p.Notify(ctxT(t), oid, []byte("nobody"), 5*time.Second)
	if err != nil || len(res.Acks) != 0 || len(res.TimedOut) != 0 {
		t.Fatalf("notify without watchers: %+v, %v", res, err)
	}
	h := newHandler()
	w := mustWatch(t, s.p, oid, h)
	if err := w.Check(); err != nil {
		t.Fatalf("check: %v", err)
	}
	if !hasWatcher(watchersOf(t, s.p, oid), s.p.Client(), w.Cookie()) {
		t.Fatalf("watch %d not listed: %+v", w.Cookie(), watchersOf(t, s.p, oid))
	}
	for i := 0; i < 3; i++ {
		payload := fmt.Sprintf("ping %d", i)
		res, err := s.p.Notify(ctxT(t), oid, []byte(payload), 10*time.Second)
		if err != nil {
			t.Fatalf("notify: %v", err)
		}
		if len(res.Acks) != 1 || len(res.TimedOut) != 0 || res.Acks[0].Watcher.Cookie != w.Cookie() ||
			string(res.Acks[0].Reply) != "ack:"+payload {
			t.Fatalf("notify result %+v", res)
		}
	}
	h.mu.Lock()
	if len(h.got) != 3 || string(h.got[2].Payload) != "ping 2" || h.got[0].Cookie != w.Cookie() ||
		h.got[0].NotifierID != s.p.Client().ID || h.got[0].NotifyID == h.got[1].NotifyID {
		t.Fatalf("notifications %+v", h.got)
	}
	h.mu.Unlock()
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if hasWatcher(watchersOf(t, s.p, oid), s.p.Client(), w.Cookie()) {
		t.Fatal("closed watch still listed")
	}
	res, err = s.p.Notify(ctxT(t), oid, []byte("after close"), 5*time.Second)
	if err != nil || len(res.Acks) != 0 {
		t.Fatalf("notify after close: %+v, %v", res, err)
	}
	if h.count() != 3 {
		t.Fatal("closed watch got a notification")
	}
}

// funcHandler is a WatchHandler made of a function.
type funcHandler func(ctx context.Context, n *objstore.Notification)

func (f funcHandler) HandleNotify(ctx context.Context, n *objstore.Notification) { f(ctx, n) }
func (funcHandler) HandleWatchError(context.Context, error)                      {}

type ctxKey struct{}

// testWatchClose checks Close's waiting rules: from outside, Close returns
// only after a running handler call returned; from inside the handler (with
// the context the call received), it does not wait for itself. Handler
// calls see the values of Watch's context and a context cancelled by Close.
func testWatchClose(t *testing.T, s *suite) {
	oid := s.oid(t)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Create(true) })
	wctx := context.WithValue(ctxT(t), ctxKey{}, "mark")

	t.Run("FromOutsideWaits", func(t *testing.T) {
		entered, release, returned := make(chan context.Context, 1), make(chan struct{}), make(chan struct{})
		w, err := s.p.Watch(wctx, oid, funcHandler(func(ctx context.Context, n *objstore.Notification) {
			n.Ack(nil)
			entered <- ctx
			<-release
			close(returned)
		}))
		if err != nil {
			t.Fatal(err)
		}
		defer close(release)
		notified := make(chan error, 1)
		go func() {
			_, err := s.p.Notify(ctxT(t), oid, nil, 5*time.Second)
			notified <- err
		}()
		defer func() { <-notified }()
		hctx := testwait.Recv(t, entered, 10*time.Second, "a notification delivered")
		if v, _ := hctx.Value(ctxKey{}).(string); v != "mark" {
			t.Errorf("the handler's context lacks the values of Watch's context (got %q)", v)
		}
		closed := make(chan error, 1)
		go func() { closed <- w.Close(context.Background()) }()
		select {
		case <-closed:
			t.Fatal("Close returned while a handler call was running")
		case <-time.After(200 * time.Millisecond):
		}
		release <- struct{}{}
		if err := testwait.Recv(t, closed, 10*time.Second, "Close to return after the handler call returned"); err != nil {
			t.Fatalf("close: %v", err)
		}
		select {
		case <-returned:
		default:
			t.Fatal("Close returned before the handler call")
		}
		if hctx.Err() == nil {
			t.Error("the handler's context is not cancelled after Close")
		}
	})

	t.Run("FromHandlerDoesNotWait", func(t *testing.T) {
		wc := make(chan objstore.Watch, 1)
		done := make(chan error, 1)
		w, err := s.p.Watch(wctx, oid, funcHandler(func(ctx context.Context, n *objstore.Notification) {
			n.Ack(nil)
			done <- (<-wc).Close(ctx)
		}))
		if err != nil {
			t.Fatal(err)
		}
		wc <- w
		if _, err := s.p.Notify(ctxT(t), oid, nil, 5*time.Second); err != nil {
			t.Fatalf("notify: %v", err)
		}
		if err := testwait.Recv(t, done, 10*time.Second, "Close from the handler to return (deadlocked?)"); err != nil {
			t.Fatalf("close from the handler: %v", err)
		}
		if hasWatcher(watchersOf(t, s.p, oid), s.p.Client(), w.Cookie()) {
			t.Fatal("watch closed from its handler is still listed")
		}
		if err := w.Close(context.Background()); err != nil {
			t.Fatalf("second close: %v", err)
		}
	})
}

func testNotifyTimeout(t *testing.T, s *suite) {
	oid := s.oid(t)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Create(true) })
	silent := newHandler()
	silent.noAck = true
	ws := mustWatch(t, s.p, oid, silent)
	talker := newHandler()
	wt := mustWatch(t, s.p, oid, talker)
	start := time.Now()
	res, err := s.p.Notify(ctxT(t), oid, []byte("x"), 500*time.Millisecond)
	wantErrno(t, "notify with a silent watcher", err, syscall.ETIMEDOUT)
	if d := time.Since(start); d < 400*time.Millisecond || d > 10*time.Second {
		t.Fatalf("notify returned after %v", d)
	}
	if len(res.Acks) != 1 || res.Acks[0].Watcher.Cookie != wt.Cookie() ||
		len(res.TimedOut) != 1 || res.TimedOut[0].Cookie != ws.Cookie() {
		t.Fatalf("result %+v", res)
	}
}

func testWatchMissing(t *testing.T, s *suite) {
	oid := s.oid(t)
	_, err := s.p.Watch(ctxT(t), oid, newHandler())
	wantErrno(t, "watch missing object", err, syscall.ENOENT)
	_, err = s.p.Notify(ctxT(t), oid, nil, time.Second)
	wantErrno(t, "notify missing object", err, syscall.ENOENT)
}

func testCancelled(t *testing.T, s *suite) {
	oid := s.oid(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	op := &objstore.WriteOp{}
	op.Create(true)
	if err := s.p.Operate(ctx, oid, op); !errors.Is(err, context.Canceled) {
		t.Fatalf("operate with cancelled context: %v", err)
	}
	wantMissing(t, s.p, oid)
}

// --- two-client tests ---

func testTwoReadYourWrites(t *testing.T, s *suite) {
	oid := s.oid(t)
	w, r := s.p, s.q
	for i := 0; i < 20; i++ {
		v := []byte(fmt.Sprintf("version %d", i))
		mustOperate(t, w, oid, func(op *objstore.WriteOp) {
			op.WriteFull(v)
			op.SetOmap(kv("v", string(v)))
		})
		wantData(t, r, oid, v)
		wantOmap(t, r, oid, map[string]string{"v": string(v)})
		w, r = r, w
	}
}

func testTwoNotify(t *testing.T, s *suite) {
	oid := s.oid(t)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Create(true) })
	h := newHandler()
	w := mustWatch(t, s.p, oid, h)
	if !hasWatcher(watchersOf(t, s.q, oid), s.p.Client(), w.Cookie()) {
		t.Fatalf("b does not see a's watch: %+v", watchersOf(t, s.q, oid))
	}
	res, err := s.q.Notify(ctxT(t), oid, []byte("from b"), 10*time.Second)
	if err != nil || len(res.Acks) != 1 || string(res.Acks[0].Reply) != "ack:from b" ||
		res.Acks[0].Watcher.Client.Addr != s.p.Client().Addr {
		t.Fatalf("notify from b: %+v, %v", res, err)
	}
	h.mu.Lock()
	if len(h.got) != 1 || h.got[0].NotifierID != s.q.Client().ID {
		t.Fatalf("a got %+v", h.got)
	}
	h.mu.Unlock()
	w.Close(context.Background())
	if ws := watchersOf(t, s.q, oid); len(ws) != 0 {
		t.Fatalf("watchers after close: %+v", ws)
	}
}

func testTwoNotifyBoth(t *testing.T, s *suite) {
	oid := s.oid(t)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Create(true) })
	ha, hb := newHandler(), newHandler()
	ha.reply = func(p []byte) []byte { return []byte("a") }
	hb.reply = func(p []byte) []byte { return []byte("b") }
	mustWatch(t, s.p, oid, ha)
	mustWatch(t, s.q, oid, hb)
	for _, p := range []objstore.Pool{s.p, s.q} {
		res, err := p.Notify(ctxT(t), oid, []byte("all"), 10*time.Second)
		if err != nil || len(res.Acks) != 2 {
			t.Fatalf("notify: %+v, %v", res, err)
		}
		replies := map[string]bool{}
		for _, a := range res.Acks {
			replies[string(a.Reply)] = true
		}
		if !replies["a"] || !replies["b"] {
			t.Fatalf("replies %+v", res.Acks)
		}
	}
}

func testTwoNotifyTimeout(t *testing.T, s *suite) {
	oid := s.oid(t)
	mustOperate(t, s.p, oid, func(op *objstore.WriteOp) { op.Create(true) })
	h := newHandler()
	h.noAck = true
	w := mustWatch(t, s.p, oid, h)
	res, err := s.q.Notify(ctxT(t), oid, []byte("x"), 300*time.Millisecond)
	wantErrno(t, "notify to a silent watcher", err, syscall.ETIMEDOUT)
	if len(res.TimedOut) != 1 || res.TimedOut[0].Cookie != w.Cookie() || res.TimedOut[0].Client.Addr != s.p.Client().Addr {
		t.Fatalf("result %+v", res)
	}
}

func testTwoConcurrentAppends(t *testing.T, s *suite) {
	oid := s.oid(t)
	const writers, per = 8, 30
	var wg sync.WaitGroup
	for i, p := range []objstore.Pool{s.p, s.q} {
		wg.Add(1)
		go func(i int, p objstore.Pool) {
			defer wg.Done()
			appendChunks(t, p, oid, writers, per, i*writers)
		}(i, p)
	}
	wg.Wait()
	checkChunks(t, mustData(t, s.p, oid), 2*writers, per)
}

func testTwoConcurrentNumops(t *testing.T, s *suite) {
	numopsCount(t, []objstore.Pool{s.p, s.q}, s.oid(t), 1, 4, 25)
}

func testTwoCreateRace(t *testing.T, s *suite) {
	for i := 0; i < 10; i++ {
		oid := s.oid(t)
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for j, p := range []objstore.Pool{s.p, s.q} {
			wg.Add(1)
			go func(j int, p objstore.Pool) {
				defer wg.Done()
				op := &objstore.WriteOp{}
				op.Create(true)
				op.WriteFull([]byte{byte('a' + j)})
				errs[j] = p.Operate(context.Background(), oid, op)
			}(j, p)
		}
		wg.Wait()
		ok := 0
		for _, err := range errs {
			if err == nil {
				ok++
			} else if objstore.Errno(err) != syscall.EEXIST {
				t.Fatal(err)
			}
		}
		if ok != 1 {
			t.Fatalf("%d exclusive creates succeeded", ok)
		}
	}
}
