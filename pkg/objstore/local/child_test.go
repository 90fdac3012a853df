package local

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/objstoretest"
	"github.com/csi-rbdj/csi-rbdj/pkg/testproc"
)

// The tests in this file re-execute the test binary as child processes:
// TestMain runs runChild instead of the tests when LOCAL_TEST_CHILD is set.
// A child talks to its parent through stdout lines.

const childEnv = "LOCAL_TEST_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(runChild(mode))
	}
	os.Exit(m.Run())
}

// child is a running child process.
type child struct {
	*testproc.Proc
	t     testing.TB
	stdin io.WriteCloser
	lines chan string
	done  chan struct{} // closed when stdout is closed
}

func startChild(t testing.TB, mode string, env ...string) *child {
	t.Helper()
	cmd := testproc.Command("^$", append([]string{childEnv + "=" + mode}, env...)...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &child{Proc: testproc.Start(t, cmd), t: t, stdin: stdin, lines: make(chan string, 1<<16), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer close(c.lines)
		sc := bufio.NewScanner(c.Stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	return c
}

// expect waits for a line starting with prefix and returns it.
func (c *child) expect(prefix string, timeout time.Duration) string {
	c.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				c.t.Fatalf("child exited while waiting for %q", prefix)
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-deadline:
			c.t.Fatalf("timed out waiting for %q from child", prefix)
		}
	}
}

func (c *child) send(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.stdin, line+"\n"); err != nil {
		c.t.Fatalf("write to child: %v", err)
	}
}

// out prints one line to the parent (children only).
var outMu sync.Mutex

func out(format string, args ...any) {
	outMu.Lock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
	outMu.Unlock()
}

