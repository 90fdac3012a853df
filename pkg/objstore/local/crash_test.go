package local

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// TestCrashKill SIGKILLs a child that commits compound operations (appends
// of random sizes plus omap updates that describe the data, half of them
// through a class method) at random moments, 30 times, and after each kill
// reopens the directory and checks that every acknowledged operation is
// there, that no partial operation is visible and that the omap agrees with
// the data. A small MaxLogBytes makes the child checkpoint often, so kills
// also land during checkpoints; every fifth kill lands during Open (recovery).
func TestCrashKill(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test")
	}
	const kills = 30
	dir := t.TempDir()
	seed := time.Now().UnixNano()
	r := rand.New(rand.NewSource(seed))
	acked := map[uint64]string{}
	var totalPresent, duringOpen int
	for round := 0; round < kills; round++ {
		ch := startCrashLoop(t, dir, round)
		if round%5 == 4 {
			time.Sleep(time.Duration(r.Intn(20_000)) * time.Microsecond)
			duringOpen++
		} else {
			ch.expect("ready", time.Minute)
			time.Sleep(time.Duration(10+r.Intn(300)) * time.Millisecond)
		}
		ch.Kill()
		n := readAcks(ch, acked)
		c := openT(t, dir, testOptions())
		present := checkAcked(t, poolT(t, c, "rbd"), acked, round, seed)
		totalPresent = len(present)
		c.Close()
		t.Logf("round %d: %d ops acknowledged before the kill; %d acknowledged in all, %d present", round, n, len(acked), len(present))
	}
	t.Logf("%d kills (%d during open/recovery): %d acknowledged operations all present and intact; %d operations present in all", kills, duringOpen, len(acked), totalPresent)
}

// startCrashLoop starts the crashloop child of a round on dir; its seqs
// start at (round+1)·10⁹.
func startCrashLoop(t *testing.T, dir string, round int) *child {
	return startChild(t, "crashloop", "LOCAL_TEST_DIR="+dir,
		fmt.Sprintf("LOCAL_TEST_SEQBASE=%d", uint64(round+1)*1_000_000_000),
		"LOCAL_TEST_MAXLOG="+strconv.Itoa(2<<20))
}

var ackRe = regexp.MustCompile(`^ack (\d+) (\S+)$`)

// readAcks adds the operations a dead crashloop child acknowledged ("ack
// <seq> <oid>") to acked and returns how many it read.
func readAcks(ch *child, acked map[uint64]string) int {
	n := 0
	for l := range ch.lines {
		if m := ackRe.FindStringSubmatch(l); m != nil {
			s, _ := strconv.ParseUint(m[1], 10, 64)
			acked[s] = m[2]
			n++
		}
	}
	return n
}

// checkAcked checks the crash objects (intact chunks, omap consistent with
// the data) and that every acknowledged operation is on its object; it
// returns the seqs present with their objects.
func checkAcked(t *testing.T, p objstore.Pool, acked map[uint64]string, round int, seed int64) map[uint64]string {
	t.Helper()
	present := map[uint64]string{}
	for w := 0; w < crashWorkers; w++ {
		for _, oid := range crashObjects(w) {
			for _, s := range verifyChunkObject(t, p, oid) {
				present[s] = oid
			}
		}
	}
	for s, oid := range acked {
		if got, ok := present[s]; !ok || got != oid {
			t.Fatalf("round %d (seed %d): acknowledged op %d on %s lost (found on %q)", round, seed, s, oid, got)
		}
	}
	return present
}

