package blockdev

// Takeover tests: one writer per image, across processes (DESIGN.md
// "Ownership, epochs and fencing"). Each node is a helper process serving a
// journaled device and taking commands on stdin; the test SIGKILLs or
// SIGSTOPs them, then checks what reached the image and the journal. The
// scenarios run against every backend registered in takeoverBackends (the
// local one here, Ceph in takeover_ceph_test.go).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local/localtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
	"github.com/csi-rbdj/csi-rbdj/pkg/testproc"
)

// takeoverBackend is a cluster the takeover tests run on.
type takeoverBackend struct {
	name string
	// connect opens a new client instance (in this process) and its fencer.
	connect func(t testing.TB) (objstore.Pool, fencerLister)
	// env tells a helper process how to reach the same cluster.
	env []string
	// createImage creates a journaled image.
	createImage func(t testing.TB, name string, size int64)
}

// fencerLister is a backend's fencer that can also list and lift fences
// (local.Cluster and ceph.Cluster both are).
type fencerLister interface {
	exclusivelock.Fencer
	ListBlocklist(ctx context.Context) (map[string]time.Time, error)
	Unblocklist(ctx context.Context, addr string) error
}

// helperConnectors open a helper process's client, by backend name.
var helperConnectors = map[string]func(t testing.TB) (objstore.Pool, fencerLister){
	"local": func(t testing.TB) (objstore.Pool, fencerLister) {
		return connectLocal(t, os.Getenv("TAKEOVER_LOCAL_DIR"))
	},
}

func connectLocal(t testing.TB, dir string) (objstore.Pool, fencerLister) {
	t.Helper()
	c, p := localtest.Open(t, dir, local.Options{})
	return p, c
}

func localBackend(t *testing.T) takeoverBackend {
	dir := t.TempDir()
	return takeoverBackend{
		name:    "local",
		connect: func(t testing.TB) (objstore.Pool, fencerLister) { return connectLocal(t, dir) },
		env:     []string{"TAKEOVER_BACKEND=local", "TAKEOVER_LOCAL_DIR=" + dir},
		createImage: func(t testing.TB, name string, size int64) {
			p, _ := connectLocal(t, dir)
			if err := image.Create(context.Background(), p, name, size, image.CreateOptions{Order: 22}); err != nil {
				t.Fatal(err)
			}
		},
	}
}

// noFencer "fences" nobody: the seed-002 test uses it to let a zombie write
// on, to show that replay alone never applies its stale epoch.
type noFencer struct{}

func (noFencer) Blocklist(context.Context, string, time.Duration) error { return nil }

