//go:build linux

package fuseloop

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/testproc"
	"golang.org/x/sys/unix"
)

// ---- the test backend ----

// memBackend is an in-memory Backend over an anonymous mapping (untouched
// and discarded pages take no memory). It counts calls and can fail or block.
type memBackend struct {
	mu   sync.RWMutex
	buf  []byte // capacity; size <= len(buf)
	size atomic.Int64

	reads, writes, flushes, discards, zeroes atomic.Int64
	inflight, maxInflight                    atomic.Int64

	failFrom, failTo atomic.Int64 // reads and writes overlapping [failFrom, failTo) fail
	writeDelay       atomic.Int64 // nanoseconds each WriteAt sleeps (a slow store)

	// blockWrites: WriteAt blocks until its context is cancelled.
	blockWrites atomic.Bool
	// ignoreCtx: WriteAt blocks on release, ignoring its context.
	ignoreCtx atomic.Bool
	release   chan struct{}
	blocked   atomic.Int64
}

func newMemBackend(size, capacity int64) *memBackend {
	if capacity < size {
		capacity = size
	}
	buf, err := unix.Mmap(-1, 0, int(capacity), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_ANON|unix.MAP_PRIVATE|unix.MAP_NORESERVE)
	if err != nil {
		panic(fmt.Sprintf("mmap %d bytes: %v", capacity, err))
	}
	b := &memBackend{buf: buf, release: make(chan struct{})}
	b.size.Store(size)
	// No Munmap: a serving goroutine may still touch it after the test.
	return b
}

func (b *memBackend) Size() int64 { return b.size.Load() }

func (b *memBackend) grow(n int64) {
	if n > int64(len(b.buf)) {
		panic("grow beyond capacity")
	}
	b.size.Store(n)
}

func (b *memBackend) enter() func() {
	n := b.inflight.Add(1)
	for {
		m := b.maxInflight.Load()
		if n <= m || b.maxInflight.CompareAndSwap(m, n) {
			break
		}
	}
	return func() { b.inflight.Add(-1) }
}

func (b *memBackend) check(off, n int64) error {
	if off < 0 || n < 0 || off+n > b.size.Load() {
		return fmt.Errorf("memBackend: out of range off=%d len=%d", off, n)
	}
	if ff, ft := b.failFrom.Load(), b.failTo.Load(); ft > ff && off < ft && off+n > ff {
		return errors.New("memBackend: injected I/O error")
	}
	return nil
}

func (b *memBackend) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	defer b.enter()()
	b.reads.Add(1)
	if err := b.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	return copy(p, b.buf[off:]), nil
}

func (b *memBackend) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	defer b.enter()()
	b.writes.Add(1)
	if b.ignoreCtx.Load() {
		b.blocked.Add(1)
		<-b.release
		return 0, errors.New("memBackend: released")
	}
	if b.blockWrites.Load() {
		b.blocked.Add(1)
		<-ctx.Done()
		return 0, ctx.Err()
	}
	if err := b.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	if d := b.writeDelay.Load(); d > 0 {
		time.Sleep(time.Duration(d))
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return copy(b.buf[off:], p), nil
}

func (b *memBackend) Flush(ctx context.Context) error {
	b.flushes.Add(1)
	return nil
}

func (b *memBackend) zero(off, n int64) error {
	if err := b.check(off, n); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	const pg = 4096
	start, end := (off+pg-1)/pg*pg, (off+n)/pg*pg
	if end-start >= 1<<20 {
		clear(b.buf[off:start])
		clear(b.buf[end : off+n])
		return unix.Madvise(b.buf[start:end], unix.MADV_DONTNEED)
	}
	clear(b.buf[off : off+n])
	return nil
}

func (b *memBackend) Discard(ctx context.Context, off, n int64) error {
	defer b.enter()()
	b.discards.Add(1)
	return b.zero(off, n)
}

func (b *memBackend) WriteZeroes(ctx context.Context, off, n int64) error {
	defer b.enter()()
	b.zeroes.Add(1)
	return b.zero(off, n)
}

func (b *memBackend) bytesAt(off, n int64) []byte {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return bytes.Clone(b.buf[off : off+n])
}

// ---- environment ----

func requireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run hack/install-deps.sh (%v)", tool, err)
		}
	}
}

// live FUSE connections of this test process, aborted in an emergency (a
// command that hangs) so nothing stays in D state.
var (
	liveMu    sync.Mutex
	liveConns = map[uint64]string{}
)

