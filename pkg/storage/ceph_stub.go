//go:build !(ceph && pacific)

package storage

// CephBuilt reports whether this binary carries the ceph backend.
const CephBuilt = false

// OpenCeph fails: this binary was built without the build tags `ceph
// pacific` (see README.md, "Building").
func OpenCeph(CephOptions) (Backend, error) { return nil, ErrCephNotBuilt }
