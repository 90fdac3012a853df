//go:build linux

// Package handovertest drives handover tests on the real kernel: a serving
// child process that attaches or adopts a device through a holder, and a
// filesystem writer that measures the pauses the restarts cause. Used by
// the tests of fuseloop (file backend) and blockdev (journaled device).
package handovertest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop"
	"github.com/csi-rbdj/csi-rbdj/pkg/fuseholder"
	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"github.com/csi-rbdj/csi-rbdj/pkg/testproc"
)

// Child configures Serve (in the child process).
type Child struct {
	StateDir string
	Name     string
	Socket   string // holder socket
}

// Serve is the body of a serving child: it adopts the connection the
// holder has under Name, or attaches a new device and gives it to the
// holder; prints "READY <loop device> <adopted>"; then serves until
// SIGTERM (planned stop: Handoff, then closeBackend) or SIGKILL. It
// returns the process exit code.
func Serve(c Child, b fuseloop.Backend, closeBackend func() error) int {
	ctx := context.Background()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	start := time.Now()
	d, adopted, err := fuseloop.AdoptOrAttach(ctx, fuseholder.NewClient(c.Socket), b,
		fuseloop.Options{StateDir: c.StateDir, Name: c.Name, RequestTimeout: 60 * time.Second}, true)
	if err != nil {
		fmt.Fprintf(os.Stderr, "child: adopt or attach: %v\n", err)
		return 3
	}
	fmt.Fprintf(os.Stderr, "child: adopted=%v in %s\n", adopted, time.Since(start))
	fmt.Printf("READY %s %v\n", d.Path(), adopted)
	// Report resent requests as they are served.
	var last uint64
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if n := d.Resent(); n != last {
				last = n
				fmt.Printf("RESENT %d\n", n)
			}
			continue
		case <-d.Done():
			fmt.Fprintf(os.Stderr, "child: device stopped: %v\n", d.Err())
			return 4
		case <-sig:
		}
		break
	}
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	start = time.Now()
	if err := d.Handoff(hctx); err != nil {
		fmt.Fprintf(os.Stderr, "child: handoff: %v\n", err)
		return 5
	}
	if closeBackend != nil {
		if err := closeBackend(); err != nil {
			fmt.Fprintf(os.Stderr, "child: close backend: %v\n", err)
			return 6
		}
	}
	fmt.Fprintf(os.Stderr, "child: handed off in %s (resent served: %d)\n", time.Since(start), d.Resent())
	return 0
}

// Proc is a running serving child.
type Proc struct {
	*testproc.Proc
	Dev     string
	Adopted bool
	mu      sync.Mutex
	resent  uint64
	blocked chan struct{} // closed when the child printed BLOCKED
}

// Blocked is closed once the child reported a write held back (StallAfterWrite).
func (p *Proc) Blocked() <-chan struct{} { return p.blocked }

// Resent is the last count of resent requests the child reported.
func (p *Proc) Resent() uint64 { p.mu.Lock(); defer p.mu.Unlock(); return p.resent }

// signalAndWait stops the child, with SIGTERM (planned) or SIGKILL, and
// waits 30 s at most for it to exit; it reports whether it did.
func (p *Proc) signalAndWait(planned bool) bool {
	if planned {
		_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	} else {
		_ = p.Cmd.Process.Signal(syscall.SIGKILL)
	}
	select {
	case <-p.Exited():
		return true
	case <-time.After(30 * time.Second):
		return false
	}
}

// Start starts cmd (a testproc.Command running Serve) and waits for READY.
func Start(t testing.TB, cmd *exec.Cmd) *Proc {
	t.Helper()
	p := &Proc{Proc: testproc.Start(t, cmd), blocked: make(chan struct{})}
	ready := make(chan []string, 1)
	go func() {
		sc := bufio.NewScanner(p.Stdout)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) == 3 && f[0] == "READY":
				ready <- f
			case len(f) == 1 && f[0] == "BLOCKED":
				close(p.blocked)
			case len(f) == 2 && f[0] == "RESENT":
				var n uint64
				fmt.Sscan(f[1], &n)
				p.mu.Lock()
				p.resent = n
				p.mu.Unlock()
			}
		}
		close(ready)
	}()
	go func() { _ = p.Wait() }()
	select {
	case f, ok := <-ready:
		if !ok {
			_ = p.Wait()
			t.Fatalf("serving child exited before READY: %v\n%s", p.Cmd.ProcessState, p.Stderr.String())
		}
		p.Dev, p.Adopted = f[1], f[2] == "true"
	case <-time.After(60 * time.Second):
		t.Fatalf("serving child not ready:\n%s", p.Stderr.String())
	}
	return p
}

