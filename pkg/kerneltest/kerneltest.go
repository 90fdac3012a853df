// Package kerneltest holds what tests that use the real kernel (loop
// devices, FUSE, mounts) share about their environment, so that every such
// test skips for the same reasons with the same message.
package kerneltest

import (
	"os"
	"testing"
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