func runChild(mode string) int {
	dir := os.Getenv("LOCAL_TEST_DIR")
	opts := testOptions()
	if n, err := strconv.ParseInt(os.Getenv("LOCAL_TEST_MAXLOG"), 10, 64); err == nil {
		opts.MaxLogBytes = n
	}
	var err error
	switch mode {
	case "crashloop":
		err = childCrashLoop(dir, opts)
	case "torn":
		err = childTorn(dir, opts)
	case "hammer":
		err = childHammer(dir, opts)
	case "watcher":
		err = childWatcher(dir, opts)
	case "victim":
		err = childVictim(dir, opts)
	case "midapply":
		err = childMidApply(dir, opts)
	case "snapcrash":
		err = childSnapCrash(dir, opts)
	default:
		err = fmt.Errorf("unknown child mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	return 0
}

// --- chunks: self-checking records appended by the crash tests ---

const chunkMagic = 0xc0ffee01

// crashChunk is a chunk: magic u32 | seq u64 | len u32 | payload | crc32c u32.
// The payload is a function of seq, so a reader can check it.
func crashChunk(seq uint64, n int) []byte {
	b := make([]byte, 16, 16+n+4)
	binary.LittleEndian.PutUint32(b, chunkMagic)
	binary.LittleEndian.PutUint64(b[4:], seq)
	binary.LittleEndian.PutUint32(b[12:], uint32(n))
	for i := 0; i < n; i++ {
		b = append(b, byte(seq*31+uint64(i)*7))
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// parseChunks checks data is a whole number of intact chunks and returns their seqs.
func parseChunks(data []byte) ([]uint64, error) {
	var seqs []uint64
	for pos := 0; pos < len(data); {
		if len(data)-pos < 20 || binary.LittleEndian.Uint32(data[pos:]) != chunkMagic {
			return seqs, fmt.Errorf("no chunk at %d of %d", pos, len(data))
		}
		seq := binary.LittleEndian.Uint64(data[pos+4:])
		n := int(binary.LittleEndian.Uint32(data[pos+12:]))
		if len(data)-pos < 20+n {
			return seqs, fmt.Errorf("partial chunk %d at %d", seq, pos)
		}
		if !bytes.Equal(data[pos:pos+20+n], crashChunk(seq, n)) {
			return seqs, fmt.Errorf("damaged chunk %d at %d", seq, pos)
		}
		seqs = append(seqs, seq)
		pos += 20 + n
	}
	return seqs, nil
}

// crashClass has one write method, append: it appends its input (a chunk)
// and records the object's new size, crc and last seq in omap, checking the
// recorded size against the object's.
func crashClass() objstore.Class {
	return objstore.Class{"append": {Write: true, Call: func(ctx objstore.MethodContext, in []byte) ([]byte, error) {
		size, err := ctx.Stat()
		if err != nil && objstore.Errno(err) != syscall.ENOENT {
			return nil, err
		}
		var crc uint32
		if err == nil {
			rec, err := ctx.OmapGet("size")
			if err != nil || string(rec) != strconv.FormatUint(size, 10) {
				return nil, fmt.Errorf("%w: omap size %q, object size %d (%v)", syscall.EUCLEAN, rec, size, err)
			}
			c, err := ctx.OmapGet("crc")
			if err != nil {
				return nil, err
			}
			v, _ := strconv.ParseUint(string(c), 10, 32)
			crc = uint32(v)
		}
		if err := ctx.Write(size, in); err != nil {
			return nil, err
		}
		seq := binary.LittleEndian.Uint64(in[4:])
		return nil, ctx.OmapSet(chunkOmap(size+uint64(len(in)), crc32.Update(crc, castagnoli, in), seq))
	}}}
}

func chunkOmap(size uint64, crc uint32, seq uint64) map[string][]byte {
	return map[string][]byte{
		"size": []byte(strconv.FormatUint(size, 10)),
		"crc":  []byte(strconv.FormatUint(uint64(crc), 10)),
		"last": []byte(strconv.FormatUint(seq, 10)),
	}
}

// verifyChunkObject checks an object written with chunks: intact chunks,
// omap consistent with the data. It returns the seqs.
func verifyChunkObject(t testing.TB, p objstore.Pool, oid string) []uint64 {
	t.Helper()
	seqs, err := checkChunkObject(p, oid)
	if err != nil {
		t.Fatal(err)
	}
	return seqs
}

func checkChunkObject(p objstore.Pool, oid string) ([]uint64, error) {
	op := &objstore.ReadOp{}
	d := op.Read(0, 0)
	om := op.GetOmapValsByKeys("size", "crc", "last")
	if err := p.Read(context.Background(), oid, op); err != nil {
		if objstore.Errno(err) == syscall.ENOENT {
			return nil, nil
		}
		return nil, fmt.Errorf("read %s: %w", oid, err)
	}
	data := d.Data()
	seqs, err := parseChunks(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", oid, err)
	}
	m := map[string]string{}
	for _, e := range om.Page().Entries {
		m[e.Key] = string(e.Value)
	}
	want := map[string]string{
		"size": strconv.Itoa(len(data)),
		"crc":  strconv.FormatUint(uint64(crc32.Checksum(data, castagnoli)), 10),
	}
	if len(seqs) > 0 {
		want["last"] = strconv.FormatUint(seqs[len(seqs)-1], 10)
	}
	for k, v := range want {
		if m[k] != v {
			return nil, fmt.Errorf("%s: omap %s = %q, want %q (data %d bytes, %d chunks): a partial operation is visible", oid, k, m[k], v, len(data), len(seqs))
		}
	}
	return seqs, nil
}

// chunkWriter appends chunks to objects it owns, keeping their omap in step.
type chunkWriter struct {
	p    objstore.Pool
	size map[string]uint64
	crc  map[string]uint32
}

func newChunkWriter(ctx context.Context, p objstore.Pool, oids []string) (*chunkWriter, error) {
	w := &chunkWriter{p: p, size: map[string]uint64{}, crc: map[string]uint32{}}
	for _, oid := range oids {
		op := &objstore.ReadOp{}
		d := op.Read(0, 0)
		err := p.Read(ctx, oid, op)
		if err != nil && objstore.Errno(err) != syscall.ENOENT {
			return nil, err
		}
		w.size[oid] = uint64(len(d.Data()))
		w.crc[oid] = crc32.Checksum(d.Data(), castagnoli)
	}
	return w, nil
}

// append appends chunk seq to oid: with plain steps or through the class.
func (w *chunkWriter) append(ctx context.Context, oid string, seq uint64, n int, viaClass bool) error {
	c := crashChunk(seq, n)
	op := &objstore.WriteOp{}
	if viaClass {
		op.Exec("crashtest", "append", c)
	} else {
		op.Write(w.size[oid], c)
		op.SetOmap(chunkOmap(w.size[oid]+uint64(len(c)), crc32.Update(w.crc[oid], castagnoli, c), seq))
	}
	if err := w.p.Operate(ctx, oid, op); err != nil {
		return err
	}
	w.size[oid] += uint64(len(c))
	w.crc[oid] = crc32.Update(w.crc[oid], castagnoli, c)
	return nil
}

func chunkSize(r *rand.Rand) int {
	switch r.Intn(4) {
	case 0:
		return r.Intn(64 << 10)
	case 1:
		return r.Intn(8 << 10)
	default:
		return r.Intn(512)
	}
}

func crashObjects(worker int) []string {
	return []string{fmt.Sprintf("crash.%d.a", worker), fmt.Sprintf("crash.%d.b", worker)}
}

const crashWorkers = 4

// openChild opens a client of dir and its pool "rbd" (children only).
func openChild(dir string, opts Options) (*Cluster, objstore.Pool, error) {
	c, err := Open(dir, opts)
	if err != nil {
		return nil, nil, err
	}
	p, err := c.Pool(context.Background(), "rbd")
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, p, nil
}

// childCrashLoop appends chunks to its objects until killed, printing
// "ack <seq> <oid>" after each acknowledged operation.
func childCrashLoop(dir string, opts Options) error {
	base, _ := strconv.ParseUint(os.Getenv("LOCAL_TEST_SEQBASE"), 10, 64)
	_, p, err := openChild(dir, opts)
	if err != nil {
		return err
	}
	ctx := context.Background()
	out("ready")
	var seq atomic.Uint64
	seq.Store(base)
	errc := make(chan error, crashWorkers)
	for w := 0; w < crashWorkers; w++ {
		go func(w int) {
			oids := crashObjects(w)
			cw, err := newChunkWriter(ctx, p, oids)
			if err != nil {
				errc <- err
				return
			}
			r := rand.New(rand.NewSource(int64(base) + int64(w)))
			for i := 0; ; i++ {
				oid := oids[r.Intn(len(oids))]
				s := seq.Add(1)
				if err := cw.append(ctx, oid, s, chunkSize(r), i%3 == 0); err != nil {
					errc <- err
					return
				}
				out("ack %d %s", s, oid)
			}
		}(w)
	}
	return <-errc
}

// childTorn performs LOCAL_TEST_OPS acknowledged appends, then one more
// whose process dies right after the log write (before fsync and apply).
func childTorn(dir string, opts Options) error {
	return childKilledInAppend(dir, opts, "torn", func(i int) (int, bool) { return 100 + i*37, i%2 == 0 }, 5000,
		func(kill func()) { testHookAfterLogWrite = kill })
}

// childKilledInAppend performs LOCAL_TEST_OPS acknowledged appends to oid
// (the i-th of chunk(i)'s size, with its omap update through a class method
// if chunk says so), then arms a test hook with kill (arm) and makes one
// more append of lastSize bytes, which the hook's SIGKILL interrupts.
func childKilledInAppend(dir string, opts Options, oid string, chunk func(i int) (size int, viaClass bool), lastSize int, arm func(kill func())) error {
	n, _ := strconv.Atoi(os.Getenv("LOCAL_TEST_OPS"))
	_, p, err := openChild(dir, opts)
	if err != nil {
		return err
	}
	ctx := context.Background()
	cw, err := newChunkWriter(ctx, p, []string{oid})
	if err != nil {
		return err
	}
	for i := 1; i <= n; i++ {
		size, viaClass := chunk(i)
		if err := cw.append(ctx, oid, uint64(i), size, viaClass); err != nil {
			return err
		}
		out("ack %d", i)
	}
	arm(func() { syscall.Kill(os.Getpid(), syscall.SIGKILL) })
	cw.append(ctx, oid, uint64(n+1), lastSize, false)
	return fmt.Errorf("still alive")
}

// childHammer appends chunks (writer ids from LOCAL_TEST_WRITER) to shared
// objects and counts with numops, concurrently with other processes.
func childHammer(dir string, opts Options) error {
	first, _ := strconv.Atoi(os.Getenv("LOCAL_TEST_WRITER"))
	c, p, err := openChild(dir, opts)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := context.Background()
	out("ready")
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for w := 0; w < hammerWriters; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			if err := hammer(ctx, p, first+w); err != nil {
				errc <- err
			}
		}(w)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		return err
	}
	out("done")
	return nil
}

const (
	hammerWriters = 4
	hammerOps     = 60
)

func hammer(ctx context.Context, p objstore.Pool, writer int) error {
	for q := 0; q < hammerOps; q++ {
		op := &objstore.WriteOp{}
		op.Append([]byte(fmt.Sprintf("<%d:%d:%s|>", writer, q, strings.Repeat("x", (writer*13+q*7)%900))))
		if err := p.Operate(ctx, "hammer.log", op); err != nil {
			return err
		}
		op = &objstore.WriteOp{}
		op.Exec("numops", "add", objstoretest.NumopsArgs("count", 1))
		op.SetOmap(map[string][]byte{fmt.Sprintf("w%03d_%03d", writer, q): nil})
		if err := p.Operate(ctx, "hammer.counter", op); err != nil {
			return err
		}
	}
	return nil
}

// printHandler acks notifications with "pong:<payload>" and prints events.
type printHandler struct{}

func (printHandler) HandleNotify(_ context.Context, n *objstore.Notification) {
	out("notify %d %s", n.NotifierID, n.Payload)
	n.Ack([]byte("pong:" + string(n.Payload)))
}

func (printHandler) HandleWatchError(_ context.Context, err error) {
	out("watcherror %d", objstore.Errno(err))
}

// openWatching opens the child's client and watches oid (created if
// missing) with a printHandler; the caller closes the client.
func openWatching(dir string, opts Options, oid string) (*Cluster, objstore.Pool, objstore.Watch, error) {
	c, p, err := openChild(dir, opts)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx := context.Background()
	op := &objstore.WriteOp{}
	op.Create(false)
	err = p.Operate(ctx, oid, op)
	var w objstore.Watch
	if err == nil {
		w, err = p.Watch(ctx, oid, printHandler{})
	}
	if err != nil {
		c.Close()
		return nil, nil, nil, err
	}
	return c, p, w, nil
}

// childWatcher watches "watched" and obeys stdin commands: "notify" (notify
// "watched" and print the acks), "quit".
func childWatcher(dir string, opts Options) error {
	c, p, w, err := openWatching(dir, opts, "watched")
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := context.Background()
	out("ready %d %s %d", c.Client().ID, c.Client().Addr, w.Cookie())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch sc.Text() {
		case "notify":
			res, err := p.Notify(ctx, "watched", []byte("from-child"), 5*time.Second)
			var replies []string
			for _, a := range res.Acks {
				replies = append(replies, fmt.Sprintf("%s=%s", a.Watcher.Client.Addr, a.Reply))
			}
			out("notified %d %s", objstore.Errno(err), strings.Join(replies, ","))
		case "quit":
			return w.Close(context.Background())
		}
	}
	return nil
}

// childVictim watches "victim" and appends to it every few milliseconds
// until a write fails; it prints "ack <n>", then "writeerr <errno>", and
// "watcherror <errno>" when its watch is lost.
func childVictim(dir string, opts Options) error {
	c, p, _, err := openWatching(dir, opts, "victim")
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := context.Background()
	out("ready %s", c.Client().Addr)
	for i := 1; ; i++ {
		op := &objstore.WriteOp{}
		op.Append([]byte{byte(i)})
		if err := p.Operate(ctx, "victim", op); err != nil {
			out("writeerr %d", objstore.Errno(err))
			rop := &objstore.ReadOp{}
			rop.Stat()
			out("readerr %d", objstore.Errno(p.Read(ctx, "victim", rop)))
			time.Sleep(5 * time.Second) // keep running: the parent checks the watch error
			return nil
		}
		out("ack %d", i)
		time.Sleep(2 * time.Millisecond)
	}
}

// childMidApply performs LOCAL_TEST_OPS acknowledged appends, then one more
// whose process dies in the middle of applying it: data written, omap not.
func childMidApply(dir string, opts Options) error {
	return childKilledInAppend(dir, opts, "midapply", func(i int) (int, bool) { return 1000 + i, false }, 4000,
		func(kill func()) { testHookBeforeMeta = func(*record) { kill() } })
}
