//go:build linux

package fuseloop

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"k8s.io/klog/v2"
)

// Cleanup removes what a dead process left for device name under stateDir:
// it aborts the FUSE connection mounted at <stateDir>/<name>/fuse (so no step
// can block on a hung server), detaches every loop device backed by its disk
// file, and lazily unmounts the FUSE mount. Idempotent: with nothing left it
// returns nil.
//
// A loop device that is still open (a filesystem mounted on it) is detached
// by the kernel only when its last opener closes it; Cleanup then returns an
// error wrapping ErrBusy naming the mounts, after doing everything else.
// Unmount them and call Cleanup again.
//
// Never call it for a device this process still serves (use Close/Abort).
func Cleanup(ctx context.Context, stateDir string, name string) error {
	if err := validName(name); err != nil {
		return err
	}
	logger := klog.FromContext(ctx).WithValues("name", name)
	mnt := mountPoint(stateDir, name)
	file := filepath.Join(mnt, diskFileName)
	if err := ensureFusectl(); err != nil {
		logger.Info("fuseloop: fusectl not available, connection abort falls back to forced unmount", "err", err)
	}

	mi, err := findMount(mnt)
	if err != nil {
		return err
	}
	var errs []error
	var conn uint64
	if mi != nil && strings.HasPrefix(mi.fsType, "fuse") {
		conn = mi.connID()
		// Abort first: detaching a loop device waits for its in-flight I/O,
		// which would block forever on a hung (alive) server.
		if err := abortConn(conn, mnt); err != nil {
			errs = append(errs, err)
		}
	}

	loops, err := loopDevicesBackedBy(file, conn)
	if err != nil {
		errs = append(errs, err)
	}
	var busy []string
	for _, idx := range loops {
		if ctx.Err() != nil {
			break
		}
		if err := loopDetach(idx, file, conn, false); err != nil {
			errs = append(errs, err)
			continue
		}
		if loopIsOurs(idx, file, conn) {
			busy = append(busy, loopDevPath(idx)) // detach deferred by the kernel
		}
	}

	// Unmount every fuse mount stacked at mnt (normally one).
	for ctx.Err() == nil {
		mi, err := findMount(mnt)
		if err != nil {
			errs = append(errs, err)
			break
		}
		if mi == nil || !strings.HasPrefix(mi.fsType, "fuse") {
			break
		}
		if err := syscall.Unmount(mnt, syscall.MNT_DETACH); err != nil {
			if err != syscall.EINVAL && err != syscall.ENOENT {
				errs = append(errs, fmt.Errorf("fuseloop: lazy unmount %s: %w", mnt, err))
			}
			break
		}
	}
	if len(busy) == 0 {
		_ = os.Remove(mnt) // only if empty; a leftover directory is harmless
	}
	if err := ctx.Err(); err != nil {
		errs = append(errs, err)
	}
	if len(busy) > 0 {
		users, _ := mountsOf(busy)
		errs = append(errs, fmt.Errorf("%w: %v still open (mounted at %v); detached when closed",
			ErrBusy, busy, users))
	}
	err = errors.Join(errs...)
	if mi != nil || len(loops) > 0 || err != nil {
		var loopPaths []string
		for _, idx := range loops {
			loopPaths = append(loopPaths, loopDevPath(idx))
		}
		logger.Info("fuseloop: cleaned up leftovers", "mountPoint", mnt, "fuseMounted", mi != nil,
			"fuseConn", conn, "loopDevices", loopPaths, "busy", busy, "err", err)
	}
	return err
}