// TestCrashKillWhileOpen is TestCrashKill with the test process keeping the
// directory open and reading the child's objects all along: the child's
// kills (in the middle of log writes, applies and checkpoints) are repaired
// by the surviving client (takeover recovery, by its readers or its next
// commit), and no read ever sees a partial operation, across processes.
func TestCrashKillWhileOpen(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test")
	}
	const kills = 20
	dir := t.TempDir()
	c := openT(t, dir, testOptions())
	p := poolT(t, c, "rbd")
	seed := time.Now().UnixNano()
	r := rand.New(rand.NewSource(seed))
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bgErr := make(chan error, 2)
	var reads atomic.Int64
	var parentSeq atomic.Uint64
	bg.Add(2)
	go func() { // reads the child's objects all along
		defer bg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for w := 0; w < crashWorkers; w++ {
				for _, oid := range crashObjects(w) {
					if _, err := checkChunkObject(p, oid); err != nil {
						bgErr <- fmt.Errorf("concurrent reader: %w", err)
						return
					}
					reads.Add(1)
				}
			}
		}
	}()
	go func() { // writes its own object all along
		defer bg.Done()
		mine, err := newChunkWriter(context.Background(), p, []string{"parent"})
		if err != nil {
			bgErr <- err
			return
		}
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			s := parentSeq.Load() + 1
			if err := mine.append(context.Background(), "parent", s, int(s*37%3000), s%2 == 0); err != nil {
				bgErr <- err
				return
			}
			parentSeq.Store(s)
		}
	}()
	acked := map[uint64]string{}
	for round := 0; round < kills; round++ {
		ch := startCrashLoop(t, dir, round)
		ch.expect("ready", time.Minute)
		time.Sleep(time.Duration(10+r.Intn(300)) * time.Millisecond)
		ch.Kill()
		readAcks(ch, acked)
		// Let the test process's writer commit (and so repair) before checking.
		for want := parentSeq.Load() + 2; parentSeq.Load() < want; {
			select {
			case err := <-bgErr:
				t.Fatalf("round %d (seed %d): %v", round, seed, err)
			case <-time.After(time.Millisecond):
			}
		}
		checkAcked(t, p, acked, round, seed)
	}
	close(stop)
	bg.Wait()
	select {
	case err := <-bgErr:
		t.Fatal(err)
	default:
	}
	if seqs := verifyChunkObject(t, p, "parent"); len(seqs) != int(parentSeq.Load()) {
		t.Fatalf("the test process's object has %d ops, want %d", len(seqs), parentSeq.Load())
	}
	t.Logf("%d kills with the directory open: %d acknowledged child operations and %d of the test process all present; "+
		"the test process finished %d of the killed child's batches; %d consistent concurrent reads",
		kills, len(acked), parentSeq.Load(), c.takeovers.Load(), reads.Load())
	if c.takeovers.Load() == 0 {
		t.Errorf("no kill landed inside a batch of the child: the takeover path was not exercised")
	}
}