func emergencyAbort(t testing.TB) {
	liveMu.Lock()
	defer liveMu.Unlock()
	for c, mnt := range liveConns {
		t.Logf("emergency: aborting FUSE connection %d (%s)", c, mnt)
		_ = abortConn(c, mnt)
	}
}

// attach attaches b and registers a cleanup that tears everything down even
// when the test failed: filesystems mounted on the device, the device, and
// whatever Cleanup finds.
func attach(t testing.TB, b Backend, opts Options) *Device {
	t.Helper()
	if opts.StateDir == "" {
		opts.StateDir = t.TempDir()
	}
	if opts.Name == "" {
		opts.Name = "vol-" + strings.ReplaceAll(t.Name(), "/", "-")
	}
	d, err := Attach(context.Background(), b, opts)
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	liveMu.Lock()
	liveConns[d.conn] = d.mnt
	liveMu.Unlock()
	t.Cleanup(func() {
		unmountAllOf(t, d.Path())
		if err := d.Abort(); err != nil {
			t.Errorf("cleanup: Abort: %v", err)
		}
		if err := Cleanup(context.Background(), opts.StateDir, opts.Name); err != nil {
			t.Errorf("cleanup: Cleanup: %v", err)
		}
		liveMu.Lock()
		delete(liveConns, d.conn)
		liveMu.Unlock()
		assertNoLeftovers(t, opts.StateDir, opts.Name, d.conn)
		assertNoStuckTasks(t)
	})
	return d
}

// unmountAllOf unmounts every filesystem mounted from dev (lazily if busy).
func unmountAllOf(t testing.TB, dev string) {
	if dev == "" {
		return
	}
	mnts, err := mountsOf([]string{dev})
	if err != nil {
		t.Errorf("mountinfo: %v", err)
		return
	}
	for _, m := range mnts {
		if err := syscall.Unmount(m, 0); err != nil {
			t.Logf("unmount %s: %v; lazy", m, err)
			if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
				t.Errorf("lazy unmount %s: %v", m, err)
			}
		}
	}
}

// assertNoLeftovers: no FUSE mount, no loop device on the file, no FUSE connection.
func assertNoLeftovers(t testing.TB, stateDir, name string, conn uint64) {
	t.Helper()
	mnt := mountPoint(stateDir, name)
	file := filepath.Join(mnt, diskFileName)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var problems []string
		if mi, err := findMount(mnt); err != nil || mi != nil {
			problems = append(problems, fmt.Sprintf("mount at %s: %+v %v", mnt, mi, err))
		}
		if loops, err := loopDevicesBackedBy(file, 0); err != nil || len(loops) > 0 {
			problems = append(problems, fmt.Sprintf("loop devices on %s: %v %v", file, loops, err))
		}
		if conn != 0 {
			if _, err := os.Stat(filepath.Join(fusectlDir, strconv.FormatUint(conn, 10))); err == nil {
				problems = append(problems, fmt.Sprintf("FUSE connection %d still exists", conn))
			}
		}
		if len(problems) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("leftovers: %s", strings.Join(problems, "; "))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stuckTasks lists tasks in D state waiting on FUSE or block I/O (by their
// kernel stack, wait channel or name: a writer blocked on the loop device
// waits in submit_bio_wait, ext4's journal thread is jbd2/loopN-8), keyed by
// their /proc path.
func stuckTasks() map[string]string {
	out := map[string]string{}
	stats, _ := filepath.Glob("/proc/[0-9]*/task/[0-9]*/stat")
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || i+2 >= len(s) || s[i+2] != 'D' {
			continue
		}
		dir := filepath.Dir(p)
		comm := s[strings.IndexByte(s, '(')+1 : i]
		wchan, _ := os.ReadFile(filepath.Join(dir, "wchan"))
		stack, _ := os.ReadFile(filepath.Join(dir, "stack"))
		info := comm + " " + string(wchan) + " " + string(stack)
		if containsAny(info, "fuse", "loop", "bio", "blk", "io_schedule", "jbd2", "xfs", "folio") {
			out[dir] = fmt.Sprintf("%s %s wchan=%s stack=%q", dir, comm, wchan, firstLines(string(stack), 8))
		}
	}
	return out
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

func firstLines(s string, n int) string {
	l := strings.SplitN(s, "\n", n+1)
	if len(l) > n {
		l = l[:n]
	}
	return strings.Join(l, " | ")
}

// assertNoStuckTasks fails when a task stays in D state on FUSE/loop I/O for
// 5 s (short D states are normal I/O; other load on the machine is ignored).
func assertNoStuckTasks(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	stuck := stuckTasks()
	for len(stuck) > 0 {
		if time.Now().After(deadline) {
			var l []string
			for _, v := range stuck {
				l = append(l, v)
			}
			t.Errorf("tasks stuck in D state:\n%s", strings.Join(l, "\n"))
			return
		}
		time.Sleep(100 * time.Millisecond)
		now := stuckTasks()
		for k := range stuck {
			if _, ok := now[k]; !ok {
				delete(stuck, k) // it moved on
			}
		}
	}
}

// run runs a command with a deadline. If it is still running then, the test
// fails, the FUSE connections of this test process are aborted (which
// unblocks any I/O) and the command is killed.
func run(t testing.TB, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(timeout):
		t.Errorf("%s %v still running after %s (hung I/O?)", name, args, timeout)
		emergencyAbort(t)
		_ = cmd.Process.Kill()
		select {
		case err := <-done:
			return out.String(), fmt.Errorf("timed out: %w", err)
		case <-time.After(30 * time.Second):
			t.Errorf("%s (pid %d) does not die", name, cmd.Process.Pid)
			return out.String(), errors.New("timed out, process unkillable")
		}
	}
}

func mustRun(t testing.TB, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := run(t, timeout, name, args...)
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return out
}

// within runs f in a goroutine; if it does not return in time the test
// fails and FUSE connections are aborted (which makes f return).
func within(t testing.TB, timeout time.Duration, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		t.Errorf("%s still blocked after %s", what, timeout)
		emergencyAbort(t)
		return <-done
	}
}

