// Package kerneltest holds what tests that use the real kernel (loop
// devices, FUSE, mounts) share: the check of their environment, so that
// every such test skips for the same reasons with the same message, and
// O_DIRECT buffers and reads.
package kerneltest

import (
	"os"
	"syscall"
	"testing"
	"unsafe"
)

// RequireRoot skips the test unless it runs as root with /dev/fuse and
// /dev/loop-control present.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop devices, FUSE, mounts)")
	}
	for _, p := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("needs %s: %v", p, err)
		}
	}
}

// AlignedBuf returns n bytes aligned to 4 KiB, as O_DIRECT I/O on a loop
// device wants.
func AlignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	off := (4096 - int(uintptr(unsafe.Pointer(&b[0]))%4096)) % 4096
	return b[off : off+n : off+n]
}

// ReadDirect reads n bytes at off of the device or file path with O_DIRECT
// (past the page cache), failing the test on any error.
func ReadDirect(t testing.TB, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := AlignedBuf(n)
	if _, err := f.ReadAt(buf, off); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return buf
}