// walRecords returns the offset and length of every valid record of the log.
func walRecords(t *testing.T, path string) (offs, lens []int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	start, ok := readWALHeader(f)
	if !ok {
		t.Fatal("no log header")
	}
	off := int64(walHeaderSize)
	if _, _, err := scanWAL(f, off, start, func(r *record) error {
		n := int64(recHeaderSize + r.bodyLen() + 4)
		offs = append(offs, off)
		lens = append(lens, n)
		off += n
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return offs, lens
}

// openRW opens path for reading and writing; the caller closes it.
func openRW(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestTornTail kills a child right after it wrote an operation's record to
// the log and before it synced or applied it, then damages that last record
// as a power loss could (cut short, or corrupted) and reopens: recovery must
// drop exactly that operation and keep every earlier one; an intact record
// is replayed. The log must also be usable afterwards.
func TestTornTail(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, wal string, off, n int64)
		last   bool // the last operation survives
	}{
		{"intact", func(*testing.T, string, int64, int64) {}, true},
		{"truncated", func(t *testing.T, wal string, off, n int64) {
			if err := os.Truncate(wal, off+n/2); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"last bytes missing", func(t *testing.T, wal string, off, n int64) {
			f := openRW(t, wal)
			defer f.Close()
			f.WriteAt(make([]byte, 7), off+n-7) // what a preallocated log holds where nothing was written
		}, false},
		{"corrupted", func(t *testing.T, wal string, off, n int64) {
			f := openRW(t, wal)
			defer f.Close()
			b := make([]byte, 1)
			f.ReadAt(b, off+n/2)
			b[0] ^= 0x40
			f.WriteAt(b, off+n/2)
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const ops = 20
			dir := t.TempDir()
			ch := startChild(t, "torn", "LOCAL_TEST_DIR="+dir, "LOCAL_TEST_OPS="+strconv.Itoa(ops))
			ch.expect(fmt.Sprintf("ack %d", ops), time.Minute)
			<-ch.done
			ch.Wait()
			wal := filepath.Join(dir, "wal")
			offs, lens := walRecords(t, wal)
			if len(offs) == 0 {
				t.Fatal("no records in the log")
			}
			last := len(offs) - 1
			tc.damage(t, wal, offs[last], lens[last])

			c := openT(t, dir, testOptions())
			p := poolT(t, c, "rbd")
			seqs := verifyChunkObject(t, p, "torn")
			want := ops
			if tc.last {
				want++
			}
			if len(seqs) != want || seqs[len(seqs)-1] != uint64(want) {
				t.Fatalf("after recovery: ops %v, want 1..%d", seqs, want)
			}
			// The log goes on: a new operation after the dropped one is durable.
			cw, err := newChunkWriter(context.Background(), p, []string{"torn"})
			if err != nil {
				t.Fatal(err)
			}
			if err := cw.append(context.Background(), "torn", 100, 333, true); err != nil {
				t.Fatal(err)
			}
			c.Close()
			c = openT(t, dir, testOptions())
			seqs = verifyChunkObject(t, poolT(t, c, "rbd"), "torn")
			if len(seqs) != want+1 || seqs[want] != 100 {
				t.Fatalf("after reopening: ops %v", seqs)
			}
		})
	}
}

// TestTwoProcesses runs two child processes and the test process on one
// pool at once: appends to one object and read-modify-write counting
// through a class method must lose nothing.
func TestTwoProcesses(t *testing.T) {
	dir := t.TempDir()
	c := openT(t, dir, testOptions())
	p := poolT(t, c, "rbd")
	var kids []*child
	for _, w := range []int{0, 100} {
		ch := startChild(t, "hammer", "LOCAL_TEST_DIR="+dir, "LOCAL_TEST_WRITER="+strconv.Itoa(w))
		ch.expect("ready", time.Minute)
		kids = append(kids, ch)
	}
	errc := make(chan error, hammerWriters)
	for w := 0; w < hammerWriters; w++ {
		go func(w int) { errc <- hammer(context.Background(), p, 200+w) }(w)
	}
	for w := 0; w < hammerWriters; w++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	for _, ch := range kids {
		ch.expect("done", 2*time.Minute)
	}
	writers := []int{}
	for _, base := range []int{0, 100, 200} {
		for w := 0; w < hammerWriters; w++ {
			writers = append(writers, base+w)
		}
	}
	// Every chunk intact, in order per writer.
	op := &objstore.ReadOp{}
	d := op.Read(0, 0)
	if err := p.Read(context.Background(), "hammer.log", op); err != nil {
		t.Fatal(err)
	}
	next := map[int]int{}
	re := regexp.MustCompile(`^<(\d+):(\d+):(x*)\|>`)
	data := string(d.Data())
	for len(data) > 0 {
		m := re.FindStringSubmatch(data)
		if m == nil {
			t.Fatalf("damaged or interleaved append at %q", data[:min(len(data), 60)])
		}
		w, _ := strconv.Atoi(m[1])
		q, _ := strconv.Atoi(m[2])
		if q != next[w] || len(m[3]) != (w*13+q*7)%900 {
			t.Fatalf("writer %d: chunk %d (len %d) where %d expected", w, q, len(m[3]), next[w])
		}
		next[w]++
		data = data[len(m[0]):]
	}
	for _, w := range writers {
		if next[w] != hammerOps {
			t.Fatalf("writer %d: %d appends, want %d", w, next[w], hammerOps)
		}
	}
	op = &objstore.ReadOp{}
	om := op.GetOmapVals("", "", 0)
	if err := p.Read(context.Background(), "hammer.counter", op); err != nil {
		t.Fatal(err)
	}
	total := len(writers) * hammerOps
	entries := om.Page().Entries
	if len(entries) != total+1 || entries[0].Key != "count" || string(entries[0].Value) != strconv.Itoa(total) {
		t.Fatalf("counter: %d keys, count %q; want %d keys, count %d", len(entries), entries[0].Value, total+1, total)
	}
}

type recHandler struct {
	notes chan *objstore.Notification
	errs  chan error
	reply string
}

func newRecHandler(reply string) *recHandler {
	return &recHandler{notes: make(chan *objstore.Notification, 100), errs: make(chan error, 10), reply: reply}
}

func (h *recHandler) HandleNotify(_ context.Context, n *objstore.Notification) {
	n.Ack([]byte(h.reply))
	h.notes <- n
}

func (h *recHandler) HandleWatchError(_ context.Context, err error) { h.errs <- err }

// TestWatchNotifyProcesses delivers notifications both ways between the test
// process and a child, then kills the child: its watch then counts as timed
// out at once and is unregistered.
func TestWatchNotifyProcesses(t *testing.T) {
	t.Run("socket file", func(t *testing.T) { testWatchNotifyProcesses(t, t.TempDir()) })
	t.Run("abstract socket", func(t *testing.T) {
		// A directory whose socket paths do not fit in sun_path.
		dir := filepath.Join(t.TempDir(), strings.Repeat("d", 120))
		testWatchNotifyProcesses(t, dir)
	})
}

func testWatchNotifyProcesses(t *testing.T, dir string) {
	c := openT(t, dir, testOptions())
	p := poolT(t, c, "rbd")
	ch := startChild(t, "watcher", "LOCAL_TEST_DIR="+dir)
	f := strings.Fields(ch.expect("ready", time.Minute))
	childID, _ := strconv.ParseUint(f[1], 10, 64)
	childAddr := f[2]
	childCookie, _ := strconv.ParseUint(f[3], 10, 64)

	ws, err := p.ListWatchers(context.Background(), "watched")
	if err != nil || len(ws) != 1 || ws[0].Client.Addr != childAddr || ws[0].Client.ID != childID || ws[0].Cookie != childCookie {
		t.Fatalf("watchers %+v, %v", ws, err)
	}
	res, err := p.Notify(context.Background(), "watched", []byte("hello"), 5*time.Second)
	if err != nil || len(res.Acks) != 1 || string(res.Acks[0].Reply) != "pong:hello" || res.Acks[0].Watcher.Cookie != childCookie {
		t.Fatalf("notify to child: %+v, %v", res, err)
	}
	ch.expect(fmt.Sprintf("notify %d hello", c.Client().ID), 5*time.Second)

	h := newRecHandler("parent-reply")
	w, err := p.Watch(context.Background(), "watched", h)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(context.Background())
	ch.send("notify")
	l := ch.expect("notified", 10*time.Second)
	if !strings.HasPrefix(l, "notified 0 ") || !strings.Contains(l, c.Client().Addr+"=parent-reply") || !strings.Contains(l, childAddr+"=pong:from-child") {
		t.Fatalf("child's notify: %q", l)
	}
	select {
	case n := <-h.notes:
		if string(n.Payload) != "from-child" || n.NotifierID != childID {
			t.Fatalf("parent got %+v", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("parent's watch got nothing")
	}

	ch.Kill()
	start := time.Now()
	res, err = p.Notify(context.Background(), "watched", []byte("anyone?"), 5*time.Second)
	if objstore.Errno(err) != syscall.ETIMEDOUT || len(res.TimedOut) != 1 || res.TimedOut[0].Cookie != childCookie ||
		len(res.Acks) != 1 || res.Acks[0].Watcher.Cookie != w.Cookie() {
		t.Fatalf("notify after the child died: %+v, %v", res, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("a dead watcher took %v to count as timed out", d)
	}
	ws, err = p.ListWatchers(context.Background(), "watched")
	if err != nil || len(ws) != 1 || ws[0].Cookie != w.Cookie() {
		t.Fatalf("watchers after the child died: %+v, %v", ws, err)
	}
}

// TestBlocklistProcess fences a writing child: its next write and read fail
// with ESHUTDOWN, its watch reports the loss, and nothing it writes lands
// after Blocklist returns.
func TestBlocklistProcess(t *testing.T) {
	dir := t.TempDir()
	c := openT(t, dir, testOptions())
	p := poolT(t, c, "rbd")
	ch := startChild(t, "victim", "LOCAL_TEST_DIR="+dir)
	addr := strings.Fields(ch.expect("ready", time.Minute))[1]
	ch.expect("ack 5", 30*time.Second)
	if err := c.Blocklist(context.Background(), addr, time.Hour); err != nil {
		t.Fatal(err)
	}
	size := func() uint64 {
		op := &objstore.ReadOp{}
		st := op.Stat()
		if err := p.Read(context.Background(), "victim", op); err != nil {
			t.Fatal(err)
		}
		return st.Stat().Size
	}
	fenced := size()
	want := map[string]bool{"writeerr 108": true, "readerr 108": true, "watcherror 108": true}
	acks := 0
	deadline := time.After(10 * time.Second)
	for len(want) > 0 {
		select {
		case l, ok := <-ch.lines:
			if !ok {
				t.Fatalf("child exited; still waiting for %v", want)
			}
			if strings.HasPrefix(l, "ack ") {
				acks++
			}
			delete(want, l)
		case <-deadline:
			t.Fatalf("still waiting for %v", want)
		}
	}
	if got := size(); got != fenced {
		t.Fatalf("the fenced client's writes grew the object from %d to %d after Blocklist returned", fenced, got)
	}
	bl, err := c.ListBlocklist(context.Background())
	if err != nil || bl[addr].IsZero() {
		t.Fatalf("blocklist %v, %v", bl, err)
	}
	if ws, err := p.ListWatchers(context.Background(), "victim"); err != nil || len(ws) != 0 {
		t.Fatalf("watchers of a blocklisted client: %+v, %v", ws, err)
	}
	if err := c.Unblocklist(context.Background(), addr); err != nil {
		t.Fatal(err)
	}
	if bl, _ := c.ListBlocklist(context.Background()); len(bl) != 0 {
		t.Fatalf("blocklist after unblocklist: %v", bl)
	}
}