// Writer keeps creating, fsyncing and re-reading files in a directory.
type Writer struct {
	dir  string
	stop chan struct{}
	done chan struct{}

	mu       sync.Mutex
	files    []file // written and verified, oldest first (at most maxFiles)
	written  int    // files written and verified in all
	errs     []error
	ops      int
	maxPause time.Duration
	// windowMax: longest pause since TakeMaxPause
	windowMax time.Duration
	lastOp    time.Time
}

type file struct {
	name string
	seq  int
}

// maxFiles bounds the files kept: older ones are removed, so the writer can
// run for ever on a small filesystem.
const maxFiles = 300

// Content is the content of file seq (4 KiB to 128 KiB, deterministic).
func Content(seq int) []byte { return RandomContent(seq, 13, 124<<10) }

// RandomContent is the deterministic pseudo-random content of file seq of a
// file writer whose stream is seed: 4 KiB and up to maxExtra bytes more.
func RandomContent(seq int, seed uint64, maxExtra int) []byte {
	r := rand.New(rand.NewPCG(uint64(seq), seed))
	b := make([]byte, 4096+r.IntN(maxExtra))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// StartWriter starts the writer in dir.
func StartWriter(dir string) *Writer {
	w := &Writer{dir: dir, stop: make(chan struct{}), done: make(chan struct{}), lastOp: time.Now()}
	go w.run()
	return w
}

func (w *Writer) run() {
	defer close(w.done)
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	for seq := 0; ; seq++ {
		select {
		case <-w.stop:
			return
		default:
		}
		start := time.Now()
		name := filepath.Join(w.dir, fmt.Sprintf("f%06d", seq))
		err := writeSync(name, w.dir, Content(seq))
		if err == nil {
			err = check(name, seq)
		}
		w.mu.Lock()
		if err == nil && len(w.files) > 0 {
			// Re-read an earlier file (from the page cache or the device).
			f := w.files[r.IntN(len(w.files))]
			w.mu.Unlock()
			err = check(f.name, f.seq)
			w.mu.Lock()
		}
		if err == nil && len(w.files) >= maxFiles {
			old := w.files[0]
			w.files = w.files[1:]
			w.mu.Unlock()
			if rerr := os.Remove(old.name); rerr != nil {
				err = rerr
			}
			w.mu.Lock()
		}
		pause := time.Since(start)
		w.maxPause = max(w.maxPause, pause)
		w.windowMax = max(w.windowMax, pause)
		w.ops++
		if err != nil {
			w.errs = append(w.errs, err)
		} else {
			w.files = append(w.files, file{name, seq})
			w.written++
		}
		nerr := len(w.errs)
		w.mu.Unlock()
		if nerr > 0 {
			return // the first error ends the writer: the test fails
		}
	}
}

func writeSync(name, dir string, data []byte) error {
	f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

func check(name string, seq int) error {
	b, err := os.ReadFile(name)
	if err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	if !bytes.Equal(b, Content(seq)) {
		return fmt.Errorf("%s: content differs (%d bytes)", name, len(b))
	}
	return nil
}

// TakeMaxPause returns the longest pause since the previous call.
func (w *Writer) TakeMaxPause() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.windowMax
	w.windowMax = 0
	return m
}

// Stats returns the operations done, the errors seen and the longest pause
// (one create+write+fsync+dirfsync+read-back iteration).
func (w *Writer) Stats() (ops int, errs []error, maxPause time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ops, append([]error(nil), w.errs...), w.maxPause
}

// Stop stops the writer, waiting at most timeout; false if it is stuck.
func (w *Writer) Stop(timeout time.Duration) bool {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	select {
	case <-w.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// Done is closed when the writer stopped (error or Stop).
func (w *Writer) Done() <-chan struct{} { return w.done }

// Verify re-reads every file written (after a remount: from the device).
func (w *Writer) Verify() error {
	w.mu.Lock()
	files := append([]file(nil), w.files...)
	w.mu.Unlock()
	for _, f := range files {
		if err := check(f.name, f.seq); err != nil {
			return err
		}
	}
	return nil
}

// Files is the number of files written and verified in all.
func (w *Writer) Files() int { w.mu.Lock(); defer w.mu.Unlock(); return w.written }

// Restarts is the whole scenario: the first child attaches, ext4 is made
// and mounted, the writer runs; then the child is SIGKILLed kills times at
// random moments and stopped with SIGTERM terms times, a successor
// adopting each time. The writer must see no error, the loop device and
// the mount must stay the same, every file must verify after a remount,
// and e2fsck must find the filesystem clean. abort aborts the FUSE
// connection (emergency: a stuck writer); cleanup tears everything down
// at the end (after the filesystem was unmounted).
func Restarts(t *testing.T, fstype string, start func(t *testing.T) *Proc, kills, terms int, abort func()) {
	t.Helper()
	p := start(t)
	if p.Adopted {
		t.Fatalf("first child adopted a connection: stale holder state")
	}
	dev := p.Dev
	switch fstype {
	case "ext4":
		run(t, "mkfs.ext4", "-F", "-q", dev)
	case "xfs":
		run(t, "mkfs.xfs", "-f", "-q", dev)
	default:
		t.Fatalf("filesystem %q", fstype)
	}
	mnt := t.TempDir()
	if err := syscall.Mount(dev, mnt, fstype, 0, ""); err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		if mountSource(mnt) == "" {
			return // unmounted by the test
		}
		// The test failed midway and its serving children may be dead
		// already (their cleanups run first): abort the connection so the
		// unmount cannot block on writes nobody will serve.
		abort()
		_ = syscall.Unmount(mnt, syscall.MNT_DETACH)
	})
	w := StartWriter(mnt)
	defer func() {
		if !w.Stop(60 * time.Second) {
			t.Errorf("writer stuck; aborting the connection")
			abort()
			w.Stop(30 * time.Second)
		}
	}()
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 5))
	var totalResent uint64
	var worstAdopt, killPause, termPause time.Duration
	for i := 0; i < kills+terms; i++ {
		time.Sleep(time.Duration(100+r.IntN(400)) * time.Millisecond)
		planned := i >= kills
		opsBefore, _, _ := w.Stats()
		w.TakeMaxPause()
		if !p.signalAndWait(planned) {
			abort()
			t.Fatalf("restart %d: child did not exit", i)
		}
		if planned && !p.Cmd.ProcessState.Success() {
			t.Fatalf("restart %d: planned stop failed: %v\n%s", i, p.Cmd.ProcessState, p.Stderr.String())
		}
		totalResent += p.Resent()
		if planned {
			for _, l := range strings.Split(p.Stderr.String(), "\n") {
				if strings.Contains(l, "handed off in") {
					t.Logf("restart %d: %s", i, strings.TrimSpace(l))
				}
			}
		}
		t0 := time.Now()
		p = start(t)
		worstAdopt = max(worstAdopt, time.Since(t0))
		if planned {
			t.Logf("restart %d: successor ready after %s", i, time.Since(t0).Round(time.Millisecond))
		}
		if !p.Adopted || p.Dev != dev {
			t.Fatalf("restart %d: successor adopted=%v device %s, want adoption of %s", i, p.Adopted, p.Dev, dev)
		}
		if _, errs, _ := w.Stats(); len(errs) > 0 {
			t.Fatalf("restart %d (planned %v): writer error: %v", i, planned, errs[0])
		}
		// Let the writer make progress on the successor before the next kill.
		deadline := time.Now().Add(30 * time.Second)
		for {
			ops, errs, _ := w.Stats()
			if len(errs) > 0 {
				t.Fatalf("restart %d (planned %v): writer error: %v", i, planned, errs[0])
			}
			if ops > opsBefore+1 {
				break
			}
			if time.Now().After(deadline) {
				abort()
				t.Fatalf("restart %d: writer made no progress after the successor adopted\n%s", i, p.Stderr.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
		if planned {
			termPause = max(termPause, w.TakeMaxPause())
		} else {
			killPause = max(killPause, w.TakeMaxPause())
		}
	}
	time.Sleep(200 * time.Millisecond)
	if !w.Stop(60 * time.Second) {
		abort()
		t.Fatalf("writer stuck at the end")
	}
	ops, errs, maxPause := w.Stats()
	t.Logf("%d SIGKILL + %d SIGTERM restarts: writer did %d iterations (create+write+fsync+dirfsync+re-read+remove), %d files, %d I/O errors, longest pause %s (around a SIGKILL restart %s, around a SIGTERM restart %s); successor start-to-READY at most %s; resent requests served (SIGTERM children report; killed ones may not have printed): %d",
		kills, terms, ops, w.Files(), len(errs), maxPause.Round(time.Millisecond), killPause.Round(time.Millisecond), termPause.Round(time.Millisecond), worstAdopt.Round(time.Millisecond), totalResent)
	if len(errs) > 0 {
		t.Fatalf("writer errors: %v", errs)
	}
	mi := mountSource(mnt)
	if mi != dev {
		t.Errorf("mount at %s is %q at the end, want %s", mnt, mi, dev)
	}
	// Remount to read everything from the device, not the page cache.
	if err := syscall.Unmount(mnt, 0); err != nil {
		t.Fatalf("unmount: %v", err)
	}
	if err := syscall.Mount(dev, mnt, fstype, 0, ""); err != nil {
		t.Fatalf("remount: %v", err)
	}
	if err := w.Verify(); err != nil {
		t.Errorf("after remount: %v", err)
	}
	if err := syscall.Unmount(mnt, 0); err != nil {
		t.Fatalf("unmount: %v", err)
	}
	if fstype == "xfs" {
		out := run(t, "xfs_repair", "-n", dev)
		t.Logf("xfs_repair -n: %s", lastLine(out))
	} else {
		out := run(t, "e2fsck", "-f", "-n", dev)
		t.Logf("e2fsck: %s", lastLine(out))
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}

// mountSource is the source of the topmost mount at dir.
func mountSource(dir string) string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	src := ""
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 10 || f[4] != dir {
			continue
		}
		for i := 6; i+2 < len(f); i++ {
			if f[i] == "-" {
				src = f[i+2]
			}
		}
	}
	return src
}

// AbortMount aborts the FUSE connection mounted at mnt (emergency: nothing
// may stay blocked on it). It returns the connection id (0: none).
func AbortMount(mnt string) uint64 {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 10 || f[4] != mnt {
			continue
		}
		var maj, min uint64
		if _, err := fmt.Sscanf(f[2], "%d:%d", &maj, &min); err != nil {
			continue
		}
		conn := maj<<20 | min
		_ = os.WriteFile(fmt.Sprintf("/sys/fs/fuse/connections/%d/abort", conn), []byte("1"), 0)
		return conn
	}
	return 0
}

