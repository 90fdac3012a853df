//go:build linux

package fuseloop_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop"
	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop/handovertest"
	"github.com/csi-rbdj/csi-rbdj/pkg/fuseholder"
	"github.com/csi-rbdj/csi-rbdj/pkg/testproc"
	"golang.org/x/sys/unix"
)

// fileBackend serves a plain file: what a process wrote survives its death
// (the page cache), so a successor serves the same bytes.
type fileBackend struct {
	f    *os.File
	size int64
}

func openFileBackend(path string, size int64) (*fileBackend, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, err
	}
	return &fileBackend{f: f, size: size}, nil
}

func (b *fileBackend) Size() int64 { return b.size }
func (b *fileBackend) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	return b.f.ReadAt(p, off)
}
func (b *fileBackend) WriteAt(_ context.Context, p []byte, off int64) (int, error) {
	return b.f.WriteAt(p, off)
}
func (b *fileBackend) Flush(context.Context) error { return unix.Fdatasync(int(b.f.Fd())) }
func (b *fileBackend) Discard(_ context.Context, off, n int64) error {
	return unix.Fallocate(int(b.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}
func (b *fileBackend) WriteZeroes(_ context.Context, off, n int64) error {
	return unix.Fallocate(int(b.f.Fd()), unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// TestHandoverChild is the serving child of TestHandoverRestarts.
func TestHandoverChild(t *testing.T) {
	backing := os.Getenv("FUSELOOP_HANDOVER_BACKING")
	if backing == "" {
		t.Skip("serving child of TestHandoverRestarts")
	}
	size, _ := strconv.ParseInt(os.Getenv("FUSELOOP_HANDOVER_SIZE"), 10, 64)
	b, err := openFileBackend(backing, size)
	if err != nil {
		t.Fatal(err)
	}
	var be fuseloop.Backend = b
	if s := os.Getenv("FUSELOOP_HANDOVER_STALL"); s != "" {
		off, _ := strconv.ParseInt(s, 10, 64)
		be = handovertest.StallAfterWrite(b, off)
	}
	os.Exit(handovertest.Serve(handovertest.Child{
		StateDir: os.Getenv("FUSELOOP_HANDOVER_STATE"), Name: os.Getenv("FUSELOOP_HANDOVER_NAME"),
		Socket: os.Getenv("FUSELOOP_HANDOVER_SOCKET"),
	}, be, b.f.Close))
}

// A device served by a child process survives SIGKILL and SIGTERM of its
// server: each time a successor adopts the connection from the holder.
// An ext4 writer (create, write, fsync, fsync dir, re-read) sees no error,
// the loop device and mount stay, every file verifies, e2fsck is clean.
//
//	FUSELOOP_TEST_KILLS=N overrides the number of SIGKILLs (20; 5 with -short).
func TestHandoverRestarts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	kills, terms := 20, 5
	if testing.Short() {
		kills, terms = 5, 2
	}
	if s := os.Getenv("FUSELOOP_TEST_KILLS"); s != "" {
		kills, _ = strconv.Atoi(s)
	}
	stateDir := t.TempDir()
	const name = "vol-handover"
	const size = 256 << 20
	backing := filepath.Join(t.TempDir(), "backing.img")
	mnt := filepath.Join(stateDir, name, "fuse")
	holder, sock := handovertest.StartHolder(t)
	t.Cleanup(func() {
		_ = fuseholder.NewClient(sock).Drop(context.Background(), name)
		if err := fuseloop.Cleanup(context.Background(), stateDir, name); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	})
	start := func(t *testing.T) *handovertest.Proc {
		return handovertest.Start(t, testproc.Command("^TestHandoverChild$",
			"FUSELOOP_HANDOVER_BACKING="+backing, "FUSELOOP_HANDOVER_SIZE="+strconv.FormatInt(size, 10),
			"FUSELOOP_HANDOVER_STATE="+stateDir, "FUSELOOP_HANDOVER_NAME="+name, "FUSELOOP_HANDOVER_SOCKET="+sock))
	}
	handovertest.Restarts(t, "ext4", start, kills, terms, func() { handovertest.AbortMount(mnt) })
	if holder.Len() != 1 {
		t.Errorf("holder holds %d connections, want 1", holder.Len())
	}
}

// readBlock reads 4 KiB from dev with O_DIRECT, giving up after timeout.
func readBlock(dev string, timeout time.Duration) error {
	done := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_DIRECT, 0)
		if err != nil {
			done <- err
			return
		}
		defer f.Close()
		buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
		if err != nil {
			done <- err
			return
		}
		defer unix.Munmap(buf)
		_, err = f.ReadAt(buf, 0)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		return errors.New("read still blocked")
	}
}

// The fallback: no holder, a holder that died, a held connection the
// kernel aborted. Each time the next serving process logs why it cannot
// adopt, cleans up what is left and attaches a new device; nothing hangs.
func TestHandoverFallback(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	stateDir := t.TempDir()
	const name = "vol-fallback"
	const size = 64 << 20
	backing := filepath.Join(t.TempDir(), "backing.img")
	mnt := filepath.Join(stateDir, name, "fuse")
	t.Cleanup(func() {
		handovertest.AbortMount(mnt)
		if err := fuseloop.Cleanup(context.Background(), stateDir, name); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	})
	start := func(t *testing.T, sock string) *handovertest.Proc {
		return handovertest.Start(t, testproc.Command("^TestHandoverChild$",
			"FUSELOOP_HANDOVER_BACKING="+backing, "FUSELOOP_HANDOVER_SIZE="+strconv.FormatInt(size, 10),
			"FUSELOOP_HANDOVER_STATE="+stateDir, "FUSELOOP_HANDOVER_NAME="+name, "FUSELOOP_HANDOVER_SOCKET="+sock))
	}
	mustServe := func(t *testing.T, p *handovertest.Proc, what string) {
		t.Helper()
		if err := readBlock(p.Dev, 10*time.Second); err != nil {
			t.Fatalf("%s: read from %s: %v\n%s", what, p.Dev, err, p.Stderr.String())
		}
	}
	mustFail := func(t *testing.T, dev, what string) {
		t.Helper()
		t0 := time.Now()
		err := readBlock(dev, 10*time.Second)
		if err == nil || err.Error() == "read still blocked" {
			t.Fatalf("%s: read from %s: %v, want an I/O error at once", what, dev, err)
		}
		t.Logf("%s: read from the old device failed after %s: %v", what, time.Since(t0).Round(time.Millisecond), err)
	}
	kill := func(p *handovertest.Proc) {
		_ = p.Cmd.Process.Signal(syscall.SIGKILL)
		select {
		case <-p.Exited():
		case <-time.After(30 * time.Second):
			handovertest.AbortMount(mnt)
			t.Fatalf("child did not exit")
		}
	}

	// 1. No holder at all: attach, serve; a crash aborts as before.
	missing := filepath.Join(t.TempDir(), "missing.sock")
	p := start(t, missing)
	if p.Adopted {
		t.Fatal("adopted without a holder")
	}
	mustServe(t, p, "no holder")
	kill(p)
	mustFail(t, p.Dev, "no holder, server killed")

	// 2. The holder dies while the server runs; then the server dies.
	holder, sock := handovertest.StartHolder(t)
	p = start(t, sock) // cleans up the leftovers of 1 and attaches
	if p.Adopted {
		t.Fatal("adopted a connection nobody held")
	}
	if holder.Len() != 1 {
		t.Fatalf("holder holds %d", holder.Len())
	}
	holder.Close()
	mustServe(t, p, "holder died, server alive")
	kill(p)
	mustFail(t, p.Dev, "holder died, server killed")

	// 3. The holder has the connection but the kernel aborted it.
	holder, sock = handovertest.StartHolder(t)
	p = start(t, sock)
	if p.Adopted {
		t.Fatal("adopted after the holder died")
	}
	if conn := handovertest.AbortMount(mnt); conn == 0 {
		t.Fatal("no FUSE mount to abort")
	}
	select {
	case <-p.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("server did not notice its connection was aborted")
	}
	p = start(t, sock)
	if p.Adopted {
		t.Fatal("adopted an aborted connection")
	}
	mustServe(t, p, "after an aborted held connection")
	for _, l := range strings.Split(p.Stderr.String(), "\n") {
		if strings.Contains(l, "cannot adopt") {
			t.Logf("the successor logged: %s", l)
		}
	}
	if holder.Len() != 1 {
		t.Errorf("holder holds %d connections, want the new one", holder.Len())
	}
	// 4. And the new one is adoptable.
	kill(p)
	p = start(t, sock)
	if !p.Adopted {
		t.Fatalf("the new connection was not adopted:\n%s", p.Stderr.String())
	}
	mustServe(t, p, "adopted after the fallback")
	kill(p)
}

// A write in flight when the server dies: applied by the dead server, never
// answered; the kernel resends it to the successor, which applies it again.
func TestHandoverResentWrite(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	stateDir := t.TempDir()
	const name = "vol-resend"
	backing := filepath.Join(t.TempDir(), "backing.img")
	mnt := filepath.Join(stateDir, name, "fuse")
	_, sock := handovertest.StartHolder(t)
	t.Cleanup(func() {
		handovertest.AbortMount(mnt)
		if err := fuseloop.Cleanup(context.Background(), stateDir, name); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	})
	const off = 12 << 20
	start := func(stall bool) func(t *testing.T) *handovertest.Proc {
		return func(t *testing.T) *handovertest.Proc {
			env := []string{"FUSELOOP_HANDOVER_BACKING=" + backing, "FUSELOOP_HANDOVER_SIZE=" + strconv.Itoa(64<<20),
				"FUSELOOP_HANDOVER_STATE=" + stateDir, "FUSELOOP_HANDOVER_NAME=" + name, "FUSELOOP_HANDOVER_SOCKET=" + sock}
			if stall {
				env = append(env, "FUSELOOP_HANDOVER_STALL="+strconv.Itoa(off))
			}
			return handovertest.Start(t, testproc.Command("^TestHandoverChild$", env...))
		}
	}
	first := start(true)(t)
	handovertest.ResentWrite(t, first, start(false), off, func() { handovertest.AbortMount(mnt) })
}
