// Package fsprobe does to a mounted volume what an application in a pod
// does, and looks at what is mounted, for the demo (cmd/csi-rbdj demo) and
// the tests that check served volumes from the outside: write a file and
// fsync it, keep writing durable files until the volume goes away, list the
// mounts under a directory or stacked at a path.
package fsprobe

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/moby/sys/mountinfo"
)

// WriteSync creates or truncates path, writes data and fsyncs the file.
// Every error is returned, the one of Close too (on a FUSE-backed volume a
// write error may only show there).
func WriteSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// MountsUnder lists the mount points under dir, in mount order (nil if
// mountinfo cannot be read).
func MountsUnder(dir string) []string {
	ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		out = append(out, m.Mountpoint)
	}
	return out
}

// MountsAt returns the mounts stacked at path, the lowest first (nil if
// mountinfo cannot be read). Not mountinfo.SingleEntryFilter: it stops at
// the lowest mount, and a restart can stack a new one on top.
func MountsAt(path string) []*mountinfo.Info {
	path = filepath.Clean(path)
	ms, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) { return m.Mountpoint != path, false })
	if err != nil {
		return nil
	}
	return ms
}

// Files is a series of files Dir/<Prefix><seq in 6 digits> holding
// Content(seq).
type Files struct {
	Dir     string
	Prefix  string
	Content func(seq int) []byte
}

// Path returns the path of file seq.
func (fs Files) Path(seq int) string {
	return filepath.Join(fs.Dir, fmt.Sprintf("%s%06d", fs.Prefix, seq))
}

// WriteUntil writes the files first, first+1, ..., each fsynced and its
// directory entry too, until stop is closed or an operation fails (the
// volume went away: the caller's test decides what that means), and calls
// durable with each file's seq once it is durable.
func (fs Files) WriteUntil(first int, stop <-chan struct{}, durable func(seq int)) {
	d, err := os.Open(fs.Dir)
	if err != nil {
		return
	}
	defer d.Close()
	for seq := first; ; seq++ {
		select {
		case <-stop:
			return
		default:
		}
		if err := WriteSync(fs.Path(seq), fs.Content(seq)); err != nil {
			return
		}
		if err := d.Sync(); err != nil {
			return
		}
		durable(seq)
	}
}