// TestTakeoverHelperProcess is a node of the takeover tests: it opens the
// journaled device (taking the lock, replaying, starting an epoch), prints
// "READY tag=<tag> addr=<client address> usable=<ns from the open call to
// the first completed read>", then runs one command per stdin line and
// answers one line:
//
//	w <off> <len> <seed> <marker 0|1>   write a pattern   -> OK | ERR <error>
//	r <off> <len>                       read              -> DATA <crc32c>
//	f                                   flush             -> OK | ERR <error>
//	s                                   device size       -> SIZE <bytes>
//	c                                   close and exit    -> OK | ERR <error>
func TestTakeoverHelperProcess(t *testing.T) {
	be := testproc.ChildEnv(t, "TAKEOVER_BACKEND", "helper process of the takeover tests")
	connect, ok := helperConnectors[be]
	if !ok {
		fmt.Printf("OPENERR no backend %q in this binary\n", be)
		os.Exit(3)
	}
	pool, fencer := connect(t)
	o := Options{AckPolicy: AckApplied, Fencer: fencer, LockDescription: "takeover node " + os.Getenv("TAKEOVER_NODE")}
	if v := os.Getenv("TAKEOVER_COMMIT_AGE"); v != "" {
		o.Journal.CommitAge, _ = time.ParseDuration(v)
	}
	if v := os.Getenv("TAKEOVER_OWNER_TIMEOUT"); v != "" {
		o.OwnerTimeout, _ = time.ParseDuration(v)
	}
	if os.Getenv("TAKEOVER_FENCE") == "none" {
		o.Fencer = noFencer{}
	}
	if os.Getenv("TAKEOVER_ACK") == "journaled" {
		o.AckPolicy = AckJournaled
	}
	ctx := context.Background()
	start := time.Now()
	d, err := Open(ctx, pool, os.Getenv("TAKEOVER_IMAGE"), o)
	if err != nil {
		fmt.Printf("OPENERR %s\n", oneLine(err))
		os.Exit(3)
	}
	opened := time.Since(start)
	if _, err := d.ReadAt(ctx, make([]byte, 4096), 0); err != nil {
		fmt.Printf("OPENERR first read: %s\n", oneLine(err))
		os.Exit(3)
	}
	fmt.Printf("READY tag=%d addr=%s open=%d usable=%d\n", d.Tag(), pool.Client().Addr, opened.Nanoseconds(), time.Since(start).Nanoseconds())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		num := func(i int) int64 { n, _ := strconv.ParseInt(f[i], 10, 64); return n }
		switch f[0] {
		case "w":
			_, err := d.WriteAt(ctx, pattern(num(3), int(num(2)), f[4] == "1"), num(1))
			reply(err)
		case "r":
			b := make([]byte, num(2))
			if _, err := d.ReadAt(ctx, b, num(1)); err != nil {
				reply(err)
				continue
			}
			fmt.Printf("DATA %08x\n", crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
		case "f":
			reply(d.Flush(ctx))
		case "s":
			fmt.Printf("SIZE %d\n", d.Size())
		case "c":
			reply(d.Close(ctx))
			return
		default:
			fmt.Printf("ERR unknown command %q\n", f[0])
		}
	}
}

