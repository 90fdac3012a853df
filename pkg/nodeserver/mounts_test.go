package nodeserver

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMountsAtStacked: with two filesystems stacked at a path, mountsAt
// returns both, lowest first (publish's lazy unmount of a dead stacked
// bind mount and checkAdopted's look at the top one depend on it). Needs
// root for the mounts.
func TestMountsAtStacked(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount tmpfs")
	}
	dir := t.TempDir()
	if ms, err := mountsAt(dir); err != nil || len(ms) != 0 {
		t.Fatalf("nothing mounted: %d mounts, %v", len(ms), err)
	}
	for _, src := range []string{"lower", "upper"} {
		if err := unix.Mount(src, dir, "tmpfs", 0, "size=64k"); err != nil {
			t.Skipf("cannot mount a tmpfs: %v", err)
		}
		t.Cleanup(func() {
			if err := unix.Unmount(dir, 0); err != nil {
				t.Errorf("unmount %s: %v", dir, err)
				_ = unix.Unmount(dir, unix.MNT_DETACH)
			}
		})
	}
	ms, err := mountsAt(dir + "/") // a trailing slash names the same path
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].Source != "lower" || ms[1].Source != "upper" {
		var got []string
		for _, m := range ms {
			got = append(got, m.Source)
		}
		t.Fatalf("mounts at %s: %v, want [lower upper]", dir, got)
	}
	if ok, err := isMounted(dir); !ok || err != nil {
		t.Fatalf("isMounted: %v, %v", ok, err)
	}
}
