//go:build linux

package fuseloop

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const fusectlDir = "/sys/fs/fuse/connections"

// ---- loop devices ----

func loopDevPath(idx int) string { return fmt.Sprintf("/dev/loop%d", idx) }

// loopAttach binds a free loop device to f with direct I/O (LOOP_CONFIGURE).
func loopAttach(f *os.File, readOnly bool) (int, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("fuseloop: %w", err)
	}
	defer ctl.Close()
	var lastErr error
	for attempt := 0; attempt < 32; attempt++ {
		idx, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return -1, fmt.Errorf("fuseloop: LOOP_CTL_GET_FREE: %w", err)
		}
		lf, err := openLoop(idx, openFlags(readOnly))
		if err != nil {
			return -1, err
		}
		cfg := unix.LoopConfig{Fd: uint32(f.Fd())}
		cfg.Info.Flags = unix.LO_FLAGS_DIRECT_IO
		if readOnly {
			cfg.Info.Flags |= unix.LO_FLAGS_READ_ONLY
		}
		copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], f.Name())
		err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
		lf.Close()
		if err == nil {
			return idx, nil
		}
		lastErr = err
		if err != unix.EBUSY { // EBUSY: another process took it first
			return -1, fmt.Errorf("fuseloop: LOOP_CONFIGURE /dev/loop%d: %w", idx, err)
		}
		time.Sleep(time.Duration(attempt+1) * time.Millisecond)
	}
	return -1, fmt.Errorf("fuseloop: no free loop device: %w", lastErr)
}

// openLoop opens /dev/loopN, creating the node when /dev has none (static /dev in containers).
func openLoop(idx int, flags int) (*os.File, error) {
	p := loopDevPath(idx)
	f, err := os.OpenFile(p, flags|syscall.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		dev, rerr := os.ReadFile(fmt.Sprintf("/sys/block/loop%d/dev", idx))
		if rerr == nil {
			var maj, min uint32
			if _, serr := fmt.Sscanf(strings.TrimSpace(string(dev)), "%d:%d", &maj, &min); serr == nil {
				_ = unix.Mknod(p, unix.S_IFBLK|0o660, int(unix.Mkdev(maj, min)))
				f, err = os.OpenFile(p, flags|syscall.O_CLOEXEC, 0)
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("fuseloop: %w", err)
	}
	return f, nil
}

// loopBackingFile returns the backing file of /dev/loopN ("" when unbound).
func loopBackingFile(idx int) string {
	b, err := os.ReadFile(fmt.Sprintf("/sys/block/loop%d/loop/backing_file", idx))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// loopIsOurs reports whether /dev/loopN is bound to file, the disk file of
// FUSE connection conn (0: unknown). The path in sysfs is resolved in the
// mount namespace the file was opened in: when that namespace is gone (the
// container of a dead node plugin), it reads "/disk", unreachable. The
// device then is identified by what the kernel recorded of the backing
// file (LOOP_GET_STATUS64): its device, the FUSE superblock whose dev_t is
// the connection id, and its inode, the disk file's node id.
func loopIsOurs(idx int, file string, conn uint64) bool {
	bf := loopBackingFile(idx)
	switch {
	case bf == "":
		return false
	case bf == file:
		return true
	case conn == 0 || !strings.HasSuffix(bf, "/"+diskFileName):
		return false
	}
	lf, err := openLoop(idx, os.O_RDONLY)
	if err != nil {
		return false
	}
	defer lf.Close()
	st, err := unix.IoctlLoopGetStatus64(int(lf.Fd()))
	if err != nil {
		return false
	}
	dev := uint64(unix.Major(st.Device))<<20 | uint64(unix.Minor(st.Device))
	return dev == conn && st.Inode == diskNodeID
}

func loopDirectIO(idx int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/sys/block/loop%d/loop/dio", idx))
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// loopDetach unbinds /dev/loopN if it is still bound to file. With exclusive
// set it refuses (ErrBusy) when the device is open exclusively by someone
// else (a mounted filesystem, another O_EXCL opener); it then holds the
// device exclusively while detaching, so the detach is immediate. Without
// exclusive the kernel defers the detach until the last opener closes.
func loopDetach(idx int, file string, conn uint64, exclusive bool) error {
	if !loopIsOurs(idx, file, conn) {
		return nil // already detached (maybe reused by someone else: not ours)
	}
	flags := os.O_RDONLY
	if exclusive {
		flags |= syscall.O_EXCL
	}
	lf, err := openLoop(idx, flags)
	if err != nil {
		if exclusive && errors.Is(err, syscall.EBUSY) {
			return ErrBusy
		}
		return err
	}
	err = unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_CLR_FD, 0)
	cerr := lf.Close() // with our exclusive open the detach completes here
	if err != nil && err != unix.ENXIO {
		return fmt.Errorf("fuseloop: LOOP_CLR_FD %s: %w", loopDevPath(idx), err)
	}
	if cerr != nil {
		return fmt.Errorf("fuseloop: close %s: %w", loopDevPath(idx), cerr)
	}
	return nil
}

func loopSetCapacity(idx int) error {
	lf, err := openLoop(idx, os.O_RDONLY)
	if err != nil {
		return err
	}
	defer lf.Close()
	if err := unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_SET_CAPACITY, 0); err != nil {
		return fmt.Errorf("fuseloop: LOOP_SET_CAPACITY %s: %w", loopDevPath(idx), err)
	}
	return nil
}

func blockDevSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("fuseloop: %w", err)
	}
	defer f.Close()
	var size uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
		return 0, fmt.Errorf("fuseloop: BLKGETSIZE64 %s: %w", path, errno)
	}
	return int64(size), nil
}