// StartHolder runs a holder in the calling (test) process: the serving
// children come and go, the test process keeps the connections.
func StartHolder(t *testing.T) (*fuseholder.Server, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "holder.sock")
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := fuseholder.Listen(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx) }()
	t.Cleanup(func() { cancel(); srv.Close(); <-done })
	return srv, sock
}

// StallAfterWrite wraps b: a write at offset off is performed (for the
// journaled device: journaled, applied and acknowledged by the device),
// then "BLOCKED" is printed and the call never returns, so the kernel
// never gets the reply. Killing the process then leaves exactly the case a
// resent request must survive: a write the dead server made durable but
// did not acknowledge.
func StallAfterWrite(b fuseloop.Backend, off int64) fuseloop.Backend {
	return &stall{Backend: b, off: off}
}

type stall struct {
	fuseloop.Backend
	off  int64
	once sync.Once
}

func (s *stall) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	n, err := s.Backend.WriteAt(ctx, p, off)
	if off == s.off && err == nil {
		s.once.Do(func() { fmt.Println("BLOCKED") })
		<-ctx.Done() // until the process dies (or the device is aborted)
		return 0, ctx.Err()
	}
	return n, err
}

// ResentWrite: a child serving through StallAfterWrite(off) is SIGKILLed
// with the write at off applied but unanswered; its successor (started by
// start, no stall) adopts the connection, the kernel resends the WRITE and
// the successor applies it again. The writer sees success, the block holds
// the data, a later write to the same block wins.
func ResentWrite(t *testing.T, first *Proc, start func(t *testing.T) *Proc, off int64, abort func()) {
	t.Helper()
	f, err := os.OpenFile(first.Dev, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := kerneltest.AlignedBuf(4096)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	done := make(chan error, 1)
	go func() { _, err := f.WriteAt(buf, off); done <- err }()
	select {
	case <-first.Blocked():
	case err := <-done:
		t.Fatalf("write returned before the server stalled: %v", err)
	case <-time.After(30 * time.Second):
		abort()
		t.Fatalf("the server never stalled on the write:\n%s", first.Stderr.String())
	}
	_ = first.Cmd.Process.Signal(syscall.SIGKILL)
	<-first.Exited()
	select {
	case err := <-done:
		t.Fatalf("write returned while no server ran: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	p := start(t)
	if !p.Adopted || p.Dev != first.Dev {
		t.Fatalf("successor adopted=%v dev %s", p.Adopted, p.Dev)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the resent write failed: %v", err)
		}
	case <-time.After(30 * time.Second):
		abort()
		t.Fatalf("the write was not completed by the successor:\n%s", p.Stderr.String())
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.Resent() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if p.Resent() == 0 {
		t.Errorf("the successor reported no resent request")
	}
	got := kerneltest.AlignedBuf(4096)
	if _, err := f.ReadAt(got, off); err != nil || !bytes.Equal(got, buf) {
		t.Fatalf("read back after the resend: %v, equal %v", err, bytes.Equal(got, buf))
	}
	for i := range buf {
		buf[i] = byte(i*3 + 5)
	}
	if _, err := f.WriteAt(buf, off); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(got, off); err != nil || !bytes.Equal(got, buf) {
		t.Fatalf("a later write did not win: %v", err)
	}
	t.Logf("the write the dead server applied but never answered was resent (%d resent requests) and completed without error", p.Resent())
}

// RawRestarts is Restarts for a Block volume: 8 writers on the raw loop
// device (O_DIRECT, 4 KiB blocks tagged with block number and generation,
// each read back after its write) while the server is SIGKILLed kills
// times and SIGTERMed terms times. No write or read may fail; at the end
// every block holds the generation last acknowledged for it.
func RawRestarts(t *testing.T, start func(t *testing.T) *Proc, kills, terms int, blocks int, abort func()) {
	t.Helper()
	p := start(t)
	dev := p.Dev
	f, err := os.OpenFile(dev, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const writers = 8
	acked := make([]uint64, blocks)
	var mu sync.Mutex
	var errs []error
	var ops int
	var maxPause time.Duration
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			buf, rb := kerneltest.AlignedBuf(4096), kerneltest.AlignedBuf(4096)
			for {
				select {
				case <-stop:
					return
				default:
				}
				blk := w + writers*r.IntN(blocks/writers) // each writer owns its blocks
				gen := acked[blk] + 1
				rawFill(buf, blk, gen)
				t0 := time.Now()
				_, err := f.WriteAt(buf, int64(blk)*4096)
				if err == nil {
					_, err = f.ReadAt(rb, int64(blk)*4096)
					if err == nil && !bytes.Equal(rb, buf) {
						err = fmt.Errorf("block %d: read back differs after write of generation %d", blk, gen)
					}
				}
				d := time.Since(t0)
				mu.Lock()
				ops++
				maxPause = max(maxPause, d)
				if err != nil {
					errs = append(errs, err)
					mu.Unlock()
					return
				}
				acked[blk] = gen
				mu.Unlock()
			}
		}(w)
	}
	stopWriters := func() {
		close(stop)
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			abort()
			<-done
			t.Errorf("raw writers stuck")
		}
	}
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
	for i := 0; i < kills+terms; i++ {
		time.Sleep(time.Duration(100+r.IntN(400)) * time.Millisecond)
		if !p.signalAndWait(i >= kills) {
			abort()
			stopWriters()
			t.Fatalf("restart %d: child did not exit", i)
		}
		p = start(t)
		if !p.Adopted || p.Dev != dev {
			abort()
			stopWriters()
			t.Fatalf("restart %d: successor adopted=%v device %s", i, p.Adopted, p.Dev)
		}
	}
	time.Sleep(300 * time.Millisecond)
	stopWriters()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("raw device, %d SIGKILL + %d SIGTERM restarts: %d writes (each read back), %d I/O errors, longest write+read %s",
		kills, terms, ops, len(errs), maxPause.Round(time.Millisecond))
	if len(errs) > 0 {
		t.Fatalf("raw writer errors: %v", errs)
	}
	buf, want := kerneltest.AlignedBuf(4096), kerneltest.AlignedBuf(4096)
	zero := make([]byte, 4096)
	for blk := 0; blk < blocks; blk++ {
		if _, err := f.ReadAt(buf, int64(blk)*4096); err != nil {
			t.Fatal(err)
		}
		if acked[blk] == 0 {
			if !bytes.Equal(buf, zero) {
				t.Fatalf("block %d never written but not zero", blk)
			}
			continue
		}
		rawFill(want, blk, acked[blk])
		if !bytes.Equal(buf, want) {
			t.Fatalf("block %d does not hold its last acknowledged generation %d", blk, acked[blk])
		}
	}
}

func rawFill(b []byte, blk int, gen uint64) {
	r := rand.New(rand.NewPCG(uint64(blk), gen))
	for i := 0; i < len(b); i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	copy(b, fmt.Sprintf("blk %08d gen %016d", blk, gen))
}
