package local

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// applyRecord makes the object files reflect r. Every mutation is absolute
// (bytes at an offset, a size, a whole meta), so applying a record again, or
// applying the log's records in order over files that hold any mix of their
// effects (after a crash), yields the same files. It is used both by the
// committer after the record is durable and by recovery.
func (c *Cluster) applyRecord(r *record) error {
	pd := c.poolDir(r.poolID)
	paths := objPathsIn(pd, r.oid)
	fd := -1
	defer func() {
		if fd >= 0 {
			unix.Close(fd)
		}
	}()
	open := func(flag int) error {
		if fd >= 0 && flag&unix.O_TRUNC == 0 {
			return nil
		}
		if fd >= 0 {
			unix.Close(fd)
			fd = -1
		}
		var err error
		fd, err = openData(paths.data, unix.O_RDWR|unix.O_CREAT|flag)
		if errors.Is(err, unix.ENOENT) {
			if err = ensurePoolDirs(pd); err == nil {
				fd, err = openData(paths.data, unix.O_RDWR|unix.O_CREAT|flag)
			}
		}
		return err
	}
	for _, m := range r.muts {
		switch m.kind {
		case mutRemove:
			if fd >= 0 {
				unix.Close(fd)
				fd = -1
			}
			for _, p := range []string{paths.data, paths.meta, paths.name} {
				if p != "" {
					if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
						return err
					}
				}
			}
		case mutCreateFresh:
			if err := os.Remove(paths.meta); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			if err := open(unix.O_TRUNC); err != nil {
				return err
			}
			if paths.name != "" {
				if err := writeInPlace(paths.name, []byte(r.oid)); err != nil {
					return err
				}
			}
		case mutWrite:
			if err := open(0); err != nil {
				return err
			}
			if err := pwriteAll(fd, m.data, int64(m.a)); err != nil {
				return err
			}
		case mutSetSize:
			if err := open(0); err != nil {
				return err
			}
			if err := unix.Ftruncate(fd, int64(m.b)); err != nil {
				return err
			}
			if m.b > m.a {
				if err := zeroRange(fd, m.a, m.b-m.a); err != nil {
					return err
				}
			}
		case mutZero:
			if err := open(0); err != nil {
				return err
			}
			if err := zeroRange(fd, m.a, m.b); err != nil {
				return err
			}
		default:
			return errCorrupt
		}
	}
	if testHookBeforeMeta != nil {
		testHookBeforeMeta(r)
	}
	if r.hasMeta {
		if len(r.meta) == 0 {
			if err := os.Remove(paths.meta); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		} else if err := writeInPlace(paths.meta, r.meta); err != nil {
			return err
		}
	}
	if r.mtime != 0 {
		if err := open(0); err != nil {
			return err
		}
		ts := []unix.Timespec{unix.NsecToTimespec(r.mtime), unix.NsecToTimespec(r.mtime)}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, paths.data, ts, 0); err != nil {
			return err
		}
	}
	return nil
}

func openData(path string, flag int) (int, error) {
	for {
		fd, err := unix.Open(path, flag|unix.O_CLOEXEC, 0o644)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// pwriteAll writes all of b at off.
func pwriteAll(fd int, b []byte, off int64) error {
	return pioFull(unix.Pwrite, fd, b, off, io.ErrShortWrite)
}

// preadFull reads len(b) bytes at off, or up to the end of the file; the
// rest of b is left alone.
func preadFull(fd int, b []byte, off int64) error {
	return pioFull(unix.Pread, fd, b, off, nil)
}

// pioFull calls pio (pread or pwrite) until it has done all of b, retrying
// on EINTR and going on after a partial transfer. A call that transfers
// nothing ends it with atZero: for a read, the end of the file.
func pioFull(pio func(fd int, p []byte, off int64) (int, error), fd int, b []byte, off int64, atZero error) error {
	for len(b) > 0 {
		n, err := pio(fd, b, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return atZero
		}
		b = b[n:]
		off += int64(n)
	}
	return nil
}

// testHookBeforeMeta, if set, runs in applyRecord after the data mutations
// and before the meta file is written (crash tests).
var testHookBeforeMeta func(r *record)

// zeroRange zeroes [off, off+n) of fd without changing its size.
func zeroRange(fd int, off, n uint64) error {
	if n == 0 {
		return nil
	}
	err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(off), int64(n))
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if int64(off) >= st.Size {
		return nil
	}
	if end := uint64(st.Size); off+n > end {
		n = end - off
	}
	zeros := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, uint64(len(zeros)))
		if err := pwriteAll(fd, zeros[:k], int64(off)); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// writeInPlace replaces a file's content without fsync; crash safety comes
// from the log, which holds the same bytes.
func writeInPlace(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if errors.Is(err, fs.ErrNotExist) {
		if err = os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
			f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
		}
	}
	if err != nil {
		return err
	}
	_, err = f.WriteAt(b, 0)
	if err == nil {
		err = f.Truncate(int64(len(b)))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func ensurePoolDirs(pd string) error {
	for _, sub := range []string{"data", "meta", "names", "watch"} {
		if err := os.MkdirAll(filepath.Join(pd, sub), 0o755); err != nil {
			return err
		}
	}
	return nil
}
