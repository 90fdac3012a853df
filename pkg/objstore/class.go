package objstore

// MethodContext is what an object-class method implemented in Go sees: the
// one object it was called on, inside the transaction of the calling
// operation (changes become visible only if the whole operation succeeds),
// and the client that called it. It mirrors Ceph's cls_cxx_* API.
type MethodContext interface {
	// Caller is the client that issued the operation.
	Caller() ClientInfo
	// Stat returns the object's size, or ErrNotFound.
	Stat() (size uint64, err error)
	// Create creates the object; exclusive fails with ErrExists if it exists.
	Create(exclusive bool) error
	// Remove deletes the object.
	Remove() error
	// Read returns up to length bytes at off (length 0: to the end).
	Read(off, length uint64) ([]byte, error)
	// Write writes data at off.
	Write(off uint64, data []byte) error
	// WriteFull replaces the object's data.
	WriteFull(data []byte) error
	// OmapGet returns one omap value, or ErrNotFound.
	OmapGet(key string) ([]byte, error)
	// OmapList returns up to max entries after startAfter with the prefix.
	OmapList(startAfter, prefix string, max int) (OmapPage, error)
	// OmapSet sets omap keys.
	OmapSet(kv map[string][]byte) error
	// OmapRemove removes one key (missing keys are ignored).
	OmapRemove(key string) error
	// GetXattr returns an xattr, or ErrNotFound.
	GetXattr(name string) ([]byte, error)
	// GetXattrs returns every xattr (cls_cxx_getxattrs).
	GetXattrs() (map[string][]byte, error)
	// SetXattr sets an xattr.
	SetXattr(name string, value []byte) error
}

// Method is one object-class method.
type Method struct {
	// Write marks methods that change the object; they may only be called
	// from a WriteOp.
	Write bool
	// Call runs the method. An error carrying a syscall.Errno is returned to
	// the caller as that errno, as a negative return code is in Ceph.
	Call func(ctx MethodContext, in []byte) (out []byte, err error)
}

// Class is a named set of methods ("journal", "lock", "rbd").
type Class map[string]Method
