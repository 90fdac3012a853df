package nodeserver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// mountsAt returns the mounts stacked at path, lowest first (mountinfo's
// order), read from mountinfo (never touching the path itself: the
// filesystem there may be dead and answer EIO). Not
// mountinfo.SingleEntryFilter: it stops at the first, lowest mount, and
// callers look for stacked ones and at the top one.
func mountsAt(path string) ([]*mountinfo.Info, error) {
	path = filepath.Clean(path)
	ms, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) { return m.Mountpoint != path, false })
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return ms, nil
}

// isMounted reports whether something is mounted at path.
func isMounted(path string) (bool, error) {
	ms, err := mountsAt(path)
	return len(ms) > 0, err
}

// unmountAll unmounts every mount stacked at path. With lazy, a busy mount
// is detached (MNT_DETACH): it disappears from the namespace and the kernel
// drops it once its last user lets go.
func unmountAll(path string, lazy bool) error {
	for range 16 {
		mounted, err := isMounted(path)
		if err != nil || !mounted {
			return err
		}
		err = unix.Unmount(path, 0)
		if errors.Is(err, unix.EBUSY) && lazy {
			err = unix.Unmount(path, unix.MNT_DETACH)
		}
		switch {
		case err == nil, errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
		case errors.Is(err, unix.EBUSY):
			return fmt.Errorf("unmount %s: still in use (some process has files open there): %w", path, err)
		default:
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	return fmt.Errorf("unmount %s: mounts keep reappearing", path)
}

// bindMount bind-mounts src onto target, read-only if asked (a read-only
// bind needs a remount after the bind).
func bindMount(src, target string, readOnly bool) error {
	if err := unix.Mount(src, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind mount %s on %s: %w", src, target, err)
	}
	if readOnly {
		if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			_ = unix.Unmount(target, unix.MNT_DETACH)
			return fmt.Errorf("remount %s read-only: %w", target, err)
		}
	}
	return nil
}

// ensureFile creates an empty regular file (a bind-mount target for a
// device node), with its parent directory.
func ensureFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o640)
	if err != nil {
		return err
	}
	return f.Close()
}

// removeTarget removes the file or directory NodePublish created at path
// (only if nothing is mounted there any more).
func removeTarget(path string) error {
	if mounted, err := isMounted(path); err != nil || mounted {
		if err == nil {
			err = fmt.Errorf("%s is still a mount point", path)
		}
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}
