//go:build linux

package fuseloop

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

const (
	MiB = int64(1) << 20
)

func openDirect(t *testing.T, dev string) *os.File {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatalf("open %s O_DIRECT: %v", dev, err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// Raw I/O through /dev/loopN with O_DIRECT round-trips, is served
// concurrently, and backend errors come back as EIO.
func TestRawDirectIO(t *testing.T) {
	kerneltest.RequireRoot(t)
	b := newMemBackend(64*MiB, 64*MiB)
	d := attach(t, b, Options{RequestTimeout: 30 * time.Second})

	if !strings.HasPrefix(d.Path(), "/dev/loop") {
		t.Fatalf("Path() = %q", d.Path())
	}
	if !loopDirectIO(d.loopIdx) {
		t.Errorf("loop direct I/O is off for %s", d.Path())
	}
	// The readers wait for requests in the Go poller (openPoller), not in
	// poll(2); the I/O below proves they wake.
	if d.pollFile.Load() == nil {
		t.Errorf("the readers of %s do not wait in the Go poller", d.Path())
	}
	if got, err := blockDevSize(d.Path()); err != nil || got != 64*MiB {
		t.Fatalf("size of %s = %d, %v; want %d", d.Path(), got, err, 64*MiB)
	}

	f := openDirect(t, d.Path())
	w := kerneltest.AlignedBuf(int(MiB))
	_, _ = rand.Read(w)
	off := 7*4096 + 3*MiB
	if n, err := f.WriteAt(w, off); err != nil || n != len(w) {
		t.Fatalf("O_DIRECT write: %d, %v", n, err)
	}
	if !bytes.Equal(b.bytesAt(off, MiB), w) {
		t.Fatalf("backend does not hold the written bytes")
	}
	r := kerneltest.AlignedBuf(int(MiB))
	if n, err := f.ReadAt(r, off); err != nil || n != len(r) {
		t.Fatalf("O_DIRECT read: %d, %v", n, err)
	}
	if !bytes.Equal(r, w) {
		t.Fatalf("read back differs from written data")
	}

	// Concurrent 4K writes from several goroutines, then verify every block.
	const workers, perWorker = 8, 64
	var g errgroup.Group
	patterns := make([][]byte, workers)
	for i := range workers {
		patterns[i] = kerneltest.AlignedBuf(4096)
		_, _ = rand.Read(patterns[i])
	}
	// A slow store (5 ms per write) makes concurrency visible: served one at
	// a time, at most one call would ever be in flight.
	b.maxInflight.Store(0)
	b.writeDelay.Store(int64(5 * time.Millisecond))
	start := time.Now()
	for i := range workers {
		g.Go(func() error {
			for j := range perWorker {
				o := int64(32*MiB) + int64(j*workers+i)*4096
				if _, err := f.WriteAt(patterns[i], o); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := within(t, 60*time.Second, "concurrent writes", g.Wait); err != nil {
		t.Fatalf("concurrent write: %v", err)
	}
	for i := range workers {
		for j := range perWorker {
			o := int64(32*MiB) + int64(j*workers+i)*4096
			if !bytes.Equal(b.bytesAt(o, 4096), patterns[i]) {
				t.Fatalf("block at %d: wrong contents", o)
			}
		}
	}
	b.writeDelay.Store(0)
	t.Logf("%d concurrent 4K writes to a 5 ms store took %s; backend max in-flight calls: %d",
		workers*perWorker, time.Since(start).Round(time.Millisecond), b.maxInflight.Load())
	if b.maxInflight.Load() < workers/2 {
		t.Errorf("requests were not served concurrently (max in flight %d)", b.maxInflight.Load())
	}

	// Backend errors surface as EIO, for reads and writes.
	b.failFrom.Store(40 * MiB)
	b.failTo.Store(40*MiB + 4096)
	if _, err := f.ReadAt(r[:4096], 40*MiB); !errors.Is(err, syscall.EIO) {
		t.Errorf("read of a failing range: %v, want EIO", err)
	}
	if _, err := f.WriteAt(w[:4096], 40*MiB); !errors.Is(err, syscall.EIO) {
		t.Errorf("write of a failing range: %v, want EIO", err)
	}
	b.failTo.Store(0)
	if _, err := f.ReadAt(r[:4096], 40*MiB); err != nil {
		t.Errorf("read after the error cleared: %v", err)
	}
	if d.Err() != nil {
		t.Errorf("Err() = %v after I/O errors; the device should keep serving", d.Err())
	}

	// The kernel refuses I/O past the end of the block device.
	if _, err := f.WriteAt(w[:4096], 64*MiB); err == nil {
		t.Errorf("write past the end of %s succeeded", d.Path())
	}
}

// Requests on the FUSE file itself: range checks, unsupported modes, no truncate.
func TestFuseFileSemantics(t *testing.T) {
	kerneltest.RequireRoot(t)
	b := newMemBackend(16*MiB, 16*MiB)
	d := attach(t, b, Options{RequestTimeout: 30 * time.Second})
	f, err := os.OpenFile(d.file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() != 16*MiB {
		t.Fatalf("stat %s: size %v, %v", d.file, st.Size(), err)
	}
	buf := make([]byte, 8192)
	if _, err := f.WriteAt(buf, 16*MiB-4096); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("write crossing the end: %v, want EINVAL", err)
	}
	if _, err := f.WriteAt(buf, 20*MiB); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("write past the end: %v, want EINVAL", err)
	}
	if n, err := f.ReadAt(buf, 16*MiB); n != 0 {
		t.Errorf("read at the end: %d, %v; want 0", n, err)
	}
	if _, err := f.ReadAt(buf, 20*MiB); err == nil {
		t.Errorf("read past the end succeeded")
	}
	if n, err := f.ReadAt(buf, 16*MiB-4096); n != 4096 {
		t.Errorf("read crossing the end: %d, %v; want a short read of 4096", n, err)
	}
	if err := unix.Fallocate(int(f.Fd()), 0, 0, 4096); !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Errorf("fallocate mode 0: %v, want EOPNOTSUPP", err)
	}
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, 16*MiB-4096, 8192); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("zero-range crossing the end: %v, want EINVAL", err)
	}
	if err := f.Truncate(8 * MiB); !errors.Is(err, syscall.EPERM) {
		t.Errorf("truncate: %v, want EPERM", err)
	}
	n0 := b.flushes.Load()
	if err := f.Sync(); err != nil {
		t.Errorf("fsync: %v", err)
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		t.Errorf("fdatasync: %v", err)
	}
	if got := b.flushes.Load() - n0; got != 2 {
		t.Errorf("fsync+fdatasync reached Backend.Flush %d times, want 2", got)
	}
	if b.reads.Load() == 0 {
		t.Errorf("no reads reached the backend")
	}
}

func TestReadOnly(t *testing.T) {
	kerneltest.RequireRoot(t)
	b := newMemBackend(16*MiB, 16*MiB)
	copy(b.buf, "hello")
	d := attach(t, b, Options{ReadOnly: true, RequestTimeout: 30 * time.Second})
	if ro, err := os.ReadFile(fmt.Sprintf("/sys/block/loop%d/ro", d.loopIdx)); err != nil || strings.TrimSpace(string(ro)) != "1" {
		t.Errorf("/sys/block/loop%d/ro = %q, %v", d.loopIdx, ro, err)
	}
	if wf, err := os.OpenFile(d.Path(), os.O_WRONLY|syscall.O_DIRECT, 0); err == nil {
		wb := kerneltest.AlignedBuf(4096)
		if _, err := wf.WriteAt(wb, 0); err == nil {
			t.Errorf("wrote to a read-only loop device")
		}
		wf.Close()
	}
	if b.writes.Load() != 0 {
		t.Errorf("a write reached the backend of a read-only device")
	}
	f, err := os.OpenFile(d.Path(), os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := kerneltest.AlignedBuf(4096)
	if _, err := f.ReadAt(r, 0); err != nil || string(r[:5]) != "hello" {
		t.Errorf("read: %q, %v", r[:5], err)
	}
	if _, err := os.OpenFile(d.file, os.O_RDWR, 0); err == nil {
		t.Errorf("opened the read-only FUSE file for writing")
	}
}

// mkfs + mount + files + fsync + umount + fsck, for ext4 and xfs; fsync in
// the filesystem reaches Backend.Flush; Close is refused while mounted.
func TestFilesystems(t *testing.T) {
	kerneltest.RequireRoot(t)
	for _, tc := range []struct {
		fstype string
		size   int64
		mkfs   []string
		fsck   []string
	}{
		{"ext4", 256 * MiB, []string{"mkfs.ext4", "-F", "-q"}, []string{"e2fsck", "-f", "-n"}},
		{"xfs", 512 * MiB, []string{"mkfs.xfs", "-f", "-q"}, []string{"xfs_repair", "-n"}},
	} {
		t.Run(tc.fstype, func(t *testing.T) {
			requireTools(t, tc.mkfs[0], tc.fsck[0])
			b := newMemBackend(tc.size, tc.size)
			stateDir := t.TempDir()
			d := attach(t, b, Options{StateDir: stateDir, RequestTimeout: 60 * time.Second})

			mustRun(t, 2*time.Minute, tc.mkfs[0], append(tc.mkfs[1:], d.Path())...)
			t.Logf("after mkfs: discards=%d writeZeroes=%d flushes=%d", b.discards.Load(), b.zeroes.Load(), b.flushes.Load())
			mnt := mountFS(t, d.Path(), tc.fstype)

			want := map[string][]byte{}
			for i := range 20 {
				data := make([]byte, 4096*(1+i*7))
				_, _ = rand.Read(data)
				name := filepath.Join(mnt, fmt.Sprintf("file%02d", i))
				want[name] = data
				if err := os.WriteFile(name, data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			f, err := os.OpenFile(filepath.Join(mnt, "synced"), os.O_CREATE|os.O_RDWR, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(bytes.Repeat([]byte("journaled "), 1000)); err != nil {
				t.Fatal(err)
			}
			before := b.flushes.Load()
			if err := within(t, time.Minute, "fsync", f.Sync); err != nil {
				t.Fatalf("fsync: %v", err)
			}
			f.Close()
			after := b.flushes.Load()
			t.Logf("fsync of a file in %s: Backend.Flush %d -> %d", tc.fstype, before, after)
			if after <= before {
				t.Errorf("fsync in %s did not reach Backend.Flush", tc.fstype)
			}

			if err := d.Close(context.Background()); !errors.Is(err, ErrBusy) {
				t.Errorf("Close while mounted: %v, want ErrBusy", err)
			}
			if d.Err() != nil {
				t.Fatalf("device stopped after a refused Close: %v", d.Err())
			}

			// Drop the page cache by remounting, then read everything back.
			if err := syscall.Unmount(mnt, 0); err != nil {
				t.Fatal(err)
			}
			if err := syscall.Mount(d.Path(), mnt, tc.fstype, 0, ""); err != nil {
				t.Fatal(err)
			}
			for name, data := range want {
				got, err := os.ReadFile(name)
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("%s: read back %d bytes, %v", name, len(got), err)
				}
			}
			if err := syscall.Unmount(mnt, 0); err != nil {
				t.Fatal(err)
			}
			out := mustRun(t, 2*time.Minute, tc.fsck[0], append(tc.fsck[1:], d.Path())...)
			t.Logf("%s: %s", tc.fsck[0], lastLine(out))

			if err := d.Close(context.Background()); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := d.Close(context.Background()); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			if err := d.Abort(); err != nil {
				t.Fatalf("Abort after Close: %v", err)
			}
			if !errors.Is(d.Err(), ErrClosed) {
				t.Errorf("Err() after Close = %v", d.Err())
			}
			select {
			case <-d.Done():
			default:
				t.Errorf("Done not closed after Close")
			}
			assertNoLeftovers(t, stateDir, d.name, d.conn)
		})
	}
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}

// blkdiscard reaches Backend.Discard; blkdiscard -z (BLKZEROOUT) and
// fallocate ZERO_RANGE reach Backend.WriteZeroes; the ranges read back as zeroes.
func TestDiscardAndWriteZeroes(t *testing.T) {
	kerneltest.RequireRoot(t)
	requireTools(t, "blkdiscard")
	b := newMemBackend(64*MiB, 64*MiB)
	d := attach(t, b, Options{RequestTimeout: 30 * time.Second})
	f := openDirect(t, d.Path())
	pattern := kerneltest.AlignedBuf(int(4 * MiB))
	for i := range pattern {
		pattern[i] = 0xA5
	}
	zero := make([]byte, 4*MiB)
	fill := func(off int64) {
		t.Helper()
		if _, err := f.WriteAt(pattern, off); err != nil {
			t.Fatal(err)
		}
	}
	readBack := func(off int64) []byte {
		t.Helper()
		r := kerneltest.AlignedBuf(int(4 * MiB))
		if _, err := f.ReadAt(r, off); err != nil {
			t.Fatal(err)
		}
		return r
	}

	fill(8 * MiB)
	n0 := b.discards.Load()
	mustRun(t, time.Minute, "blkdiscard", "-o", strconv.FormatInt(8*MiB, 10), "-l", strconv.FormatInt(4*MiB, 10), d.Path())
	if b.discards.Load() == n0 {
		t.Errorf("blkdiscard did not reach Backend.Discard")
	}
	if !bytes.Equal(readBack(8*MiB), zero) || !bytes.Equal(b.bytesAt(8*MiB, 4*MiB), zero) {
		t.Errorf("discarded range does not read back as zeroes")
	}

	fill(16 * MiB)
	z0, d0 := b.zeroes.Load(), b.discards.Load()
	mustRun(t, time.Minute, "blkdiscard", "-z", "-o", strconv.FormatInt(16*MiB, 10), "-l", strconv.FormatInt(4*MiB, 10), d.Path())
	t.Logf("blkdiscard -z: WriteZeroes +%d, Discard +%d", b.zeroes.Load()-z0, b.discards.Load()-d0)
	if b.zeroes.Load() == z0 {
		t.Errorf("blkdiscard -z did not reach Backend.WriteZeroes")
	}
	if !bytes.Equal(readBack(16*MiB), zero) {
		t.Errorf("zeroed range does not read back as zeroes")
	}

	fill(24 * MiB)
	ff, err := os.OpenFile(d.file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ff.Close()
	z0 = b.zeroes.Load()
	if err := unix.Fallocate(int(ff.Fd()), unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, 24*MiB, 4*MiB); err != nil {
		t.Fatalf("fallocate ZERO_RANGE: %v", err)
	}
	if b.zeroes.Load() != z0+1 {
		t.Errorf("fallocate ZERO_RANGE reached Backend.WriteZeroes %d times, want 1", b.zeroes.Load()-z0)
	}
	if !bytes.Equal(readBack(24*MiB), zero) {
		t.Errorf("ZERO_RANGE range does not read back as zeroes")
	}
	d0 = b.discards.Load()
	if err := unix.Fallocate(int(ff.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096); err != nil {
		t.Fatalf("fallocate PUNCH_HOLE: %v", err)
	}
	if b.discards.Load() != d0+1 {
		t.Errorf("fallocate PUNCH_HOLE reached Backend.Discard %d times, want 1", b.discards.Load()-d0)
	}
}

// Resize grows the device the kernel sees.
func TestResize(t *testing.T) {
	kerneltest.RequireRoot(t)
	requireTools(t, "blockdev")
	b := newMemBackend(64*MiB, 256*MiB)
	d := attach(t, b, Options{RequestTimeout: 30 * time.Second})
	getsize := func() int64 {
		t.Helper()
		out := mustRun(t, 30*time.Second, "blockdev", "--getsize64", d.Path())
		n, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
		if err != nil {
			t.Fatalf("blockdev output %q", out)
		}
		return n
	}
	if got := getsize(); got != 64*MiB {
		t.Fatalf("initial size %d", got)
	}
	if err := d.Resize(context.Background(), 128*MiB); err == nil {
		t.Fatalf("Resize beyond the backend's size succeeded")
	}
	b.grow(192 * MiB)
	if err := d.Resize(context.Background(), 128*MiB); err != nil {
		t.Fatalf("Resize: %v", err)
	}
	if got := getsize(); got != 128*MiB {
		t.Fatalf("blockdev --getsize64 after Resize = %d, want %d", got, 128*MiB)
	}
	if err := d.Resize(context.Background(), 192*MiB); err != nil {
		t.Fatalf("second Resize: %v", err)
	}
	if got := getsize(); got != 192*MiB {
		t.Fatalf("blockdev --getsize64 after second Resize = %d, want %d", got, 192*MiB)
	}
	f := openDirect(t, d.Path())
	w := kerneltest.AlignedBuf(4096)
	copy(w, "tail")
	if _, err := f.WriteAt(w, 192*MiB-4096); err != nil {
		t.Fatalf("write at the new end: %v", err)
	}
	if string(b.bytesAt(192*MiB-4096, 4)) != "tail" {
		t.Errorf("write at the new end did not reach the backend")
	}
	if err := d.Resize(context.Background(), 100*MiB); err == nil {
		t.Errorf("shrink succeeded")
	}
	if err := d.Resize(context.Background(), 192*MiB+100); err == nil {
		t.Errorf("unaligned size accepted")
	}
}

// TestResizeUnderWrites: growing the device while writes go on gives the
// kernel the new size for real: the new last block reads at once. A direct
// write completing during the GETATTR that refreshes the size makes the
// kernel drop its answer (stat still reports it), so the FUSE file's i_size,
// which bounds the loop driver's reads, stayed old and the first read past
// it failed with EIO (xfs_growfs in TestExpandOnline, once in ~30 runs).
func TestResizeUnderWrites(t *testing.T) {
	kerneltest.RequireRoot(t)
	const step, steps = 4 * MiB, 40
	b := newMemBackend(64*MiB, 64*MiB+steps*step)
	d := attach(t, b, Options{RequestTimeout: 30 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := os.OpenFile(d.Path(), os.O_WRONLY|syscall.O_DIRECT, 0)
			if err != nil {
				t.Errorf("writer %d: %v", w, err)
				return
			}
			defer f.Close()
			buf := kerneltest.AlignedBuf(4096)
			for i := int64(0); ctx.Err() == nil; i++ {
				if _, err := f.WriteAt(buf, (i*4+int64(w))%(64*MiB/4096)*4096); err != nil {
					t.Errorf("writer %d: %v", w, err)
					return
				}
			}
		}()
	}
	f := openDirect(t, d.Path())
	buf := kerneltest.AlignedBuf(4096)
	size := int64(64 * MiB)
	for range steps {
		size += step
		b.grow(size)
		if err := d.Resize(ctx, size); err != nil {
			t.Fatalf("Resize to %d: %v", size, err)
		}
		if n, err := f.ReadAt(buf, size-4096); err != nil || n != 4096 {
			t.Fatalf("read of the last block after Resize to %d: %d bytes, %v", size, n, err)
		}
	}
}

// The serving process dies: I/O fails with EIO at once (no hang), a new
// Attach under the same name is refused until Cleanup, Cleanup leaves no
// mount, loop device or FUSE connection, and the name can be served again.
func TestServerProcessDeath(t *testing.T) {
	kerneltest.RequireRoot(t)
	requireTools(t, "mkfs.ext4", "dd")
	stateDir := t.TempDir()
	const name = "vol-death"
	t.Cleanup(func() {
		if err := Cleanup(context.Background(), stateDir, name); err != nil {
			t.Errorf("final Cleanup: %v", err)
		}
	})
	h := startHelper(t, stateDir, name, 128*MiB)
	t.Logf("child pid %d serves %s (FUSE connection %d)", h.Cmd.Process.Pid, h.dev, h.conn)
	t.Cleanup(func() { unmountAllOf(t, h.dev) })
	liveMu.Lock()
	liveConns[h.conn] = mountPoint(stateDir, name)
	liveMu.Unlock()
	t.Cleanup(func() {
		liveMu.Lock()
		delete(liveConns, h.conn)
		liveMu.Unlock()
	})

	mustRun(t, time.Minute, "mkfs.ext4", "-F", "-q", h.dev)
	mnt := mountFS(t, h.dev, "ext4")
	if err := os.WriteFile(filepath.Join(mnt, "before"), []byte("alive"), 0o644); err != nil {
		t.Fatal(err)
	}

	if err := h.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.Exited():
	case <-time.After(30 * time.Second):
		t.Fatalf("child did not die")
	}

	// Raw I/O fails at once.
	start := time.Now()
	out, err := run(t, 30*time.Second, "dd", "if="+h.dev, "of=/dev/null", "bs=4096", "count=1", "iflag=direct")
	t.Logf("dd read after the server died (%s): %v: %s", time.Since(start).Round(time.Millisecond), err, lastLine(out))
	if err == nil {
		t.Errorf("read from %s succeeded after the server died", h.dev)
	} else if !strings.Contains(out, "Input/output error") {
		t.Errorf("read error is not EIO: %s", out)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("read took %s", time.Since(start))
	}
	// The filesystem sees I/O errors: write + fsync fails.
	err = within(t, 30*time.Second, "write+fsync on the dead device", func() error {
		f, err := os.OpenFile(filepath.Join(mnt, "after"), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := f.Write(bytes.Repeat([]byte("x"), 65536)); err != nil {
			return err
		}
		return f.Sync()
	})
	t.Logf("write+fsync in ext4 after the server died: %v", err)
	if err == nil {
		t.Errorf("write+fsync succeeded on a dead device")
	} else if !errors.Is(err, syscall.EIO) && !errors.Is(err, syscall.EROFS) {
		t.Errorf("write+fsync error %v, want EIO (or EROFS after ext4 aborted)", err)
	}

	// A restarted process finds the leftovers.
	if _, err := Attach(context.Background(), newMemBackend(128*MiB, 128*MiB), Options{StateDir: stateDir, Name: name}); !errors.Is(err, ErrExists) {
		t.Errorf("Attach over leftovers: %v, want ErrExists", err)
	}
	// While the filesystem is still mounted Cleanup does what it can and says so.
	if err := Cleanup(context.Background(), stateDir, name); !errors.Is(err, ErrBusy) {
		t.Errorf("Cleanup with the filesystem still mounted: %v, want ErrBusy", err)
	} else {
		t.Logf("Cleanup while mounted: %v", err)
	}
	if err := within(t, 30*time.Second, "umount", func() error { return syscall.Unmount(mnt, 0) }); err != nil {
		t.Fatalf("umount of the dead filesystem: %v", err)
	}
	if err := Cleanup(context.Background(), stateDir, name); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if err := Cleanup(context.Background(), stateDir, name); err != nil {
		t.Fatalf("second Cleanup: %v", err)
	}
	assertNoLeftovers(t, stateDir, name, h.conn)
	assertNoStuckTasks(t)

	// The name can be served again.
	d := attach(t, newMemBackend(128*MiB, 128*MiB), Options{StateDir: stateDir, Name: name, RequestTimeout: 30 * time.Second})
	if err := d.Close(context.Background()); err != nil {
		t.Fatalf("Close of the re-attached device: %v", err)
	}
}

// A backend whose writes block until cancelled: the watchdog aborts the FUSE
// connection within the timeout, writers get errors, nothing stays in D state,
// and the device can be torn down.
func TestHungBackendWatchdog(t *testing.T) {
	kerneltest.RequireRoot(t)
	requireTools(t, "mkfs.ext4", "dd")
	b := newMemBackend(128*MiB, 128*MiB)
	const timeout = 2 * time.Second
	stateDir := t.TempDir()
	d := attach(t, b, Options{StateDir: stateDir, RequestTimeout: timeout})
	mustRun(t, time.Minute, "mkfs.ext4", "-F", "-q", d.Path())
	mnt := mountFS(t, d.Path(), "ext4")

	b.blockWrites.Store(true)
	start := time.Now()
	type result struct {
		out string
		err error
		at  time.Duration
	}
	var wg sync.WaitGroup
	var raw, fsw result
	wg.Add(2)
	go func() {
		defer wg.Done()
		raw.out, raw.err = run(t, 60*time.Second, "dd", "if=/dev/urandom", "of="+d.Path(), "bs=4096", "count=4", "seek=1000", "oflag=direct")
		raw.at = time.Since(start)
	}()
	go func() {
		defer wg.Done()
		fsw.out, fsw.err = run(t, 60*time.Second, "dd", "if=/dev/zero", "of="+filepath.Join(mnt, "f"), "bs=4096", "count=64", "conv=fsync")
		fsw.at = time.Since(start)
	}()
	select {
	case <-d.Done():
	case <-time.After(timeout + 10*time.Second):
		t.Fatalf("watchdog did not fire; %d writes blocked", b.blocked.Load())
	}
	fired := time.Since(start)
	t.Logf("watchdog fired after %s: %v", fired.Round(time.Millisecond), d.Err())
	if !errors.Is(d.Err(), ErrRequestTimeout) {
		t.Errorf("Err() = %v, want ErrRequestTimeout", d.Err())
	}
	if fired > timeout+8*time.Second { // ticks every timeout/4; generous for a loaded machine
		t.Errorf("watchdog fired after %s (timeout %s)", fired, timeout)
	}
	wg.Wait()
	t.Logf("raw dd writer: after %s: %v: %s", raw.at.Round(time.Millisecond), raw.err, lastLine(raw.out))
	t.Logf("fs dd writer: after %s: %v: %s", fsw.at.Round(time.Millisecond), fsw.err, lastLine(fsw.out))
	if raw.err == nil {
		t.Errorf("raw writer succeeded against a hung backend")
	}
	if fsw.err == nil {
		t.Errorf("filesystem writer (conv=fsync) succeeded against a hung backend")
	}
	// Everything after the abort fails fast.
	if _, err := run(t, 30*time.Second, "dd", "if="+d.Path(), "of=/dev/null", "bs=4096", "count=1", "iflag=direct"); err == nil {
		t.Errorf("read after the abort succeeded")
	}
	assertNoStuckTasks(t)

	if err := within(t, 30*time.Second, "umount", func() error { return syscall.Unmount(mnt, 0) }); err != nil {
		t.Errorf("umount: %v", err)
	}
	if err := within(t, 30*time.Second, "Abort", d.Abort); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	if err := d.Close(context.Background()); err != nil {
		t.Fatalf("Close after Abort: %v", err)
	}
	assertNoLeftovers(t, stateDir, d.name, d.conn)
	assertNoStuckTasks(t)
}

// A backend call that ignores its context: the kernel side is still released
// by the watchdog; Abort reports the stuck goroutine after a bounded wait and
// completes once the call returns.
func TestHungBackendIgnoringContext(t *testing.T) {
	kerneltest.RequireRoot(t)
	requireTools(t, "dd")
	b := newMemBackend(32*MiB, 32*MiB)
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(b.release) }) }
	t.Cleanup(release)
	stateDir := t.TempDir()
	d := attach(t, b, Options{StateDir: stateDir, RequestTimeout: time.Second})
	b.ignoreCtx.Store(true)
	start := time.Now()
	out, err := run(t, 60*time.Second, "dd", "if=/dev/zero", "of="+d.Path(), "bs=4096", "count=1", "oflag=direct")
	t.Logf("writer: after %s: %v: %s", time.Since(start).Round(time.Millisecond), err, lastLine(out))
	if err == nil {
		t.Errorf("writer succeeded against a hung backend")
	}
	if !errors.Is(d.Err(), ErrRequestTimeout) {
		t.Errorf("Err() = %v, want ErrRequestTimeout", d.Err())
	}
	assertNoStuckTasks(t)

	start = time.Now()
	err = d.Abort()
	t.Logf("Abort with a stuck backend call: after %s: %v", time.Since(start).Round(time.Millisecond), err)
	if err == nil {
		t.Errorf("Abort reported success while a backend call is stuck")
	}
	if time.Since(start) > serverStopGrace+5*time.Second {
		t.Errorf("Abort took %s", time.Since(start))
	}
	// The kernel side is already gone.
	assertNoLeftovers(t, stateDir, d.name, d.conn)

	release()
	if err := within(t, 30*time.Second, "Abort", d.Abort); err != nil {
		t.Fatalf("Abort after the backend returned: %v", err)
	}
}

// Cleanup with nothing to clean is a no-op, and rejects bad names.
func TestCleanupNothing(t *testing.T) {
	kerneltest.RequireRoot(t)
	dir := t.TempDir()
	for range 2 {
		if err := Cleanup(context.Background(), dir, "nothing-here"); err != nil {
			t.Fatalf("Cleanup: %v", err)
		}
	}
	if err := Cleanup(context.Background(), dir, "../x"); err == nil {
		t.Fatalf("Cleanup accepted a bad name")
	}
}

// An Attach that fails half-way leaves nothing behind.
func TestAttachFailureUndoes(t *testing.T) {
	kerneltest.RequireRoot(t)
	stateDir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // Attach notices after mounting the FUSE filesystem
	_, err := Attach(ctx, newMemBackend(16*MiB, 16*MiB), Options{StateDir: stateDir, Name: "cancelled"})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Attach with a cancelled context: %v", err)
	}
	assertNoLeftovers(t, stateDir, "cancelled", 0)
	if _, err := Attach(context.Background(), newMemBackend(1000, 1000), Options{StateDir: stateDir, Name: "odd"}); err == nil {
		t.Fatalf("Attach accepted a size that is not a multiple of 512")
	}
}

// Without fusectl the connection is aborted by a forced unmount; a negative
// RequestTimeout disables the watchdog.
func TestAbortByForcedUnmount(t *testing.T) {
	kerneltest.RequireRoot(t)
	requireTools(t, "dd")
	b := newMemBackend(32*MiB, 32*MiB)
	d := attach(t, b, Options{RequestTimeout: -1})
	b.blockWrites.Store(true)
	type result struct {
		out string
		err error
	}
	res := make(chan result, 1)
	go func() {
		out, err := run(t, 60*time.Second, "dd", "if=/dev/zero", "of="+d.Path(), "bs=4096", "count=1", "oflag=direct")
		res <- result{out, err}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for b.blocked.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond)
	select {
	case r := <-res:
		t.Fatalf("writer finished with the watchdog disabled and the backend blocked: %v %s", r.err, r.out)
	case <-d.Done():
		t.Fatalf("device stopped with the watchdog disabled: %v", d.Err())
	default:
	}
	// The detector used by assertNoStuckTasks sees the blocked writer.
	if st := stuckTasks(); len(st) == 0 {
		t.Errorf("no task in D state while a writer is blocked on the device")
	} else {
		for _, v := range st {
			t.Logf("blocked before the abort: %s", v)
		}
	}
	if err := abortConn(0, d.mnt); err != nil {
		t.Fatalf("abortConn via forced unmount: %v", err)
	}
	select {
	case r := <-res:
		t.Logf("writer after the forced unmount: %v: %s", r.err, lastLine(r.out))
		if r.err == nil {
			t.Errorf("writer succeeded")
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("writer still blocked after the forced unmount")
	}
	assertNoStuckTasks(t)
}