func reply(err error) {
	if err != nil {
		fmt.Printf("ERR %s\n", oneLine(err))
		return
	}
	fmt.Println("OK")
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", " ") }

// zombieMarker starts every 16-byte cell of a marked pattern (the seed
// follows it), so that a zombie's data is recognisable anywhere in the
// image or the journal.
var zombieMarker = []byte("ZOMBIE-WRITE")

// pattern is the deterministic content of a write: seeded random bytes, or
// with marker, the zombie marker with the seed in every 16-byte cell.
func pattern(seed int64, n int, marker bool) []byte {
	b := make([]byte, n)
	if marker {
		for i := 0; i+16 <= n; i += 16 {
			copy(b[i:], zombieMarker)
			binary.LittleEndian.PutUint32(b[i+12:], uint32(seed))
		}
		return b
	}
	r := rand.New(rand.NewPCG(uint64(seed), 42))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func crcOf(b []byte) string {
	return fmt.Sprintf("%08x", crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
}

// node is a helper process serving the image.
type node struct {
	t     testing.TB
	name  string
	p     *testproc.Proc
	in    io.WriteCloser
	lines chan string
	ready map[string]string
	dead  bool
}

type nodeOptions struct {
	commitAge    time.Duration
	ownerTimeout time.Duration
	noFence      bool
	ackJournaled bool // acknowledge writes once journaled (AckJournaled)
}

// startNode starts a helper process on the image and waits until it serves
// (or fails to open: then it returns the OPENERR line and a nil node).
func startNode(t testing.TB, be takeoverBackend, name, img string, o nodeOptions) (*node, string) {
	t.Helper()
	env := append([]string{"TAKEOVER_IMAGE=" + img, "TAKEOVER_NODE=" + name}, be.env...)
	if o.commitAge > 0 {
		env = append(env, "TAKEOVER_COMMIT_AGE="+o.commitAge.String())
	}
	if o.ownerTimeout != 0 {
		env = append(env, "TAKEOVER_OWNER_TIMEOUT="+o.ownerTimeout.String())
	}
	if o.noFence {
		env = append(env, "TAKEOVER_FENCE=none")
	}
	if o.ackJournaled {
		env = append(env, "TAKEOVER_ACK=journaled")
	}
	cmd := testproc.Command("^TestTakeoverHelperProcess$", env...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, name: name, in: in, lines: make(chan string, 16)}
	n.p = testproc.Start(t, cmd)
	// The reader goroutine ends when the process's stdout closes (it exits
	// or is killed; testproc kills it at the end of the test).
	go func() {
		defer close(n.lines)
		sc := bufio.NewScanner(n.p.Stdout)
		for sc.Scan() {
			n.lines <- sc.Text()
		}
	}()
	t.Cleanup(n.kill)
	line := n.read(2 * time.Minute)
	switch {
	case strings.HasPrefix(line, "READY "):
		n.ready = map[string]string{}
		for _, kv := range strings.Fields(line)[1:] {
			k, v, _ := strings.Cut(kv, "=")
			n.ready[k] = v
		}
		return n, ""
	case strings.HasPrefix(line, "OPENERR "):
		n.kill()
		return nil, strings.TrimPrefix(line, "OPENERR ")
	}
	n.kill()
	t.Fatalf("node %s: unexpected first line %q", name, line)
	return nil, ""
}

func (n *node) read(timeout time.Duration) string {
	n.t.Helper()
	select {
	case l, ok := <-n.lines:
		if !ok {
			n.t.Fatalf("node %s exited", n.name)
		}
		return l
	case <-time.After(timeout):
		n.t.Fatalf("node %s: no answer within %v", n.name, timeout)
	}
	return ""
}

// do runs one command and returns its answer.
func (n *node) do(format string, args ...any) string {
	n.t.Helper()
	if _, err := fmt.Fprintf(n.in, format+"\n", args...); err != nil {
		n.t.Fatalf("node %s: %v", n.name, err)
	}
	return n.read(time.Minute)
}

func (n *node) write(off int64, size int, seed int64) {
	n.t.Helper()
	if r := n.do("w %d %d %d 0", off, size, seed); r != "OK" {
		n.t.Fatalf("node %s: write at %d: %s", n.name, off, r)
	}
}

func (n *node) readCRC(off int64, size int) string {
	n.t.Helper()
	r := n.do("r %d %d", off, size)
	crc, ok := strings.CutPrefix(r, "DATA ")
	if !ok {
		n.t.Fatalf("node %s: read at %d: %s", n.name, off, r)
	}
	return crc
}

func (n *node) tag() uint64 {
	v, _ := strconv.ParseUint(n.ready["tag"], 10, 64)
	return v
}

func (n *node) duration(key string) time.Duration {
	v, _ := strconv.ParseInt(n.ready[key], 10, 64)
	return time.Duration(v)
}

func (n *node) signal(sig syscall.Signal) {
	n.t.Helper()
	if err := n.p.Cmd.Process.Signal(sig); err != nil {
		n.t.Fatalf("node %s: %v: %v", n.name, sig, err)
	}
}

// stopped waits until the process is in state T (stopped) per /proc.
func (n *node) waitStopped() {
	n.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", n.p.Cmd.Process.Pid))
		if err == nil {
			if i := bytes.LastIndexByte(b, ')'); i > 0 && len(b) > i+2 && (b[i+2] == 'T' || b[i+2] == 't') {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	n.t.Fatalf("node %s did not stop", n.name)
}

// kill continues (if stopped) and SIGKILLs the process and reaps it.
func (n *node) kill() {
	if n.dead {
		return
	}
	n.dead = true
	n.p.Cmd.Process.Signal(syscall.SIGCONT)
	n.p.Kill()
	n.in.Close()
	for range n.lines {
	}
}

// close closes the device cleanly and waits for the process to exit.
func (n *node) close() {
	n.t.Helper()
	if r := n.do("c"); r != "OK" {
		n.t.Fatalf("node %s: close: %s", n.name, r)
	}
	n.in.Close()
	for range n.lines {
	}
	if err := n.p.Wait(); err != nil {
		n.t.Fatalf("node %s: %v", n.name, err)
	}
	n.dead = true
}

const (
	blk       = 64 << 10
	imageSize = 64 << 20
)

// imageCRC reads a block of the image directly (no lock, no replay).
func imageCRC(t testing.TB, pool objstore.Pool, img string, off int64, size int) (string, []byte) {
	t.Helper()
	im, err := image.Open(context.Background(), pool, img)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, size)
	if _, err := im.ReadAt(context.Background(), b, off); err != nil {
		t.Fatal(err)
	}
	return crcOf(b), b
}

// journalEntries decodes every entry of the image's journal data objects.
func journalEntries(t testing.TB, pool objstore.Pool, img string) []journal.Entry {
	t.Helper()
	ctx := context.Background()
	im, err := image.Open(ctx, pool, img)
	if err != nil {
		t.Fatal(err)
	}
	prefix := journal.DataOIDPrefix(pool.ID(), im.ID())
	oids, err := pool.List(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}
	var out []journal.Entry
	for _, oid := range oids {
		op := &objstore.ReadOp{}
		res := op.Read(0, 0)
		if err := pool.Read(ctx, oid, op); err != nil {
			t.Fatalf("read %s: %v", oid, err)
		}
		b := res.Data()
		for len(b) > 0 {
			e, n, err := journal.DecodeEntry(b)
			if err != nil {
				break // a torn tail
			}
			out = append(out, e)
			b = b[n:]
		}
	}
	return out
}

// zombieEntries counts journal entries whose write carries the marker.
func zombieEntries(t testing.TB, entries []journal.Entry) int {
	t.Helper()
	n := 0
	for _, e := range entries {
		var ev rbdjournal.EventEntry
		if err := cephenc.Unmarshal(e.Data, &ev); err != nil {
			t.Fatalf("journal entry %d/%d: %v", e.TagTid, e.EntryTid, err)
		}
		if w, ok := ev.Event.(rbdjournal.AioWriteEvent); ok && bytes.Contains(w.Data, zombieMarker) {
			n++
		}
	}
	return n
}

func blocklisted(t testing.TB, f fencerLister, addr string) bool {
	t.Helper()
	bl, err := f.ListBlocklist(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, ok := bl[addr]
	return ok
}

// unfenceLater lifts a fence when the test ends (the Ceph cluster is
// shared: leave its blocklist as it was).
func unfenceLater(t testing.TB, f fencerLister, addr string) {
	t.Cleanup(func() { f.Unblocklist(context.Background(), addr) })
}

func TestTakeover(t *testing.T) {
	for _, mode := range []string{"SIGKILL", "SIGSTOP"} {
		t.Run(mode, func(t *testing.T) { testTakeover(t, localBackend(t), mode) })
	}
}

// testTakeover: node A serves the image and writes, then dies (SIGKILL) or
// freezes (SIGSTOP). Node B opens it: B fences A, breaks its lock, replays
// its journal, starts a new epoch and serves. A frozen A, once continued,
// can no longer write: its writes fail and reach neither the image nor the
// journal.
func testTakeover(t *testing.T, be takeoverBackend, mode string) {
	img := fmt.Sprintf("takeover-%s-%d", strings.ToLower(mode), time.Now().UnixNano()%1e6)
	be.createImage(t, img, imageSize)
	pool, fencer := be.connect(t)

	// A's commit position never moves: B must replay all of A's writes.
	a, _ := startNode(t, be, "a", img, nodeOptions{commitAge: time.Hour})
	const nA = 16
	for i := range nA {
		a.write(int64(i)*blk, blk, int64(100+i))
	}
	if r := a.do("f"); r != "OK" {
		t.Fatalf("flush: %s", r)
	}
	if mode == "SIGKILL" {
		a.signal(syscall.SIGKILL)
	} else {
		a.signal(syscall.SIGSTOP)
		a.waitStopped()
	}
	unfenceLater(t, fencer, a.ready["addr"])

	b, errLine := startNode(t, be, "b", img, nodeOptions{})
	if b == nil {
		t.Fatalf("node b could not take over: %s", errLine)
	}
	t.Logf("%s takeover on %s: B's open (fence, break, replay, new epoch) %v, usable (first read done) %v after the open call",
		mode, be.name, b.duration("open").Round(time.Millisecond), b.duration("usable").Round(time.Millisecond))
	if !blocklisted(t, fencer, a.ready["addr"]) {
		t.Fatalf("A (%s) was not fenced", a.ready["addr"])
	}
	if b.tag() <= a.tag() {
		t.Fatalf("B's tag %d is not newer than A's %d", b.tag(), a.tag())
	}
	for i := range nA {
		if got, want := b.readCRC(int64(i)*blk, blk), crcOf(pattern(int64(100+i), blk, false)); got != want {
			t.Fatalf("block %d after takeover: crc %s, want A's write %s", i, got, want)
		}
	}
	// B writes over half of A's blocks.
	for i := range nA / 2 {
		b.write(int64(i)*blk, blk, int64(200+i))
	}
	if r := b.do("f"); r != "OK" {
		t.Fatalf("flush: %s", r)
	}

	if mode == "SIGSTOP" {
		a.signal(syscall.SIGCONT)
		// The zombie tries to overwrite B's blocks and to write new ones.
		for _, blkNo := range []int64{0, 1, 40, 41} {
			r := a.do("w %d %d %d 1", blkNo*blk, blk, 900+blkNo)
			if !strings.HasPrefix(r, "ERR") {
				t.Fatalf("zombie write at block %d after SIGCONT: %q; want an error", blkNo, r)
			}
			if blkNo == 0 {
				t.Logf("zombie write after SIGCONT: %s", r)
				if !strings.Contains(r, syscall.ESHUTDOWN.Error()) && !strings.Contains(r, "lock lost") {
					t.Errorf("zombie write failed with %q; want the fence (ESHUTDOWN) or the lost lock", r)
				}
			}
		}
		if r := a.do("f"); !strings.HasPrefix(r, "ERR") {
			t.Fatalf("zombie flush after SIGCONT: %q", r)
		}
		a.kill()
	}

	// What the image and the journal hold now.
	for i := range nA {
		want := crcOf(pattern(int64(100+i), blk, false))
		if i < nA/2 {
			want = crcOf(pattern(int64(200+i), blk, false))
		}
		if got := b.readCRC(int64(i)*blk, blk); got != want {
			t.Fatalf("block %d through B: crc %s, want %s", i, got, want)
		}
	}
	for _, blkNo := range []int64{0, 1, 40, 41} {
		if _, data := imageCRC(t, pool, img, blkNo*blk, blk); bytes.Contains(data, zombieMarker) {
			t.Fatalf("the zombie's write reached the image at block %d", blkNo)
		}
	}
	if n := zombieEntries(t, journalEntries(t, pool, img)); n != 0 {
		t.Fatalf("%d zombie writes reached the journal", n)
	}
	b.close()

	// A third open replays nothing stale and finds B's data.
	d := openDevice(t, pool, img, Options{Fencer: fencer})
	for i := range nA {
		want := pattern(int64(100+i), blk, false)
		if i < nA/2 {
			want = pattern(int64(200+i), blk, false)
		}
		got := make([]byte, blk)
		if _, err := d.ReadAt(context.Background(), got, int64(i)*blk); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("block %d after reopening: not the last acknowledged write", i)
		}
	}
}

func TestStaleEpochAfterTakeover(t *testing.T) {
	testStaleEpochAfterTakeover(t, localBackend(t))
}

// testStaleEpochAfterTakeover builds seed 002's hazard with real processes:
// A writes X and freezes; B takes over WITHOUT fencing A (an unsafe fencer,
// to let the zombie on) and replays X; A continues and journals Z, an entry
// of its old epoch, and dies; B writes Y over Z in place, commits it and
// crashes. The journal now holds A's stale entry past A's commit position,
// and newer data sits in place: the next owner must skip the stale entry
// (and it must be there to skip). With fencing, Z never reaches the journal
// at all (testTakeover); TestStaleEpochNotReplayed covers the other order
// (the new epoch committed nothing yet).
func testStaleEpochAfterTakeover(t *testing.T, be takeoverBackend) {
	ctx := context.Background()
	img := fmt.Sprintf("stale-epoch-%d", time.Now().UnixNano()%1e6)
	be.createImage(t, img, imageSize)
	pool, fencer := be.connect(t)
	im, err := image.Open(ctx, pool, img)
	if err != nil {
		t.Fatal(err)
	}

	a, _ := startNode(t, be, "a", img, nodeOptions{commitAge: time.Hour})
	a.write(0, blk, 100) // X
	a.signal(syscall.SIGSTOP)
	a.waitStopped()

	b, errLine := startNode(t, be, "b", img, nodeOptions{commitAge: 50 * time.Millisecond, noFence: true, ownerTimeout: time.Second})
	if b == nil {
		t.Fatalf("node b could not take over: %s", errLine)
	}
	if got, want := b.readCRC(0, blk), crcOf(pattern(100, blk, false)); got != want {
		t.Fatalf("B did not replay A's write")
	}

	// The unfenced zombie journals (and applies) Z at block 1, then dies.
	a.signal(syscall.SIGCONT)
	if r := a.do("w %d %d %d 1", blk, blk, 900); r != "OK" {
		t.Fatalf("unfenced zombie write: %s (the hazard needs it to land)", r)
	}
	a.kill()
	// A is gone; fence it as its death would be handled (on Ceph its
	// watches would otherwise linger until they time out).
	if err := fencer.Blocklist(ctx, a.ready["addr"], time.Hour); err != nil {
		t.Fatal(err)
	}
	if z := zombieEntries(t, journalEntries(t, pool, img)); z != 1 {
		t.Fatalf("%d zombie entries in the journal, want 1: the hazard was not built", z)
	}

	// B writes Y over it in place, commits, and crashes.
	b.write(blk, blk, 200)
	waitCommitted(t, pool, im.ID(), b.tag())
	b.signal(syscall.SIGKILL)
	b.kill()
	if _, data := imageCRC(t, pool, img, blk, blk); !bytes.Equal(data, pattern(200, blk, false)) {
		t.Fatalf("block 1 does not hold B's write in place before the replay")
	}

	// The next owner (with a real fencer) replays; A's stale entry must
	// be skipped, not applied over B's newer data.
	d := openDevice(t, pool, img, Options{Fencer: fencer})
	st := d.ReplayStats()
	t.Logf("replay after the zombie: %+v", st)
	// B committed everything it wrote: the only entry past a commit
	// position is the zombie's, and it must not be replayed.
	if st.Entries != 0 {
		t.Errorf("replayed %d entries; only the zombie's stale one was there: %+v", st.Entries, st)
	}
	got := make([]byte, blk)
	if _, err := d.ReadAt(ctx, got, blk); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(got, zombieMarker) {
		t.Fatalf("a stale epoch's entry was replayed over newer data")
	}
	if !bytes.Equal(got, pattern(200, blk, false)) {
		t.Fatalf("block 1 does not hold B's (the newest epoch's) write")
	}
	for _, addr := range []string{a.ready["addr"], b.ready["addr"]} {
		unfenceLater(t, fencer, addr)
	}
}

// waitCommitted waits until the image journal's client has committed an
// entry of tag (its commit position moved into that epoch).
func waitCommitted(t testing.TB, pool objstore.Pool, id string, tag uint64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := clsjournal.GetClient(context.Background(), pool, journal.HeaderOID(id), "")
		if err != nil {
			t.Fatal(err)
		}
		if ps := c.CommitPosition.ObjectPositions; len(ps) > 0 && ps[0].TagTid == tag {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the commit position never reached tag %d: %+v", tag, c.CommitPosition)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