// mountFS mounts dev at a new directory; the cleanup unmounts it.
func mountFS(t *testing.T, dev, fstype string) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount(dev, dir, fstype, 0, ""); err != nil {
		t.Fatalf("mount %s %s: %v", fstype, dev, err)
	}
	t.Cleanup(func() {
		if mi, _ := findMount(dir); mi != nil {
			if err := syscall.Unmount(dir, 0); err != nil {
				_ = syscall.Unmount(dir, syscall.MNT_DETACH)
			}
		}
	})
	return dir
}

// ---- the serving child process ----

const (
	helperEnv      = "FUSELOOP_TEST_HELPER"
	helperStateEnv = "FUSELOOP_TEST_STATE"
	helperNameEnv  = "FUSELOOP_TEST_NAME"
	helperSizeEnv  = "FUSELOOP_TEST_SIZE"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "serve" {
		os.Exit(serveHelper())
	}
	os.Exit(m.Run())
}

// serveHelper attaches an in-memory backend, prints "READY <device>", and
// serves until SIGTERM/SIGINT (clean Close) or SIGKILL.
// Also used by hand to measure the exposure with fio.
func serveHelper() int {
	size, err := strconv.ParseInt(os.Getenv(helperSizeEnv), 10, 64)
	if err != nil {
		size = 256 << 20
	}
	b := newMemBackend(size, size)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	d, err := Attach(context.Background(), b, Options{
		StateDir: os.Getenv(helperStateEnv),
		Name:     os.Getenv(helperNameEnv),
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "attach: %v\n", err)
		return 1
	}
	fmt.Printf("READY %s %d\n", d.Path(), d.conn)
	select {
	case <-sig:
	case <-d.Done():
	}
	fmt.Fprintf(os.Stderr, "helper: reads=%d writes=%d flushes=%d discards=%d zeroes=%d maxInflight=%d\n",
		b.reads.Load(), b.writes.Load(), b.flushes.Load(), b.discards.Load(), b.zeroes.Load(), b.maxInflight.Load())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.Close(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "close: %v\n", err)
		_ = d.Abort()
		return 1
	}
	return 0
}

type helperProc struct {
	*testproc.Proc
	dev  string
	conn uint64
}

// startHelper re-executes the test binary as a serving child, killed by
// PID and reaped at the end of the test.
func startHelper(t *testing.T, stateDir, name string, size int64) *helperProc {
	t.Helper()
	h := &helperProc{Proc: testproc.Start(t, testproc.Command("^$", helperEnv+"=serve", helperStateEnv+"="+stateDir,
		helperNameEnv+"="+name, helperSizeEnv+"="+strconv.FormatInt(size, 10)))}
	go func() { _ = h.Wait() }()
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(h.Stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "READY ") {
				lines <- sc.Text()
			}
		}
		close(lines)
	}()
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatalf("helper exited before READY:\n%s", h.Stderr.String())
		}
		f := strings.Fields(l)
		h.dev = f[1]
		h.conn, _ = strconv.ParseUint(f[2], 10, 64)
	case <-time.After(30 * time.Second):
		t.Fatalf("helper not ready:\n%s", h.Stderr.String())
	}
	return h
}
