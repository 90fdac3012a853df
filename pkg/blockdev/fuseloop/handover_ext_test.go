//go:build linux

package fuseloop_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"

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
	os.Exit(handovertest.Serve(handovertest.Child{
		StateDir: os.Getenv("FUSELOOP_HANDOVER_STATE"), Name: os.Getenv("FUSELOOP_HANDOVER_NAME"),
		Socket: os.Getenv("FUSELOOP_HANDOVER_SOCKET"),
	}, b, b.f.Close))
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
	handovertest.Restarts(t, start, kills, terms, func() { handovertest.AbortMount(mnt) })
	if holder.Len() != 1 {
		t.Errorf("holder holds %d connections, want 1", holder.Len())
	}
}
