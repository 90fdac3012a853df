// Package atomicfile replaces small files so that a reader (or a process
// started after a crash) sees either the old content or the new, never a
// mixture or a truncated file: the new content goes to a temporary file in
// the same directory, is fsynced, renamed over the target, and the directory
// is fsynced so the rename itself is durable. Every error is returned; on
// failure the temporary file is removed and the target is untouched.
//
// Users: the node plugin's staging records (pkg/nodeserver) and the local
// object store's cluster state and blocklist (pkg/objstore/local).
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// TempSuffix ends the names of the temporary files Write makes
// ("<name>.<random>.tmp"); a directory's owner may delete such files left
// by a crash in the middle of a Write.
const TempSuffix = ".tmp"

// Options tune Write.
type Options struct {
	// Perm is the mode of the new file (default 0o600).
	Perm os.FileMode
	// NoSync skips both fsyncs: the replacement stays atomic for other
	// processes but may be lost (or, on some filesystems, appear empty)
	// after a power failure. Tests only.
	NoSync bool
}

// Write replaces path with data atomically and durably.
func Write(path string, data []byte, o Options) error {
	if o.Perm == 0 {
		o.Perm = 0o600
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := writeTemp(dir, base, data, o)
	if err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("replace %s: %w", path, err)
	}
	if o.NoSync {
		return nil
	}
	if err := SyncDir(dir); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	return nil
}

// writeTemp writes data to a new temporary file in dir and syncs it; on
// failure nothing is left behind.
func writeTemp(dir, base string, data []byte, o Options) (tmp string, err error) {
	f, err := os.CreateTemp(dir, base+".*"+TempSuffix)
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			_ = f.Close() // may be closed already; the first error is the one to report
			_ = os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(o.Perm); err != nil {
		return "", err
	}
	if _, err := f.Write(data); err != nil {
		return "", err
	}
	if !o.NoSync {
		if err := f.Sync(); err != nil {
			return "", err
		}
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return f.Name(), nil
}

// SyncDir fsyncs a directory, making the creation, removal or renaming of
// its entries durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	serr := d.Sync()
	cerr := d.Close()
	if serr != nil {
		return fmt.Errorf("sync directory %s: %w", dir, serr)
	}
	if cerr != nil {
		return fmt.Errorf("close directory %s: %w", dir, cerr)
	}
	return nil
}