// loopDevicesBackedBy lists the loop devices whose backing file is file,
// the disk file of FUSE connection conn (0: unknown; see loopIsOurs).
func loopDevicesBackedBy(file string, conn uint64) ([]int, error) {
	ents, err := os.ReadDir("/sys/block")
	if err != nil {
		return nil, fmt.Errorf("fuseloop: %w", err)
	}
	var out []int
	for _, e := range ents {
		idx, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "loop"))
		if err != nil || !strings.HasPrefix(e.Name(), "loop") {
			continue
		}
		if loopIsOurs(idx, file, conn) {
			out = append(out, idx)
		}
	}
	return out, nil
}

// ---- mounts and FUSE connections ----

type mountInfo struct {
	major, minor uint32
	mountPoint   string
	fsType       string
	source       string
}

// connID is the FUSE connection id: the kernel's dev_t of the superblock
// (MKDEV(major, minor) = major<<20 | minor), as named under fusectlDir.
func (m *mountInfo) connID() uint64 { return uint64(m.major)<<20 | uint64(m.minor) }

func readMountInfo() ([]mountInfo, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("fuseloop: %w", err)
	}
	defer f.Close()
	var out []mountInfo
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		var mi mountInfo
		if _, err := fmt.Sscanf(fields[2], "%d:%d", &mi.major, &mi.minor); err != nil {
			continue
		}
		mi.mountPoint = unescapeMount(fields[4])
		for i := 6; i+2 < len(fields); i++ {
			if fields[i] == "-" {
				mi.fsType, mi.source = fields[i+1], unescapeMount(fields[i+2])
				break
			}
		}
		out = append(out, mi)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("fuseloop: read mountinfo: %w", err)
	}
	return out, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// findMount returns the topmost mount at path, or nil.
func findMount(path string) (*mountInfo, error) {
	mis, err := readMountInfo()
	if err != nil {
		return nil, err
	}
	var found *mountInfo
	for i := range mis {
		if mis[i].mountPoint == path {
			found = &mis[i]
		}
	}
	return found, nil
}

// mountsOf returns the mount points whose source is one of the devices.
func mountsOf(devs []string) ([]string, error) {
	mis, err := readMountInfo()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, mi := range mis {
		for _, d := range devs {
			if mi.source == d {
				out = append(out, mi.mountPoint)
			}
		}
	}
	return out, nil
}

// ensureFusectl mounts the fusectl filesystem when it is missing, so FUSE
// connections can be aborted through fusectlDir.
func ensureFusectl() error {
	mi, err := findMount(fusectlDir)
	if err != nil {
		return err
	}
	if mi != nil && mi.fsType == "fusectl" {
		return nil
	}
	if err := syscall.Mount("fusectl", fusectlDir, "fusectl", 0, ""); err != nil && err != syscall.EBUSY {
		return fmt.Errorf("mount fusectl on %s: %w", fusectlDir, err)
	}
	return nil
}

// abortConn aborts a FUSE connection: every pending and future request fails
// (ENOTCONN/EIO) and no task stays blocked on the server. Falls back to a
// forced unmount (which aborts too) when fusectl is unavailable.
func abortConn(conn uint64, mnt string) error {
	if conn != 0 {
		err := os.WriteFile(filepath.Join(fusectlDir, strconv.FormatUint(conn, 10), "abort"), []byte("1"), 0)
		if err == nil {
			return nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("fuseloop: abort FUSE connection %d: %w", conn, err)
		}
	}
	if mnt == "" {
		return nil
	}
	mi, err := findMount(mnt)
	if err != nil || mi == nil || !strings.HasPrefix(mi.fsType, "fuse") {
		return err
	}
	if mi.connID() != conn && conn != 0 {
		return nil // a different connection is mounted there now
	}
	if err := syscall.Unmount(mnt, syscall.MNT_FORCE); err != nil && err != syscall.EBUSY && err != syscall.EINVAL {
		return fmt.Errorf("fuseloop: forced unmount %s: %w", mnt, err)
	}
	return nil
}

// unmountFuse unmounts the FUSE mount, retrying while the kernel still holds
// the file (a just-released loop device), then lazily.
func unmountFuse(ctx context.Context, mnt string) error {
	delay := time.Millisecond
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := syscall.Unmount(mnt, 0)
		if err == nil || err == syscall.EINVAL || err == syscall.ENOENT {
			return nil
		}
		if err != syscall.EBUSY {
			return fmt.Errorf("fuseloop: unmount %s: %w", mnt, err)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(delay)
		delay = min(2*delay, 100*time.Millisecond)
	}
	if err := syscall.Unmount(mnt, syscall.MNT_DETACH); err != nil && err != syscall.EINVAL && err != syscall.ENOENT {
		return fmt.Errorf("fuseloop: lazy unmount %s: %w", mnt, err)
	}
	return nil
}
