// Package fsprobe does to a mounted volume what an application in a pod
// does, and looks at what is mounted, for the demo (cmd/csi-rbdj demo) and
// the tests that check served volumes from the outside: write a file and
// fsync it, list the mounts under a directory.
package fsprobe

import (
	"os"

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
