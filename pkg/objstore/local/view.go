package local

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// objState is an object as a transaction sees it: the on-disk state plus the
// data mutations made since (by earlier operations of the same batch and by
// the running operation).
type objState struct {
	paths  objPaths
	exists bool
	size   uint64
	mtime  int64
	meta   *objMeta // nil: not loaded from disk yet
	muts   []mut    // data mutations on top of the disk content, in order
	fd     int      // the data file open for reading, or -1
}

// loadState reads an object's existence, size and mtime from disk.
func loadState(paths objPaths) (*objState, error) {
	st := &objState{paths: paths, fd: -1}
	var s unix.Stat_t
	err := unix.Stat(paths.data, &s)
	if errors.Is(err, unix.ENOENT) {
		st.meta = &objMeta{}
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	st.exists = true
	st.size = uint64(s.Size)
	st.mtime = s.Mtim.Nano()
	return st, nil
}

// openState is loadState keeping the data file open for reading (close
// it with closeFile).
func openState(paths objPaths) (*objState, error) {
	st := &objState{paths: paths, fd: -1}
	fd, err := openData(paths.data, unix.O_RDONLY)
	if errors.Is(err, unix.ENOENT) {
		st.meta = &objMeta{}
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	var s unix.Stat_t
	if err := unix.Fstat(fd, &s); err != nil {
		unix.Close(fd)
		return nil, err
	}
	st.fd = fd
	st.exists = true
	st.size = uint64(s.Size)
	st.mtime = s.Mtim.Nano()
	return st, nil
}

func (st *objState) closeFile() {
	if st.fd >= 0 {
		unix.Close(st.fd)
		st.fd = -1
	}
}

// branch returns a copy that an operation can change without affecting st.
func (st *objState) branch() *objState {
	n := *st
	n.muts = st.muts[:len(st.muts):len(st.muts)]
	return &n
}

func (st *objState) loadMeta() (*objMeta, error) {
	if st.meta != nil {
		return st.meta, nil
	}
	b, err := os.ReadFile(st.paths.meta)
	if errors.Is(err, fs.ErrNotExist) {
		st.meta = &objMeta{}
		return st.meta, nil
	}
	if err != nil {
		return nil, err
	}
	m, err := decodeMeta(b)
	if err != nil {
		return nil, fmt.Errorf("%w: meta of %s: %v", syscall.EIO, st.paths.data, err)
	}
	st.meta = m
	return m, nil
}

// read returns up to length bytes at off (length 0: to the end).
func (st *objState) read(off, length uint64) ([]byte, error) {
	if off >= st.size {
		return []byte{}, nil
	}
	end := st.size
	if length != 0 && length < end-off {
		end = off + length
	}
	buf := make([]byte, end-off)
	start := 0
	for i, m := range st.muts {
		if m.kind == mutRemove || m.kind == mutCreateFresh {
			start = i + 1
		}
	}
	if start == 0 {
		fd := st.fd
		if fd < 0 {
			var err error
			fd, err = openData(st.paths.data, unix.O_RDONLY)
			if errors.Is(err, unix.ENOENT) {
				fd = -1
			} else if err != nil {
				return nil, err
			} else {
				defer unix.Close(fd)
			}
		}
		if fd >= 0 {
			if err := preadFull(fd, buf, int64(off)); err != nil {
				return nil, err
			}
		}
	}
	for _, m := range st.muts[start:] {
		switch m.kind {
		case mutWrite:
			overlayCopy(buf, off, m.a, m.data)
		case mutSetSize:
			if m.b < m.a {
				zeroFrom(buf, off, m.b, ^uint64(0))
			}
		case mutZero:
			zeroFrom(buf, off, m.a, m.a+m.b)
		}
	}
	return buf, nil
}

// overlayCopy copies data (at object offset at) into buf (at object offset off).
func overlayCopy(buf []byte, off, at uint64, data []byte) {
	end := off + uint64(len(buf))
	dend := at + uint64(len(data))
	lo, hi := max(off, at), min(end, dend)
	if lo >= hi {
		return
	}
	copy(buf[lo-off:hi-off], data[lo-at:hi-at])
}

// zeroFrom zeroes object range [from, to) within buf (at object offset off).
func zeroFrom(buf []byte, off, from, to uint64) {
	end := off + uint64(len(buf))
	lo, hi := max(off, from), min(end, to)
	if lo >= hi {
		return
	}
	clear(buf[lo-off : hi-off])
}

// opCtx runs the steps of one operation on an object.
type opCtx struct {
	c           *Cluster
	oid         string
	st          *objState
	write       bool // may change the object
	caller      objstore.ClientInfo
	metaOwned   bool // st.meta is private to this operation
	metaChanged bool // the meta must be written out
	touched     bool // the object was changed (mtime moves)
}

func (o *opCtx) mutableMeta() (*objMeta, error) {
	m, err := o.st.loadMeta()
	if err != nil {
		return nil, err
	}
	if !o.metaOwned {
		m = m.clone()
		o.st.meta = m
		o.metaOwned = true
	}
	o.metaChanged = true
	o.touched = true
	return m, nil
}

func (o *opCtx) addMut(m mut) {
	o.st.muts = append(o.st.muts, m)
	o.touched = true
}

func (o *opCtx) ensureExists() {
	if o.st.exists {
		return
	}
	o.addMut(mut{kind: mutCreateFresh})
	o.reset(true)
}

// reset makes the object exist or not, with no data and empty metadata
// of this operation's own (the mutation recorded by the caller says so).
func (o *opCtx) reset(exists bool) {
	o.st.exists = exists
	o.st.size = 0
	o.st.meta = &objMeta{}
	o.metaOwned = true
	o.metaChanged = false
}

func (o *opCtx) create(exclusive bool) error {
	if o.st.exists {
		if exclusive {
			return syscall.EEXIST
		}
		return nil
	}
	o.ensureExists()
	return nil
}

func (o *opCtx) remove() error {
	if !o.st.exists {
		return syscall.ENOENT
	}
	o.addMut(mut{kind: mutRemove})
	o.reset(false)
	return nil
}

// checkExtent fails with EFBIG, as Ceph does, for an extent reaching past
// the maximum object size.
func (o *opCtx) checkExtent(off, length uint64) error {
	if end := off + length; end < off || end > o.c.opts.MaxObjectSize {
		return syscall.EFBIG
	}
	return nil
}

func (o *opCtx) writeAt(off uint64, data []byte) error {
	if err := o.checkExtent(off, uint64(len(data))); err != nil {
		return err
	}
	o.ensureExists()
	if off > o.st.size {
		o.addMut(mut{kind: mutSetSize, a: o.st.size, b: off})
		o.st.size = off
	}
	if len(data) > 0 {
		o.addMut(mut{kind: mutWrite, a: off, data: data})
		o.st.size = max(o.st.size, off+uint64(len(data)))
	}
	o.touched = true
	return nil
}

// writev writes the concatenation of bufs at off: a mutation per piece,
// which the record copies as it would one buffer of them all.
func (o *opCtx) writev(off uint64, bufs [][]byte) error {
	n := uint64(0)
	for _, b := range bufs {
		n += uint64(len(b))
	}
	if err := o.checkExtent(off, n); err != nil {
		return err
	}
	if n == 0 {
		return o.writeAt(off, nil)
	}
	for _, b := range bufs {
		if err := o.writeAt(off, b); err != nil {
			return err
		}
		off += uint64(len(b))
	}
	return nil
}

func (o *opCtx) writeFull(data []byte) error {
	if err := o.checkExtent(0, uint64(len(data))); err != nil {
		return err
	}
	o.ensureExists()
	if len(data) > 0 {
		o.addMut(mut{kind: mutWrite, a: 0, data: data})
	}
	n := uint64(len(data))
	if o.st.size > n {
		o.addMut(mut{kind: mutSetSize, a: o.st.size, b: n})
	}
	o.st.size = n
	o.touched = true
	return nil
}

func (o *opCtx) truncate(size uint64) error {
	if !o.st.exists {
		return nil // Ceph: truncating a missing object is a no-op
	}
	if err := o.checkExtent(size, 0); err != nil {
		return err
	}
	if size != o.st.size {
		o.addMut(mut{kind: mutSetSize, a: o.st.size, b: size})
		o.st.size = size
	}
	o.touched = true
	return nil
}

func (o *opCtx) zero(off, length uint64) error {
	if err := o.checkExtent(off, length); err != nil {
		return err
	}
	if !o.st.exists {
		return nil
	}
	o.touched = true
	if off >= o.st.size || length == 0 {
		return nil
	}
	end := min(o.st.size, off+length)
	o.addMut(mut{kind: mutZero, a: off, b: end - off})
	return nil
}

// errno wraps a step's failure as Ceph reports it.
func stepErr(op, oid string, err error) error {
	if err == nil {
		return nil
	}
	var oe *objstore.OpError
	if errors.As(err, &oe) {
		return err
	}
	if objstore.Errno(err) == 0 && !errors.Is(err, objstore.ErrMismatch) {
		err = fmt.Errorf("%w: %v", syscall.EIO, err)
	}
	return &objstore.OpError{Op: op, OID: oid, Err: err}
}

// changeMeta applies change to the object's omap and xattrs (made
// mutable first): a step that sets creates a missing object (create), one
// that removes fails with ENOENT on it.
func (o *opCtx) changeMeta(create bool, change func(m *objMeta)) error {
	if create {
		o.ensureExists()
	} else if !o.st.exists {
		return syscall.ENOENT
	}
	m, err := o.mutableMeta()
	if err != nil {
		return err
	}
	change(m)
	return nil
}

// writeStep runs one step of a WriteOp.
func (o *opCtx) writeStep(s *objstore.Step) error {
	switch s.Kind {
	case objstore.StepCreate:
		return o.create(s.Exclusive)
	case objstore.StepRemove:
		return o.remove()
	case objstore.StepWrite:
		return o.writeAt(s.Off, s.Data)
	case objstore.StepWriteFull:
		return o.writeFull(s.Data)
	case objstore.StepAppend:
		o.ensureExists()
		return o.writeAt(o.st.size, s.Data)
	case objstore.StepWritev:
		return o.writev(s.Off, s.Bufs)
	case objstore.StepAppendv:
		o.ensureExists()
		return o.writev(o.st.size, s.Bufs)
	case objstore.StepTruncate:
		return o.truncate(s.Off)
	case objstore.StepZero:
		return o.zero(s.Off, s.Len)
	case objstore.StepSetOmap:
		return o.changeMeta(true, func(m *objMeta) {
			keys := make([]string, 0, len(s.Omap))
			for k := range s.Omap {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				m.set(k, s.Omap[k])
			}
		})
	case objstore.StepRmOmapKeys:
		return o.changeMeta(false, func(m *objMeta) {
			for _, k := range s.Keys {
				m.remove(k)
			}
		})
	case objstore.StepClearOmap:
		return o.changeMeta(false, func(m *objMeta) { m.omap = nil })
	case objstore.StepSetXattr:
		return o.changeMeta(true, func(m *objMeta) {
			if m.xattrs == nil {
				m.xattrs = map[string][]byte{}
			}
			m.xattrs[s.Name] = append([]byte{}, s.Data...)
		})
	case objstore.StepRmXattr:
		return o.changeMeta(false, func(m *objMeta) { delete(m.xattrs, s.Name) })
	case objstore.StepAssertExists:
		if !o.st.exists {
			return syscall.ENOENT
		}
		return nil
	case objstore.StepCmpExt:
		return o.cmpExt(s.Off, s.Data)
	case objstore.StepExec:
		_, err := o.exec(s.Class, s.Method, s.Data, true)
		return err
	default:
		return syscall.EINVAL
	}
}

// cmpExt is RADOS' cmpext: the bytes at off must equal want, bytes past the
// end of the object comparing as zeroes. A missing object fails with
// ENOENT, as on Ceph.
func (o *opCtx) cmpExt(off uint64, want []byte) error {
	if !o.st.exists {
		return syscall.ENOENT
	}
	if len(want) == 0 {
		return nil
	}
	have, err := o.st.read(off, uint64(len(want)))
	if err != nil {
		return err
	}
	for i, b := range want {
		var h byte
		if i < len(have) {
			h = have[i]
		}
		if h != b {
			return objstore.ErrMismatch
		}
	}
	return nil
}

// readStep runs one step of a ReadOp and stores its result.
func (o *opCtx) readStep(s *objstore.Step) error {
	switch s.Kind {
	case objstore.StepRead:
		b, err := o.st.read(s.Off, s.Len)
		if err != nil {
			return err
		}
		s.Result = b
	case objstore.StepStat:
		s.Result = objstore.Stat{Size: o.st.size, MTime: o.st.mtime}
	case objstore.StepGetOmapVals:
		m, err := o.st.loadMeta()
		if err != nil {
			return err
		}
		s.Result = m.list(s.StartAfter, s.Prefix, s.MaxReturn)
	case objstore.StepGetOmapValsByKeys:
		m, err := o.st.loadMeta()
		if err != nil {
			return err
		}
		keys := append([]string{}, s.Keys...)
		sort.Strings(keys)
		var page objstore.OmapPage
		for i, k := range keys {
			if i > 0 && keys[i-1] == k {
				continue
			}
			if v, ok := m.get(k); ok {
				page.Entries = append(page.Entries, objstore.KV{Key: k, Value: append([]byte{}, v...)})
			}
		}
		s.Result = page
	case objstore.StepGetXattr:
		m, err := o.st.loadMeta()
		if err != nil {
			return err
		}
		v, ok := m.xattrs[s.Name]
		if !ok {
			return syscall.ENOENT
		}
		s.Result = append([]byte{}, v...)
	case objstore.StepGetXattrs:
		m, err := o.st.loadMeta()
		if err != nil {
			return err
		}
		out := make(map[string][]byte, len(m.xattrs))
		for k, v := range m.xattrs {
			out[k] = append([]byte{}, v...)
		}
		s.Result = out
	case objstore.StepAssertExists:
	case objstore.StepExec:
		out, err := o.exec(s.Class, s.Method, s.Data, false)
		if err != nil {
			return err
		}
		if out == nil {
			out = []byte{}
		}
		s.Result = out
	default:
		return syscall.EINVAL
	}
	return nil
}

// exec calls an object-class method; inWrite tells whether it runs in a WriteOp.
func (o *opCtx) exec(class, method string, in []byte, inWrite bool) (out []byte, err error) {
	cls, ok := o.c.opts.Classes[class]
	if class == snapClassName {
		cls, ok = snapClass, true
	}
	if !ok {
		return nil, syscall.EOPNOTSUPP
	}
	m, ok := cls[method]
	if !ok || m.Call == nil {
		return nil, syscall.EOPNOTSUPP
	}
	if m.Write && !inWrite {
		return nil, syscall.EINVAL
	}
	if !m.Write && !o.st.exists {
		return nil, syscall.ENOENT
	}
	mc := &methodCtx{o: o, write: m.Write}
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, fmt.Errorf("%w: class method %s.%s panicked: %v", syscall.EIO, class, method, r)
		}
	}()
	return m.Call(mc, in)
}

// methodCtx is the objstore.MethodContext of one method call.
type methodCtx struct {
	o     *opCtx
	write bool
}

var _ objstore.MethodContext = (*methodCtx)(nil)

func (m *methodCtx) Caller() objstore.ClientInfo { return m.o.caller }

func (m *methodCtx) Stat() (uint64, error) {
	if !m.o.st.exists {
		return 0, syscall.ENOENT
	}
	return m.o.st.size, nil
}

func (m *methodCtx) Create(exclusive bool) error {
	if !m.write {
		return syscall.EPERM
	}
	return m.o.create(exclusive)
}

func (m *methodCtx) Remove() error {
	if !m.write {
		return syscall.EPERM
	}
	return m.o.remove()
}

func (m *methodCtx) Read(off, length uint64) ([]byte, error) {
	if !m.o.st.exists {
		return nil, syscall.ENOENT
	}
	return m.o.st.read(off, length)
}

func (m *methodCtx) Write(off uint64, data []byte) error {
	if !m.write {
		return syscall.EPERM
	}
	return m.o.writeAt(off, append([]byte{}, data...))
}

func (m *methodCtx) WriteFull(data []byte) error {
	if !m.write {
		return syscall.EPERM
	}
	return m.o.writeFull(append([]byte{}, data...))
}

// existingMeta returns the object's omap and xattrs for a method to read:
// ENOENT if the object does not exist.
func (m *methodCtx) existingMeta() (*objMeta, error) {
	if !m.o.st.exists {
		return nil, syscall.ENOENT
	}
	return m.o.st.loadMeta()
}

func (m *methodCtx) OmapGet(key string) ([]byte, error) {
	meta, err := m.existingMeta()
	if err != nil {
		return nil, err
	}
	v, ok := meta.get(key)
	if !ok {
		return nil, syscall.ENOENT
	}
	return append([]byte{}, v...), nil
}

func (m *methodCtx) OmapList(startAfter, prefix string, max int) (objstore.OmapPage, error) {
	meta, err := m.existingMeta()
	if err != nil {
		return objstore.OmapPage{}, err
	}
	return meta.list(startAfter, prefix, max), nil
}

func (m *methodCtx) OmapSet(kv map[string][]byte) error {
	if !m.write {
		return syscall.EPERM
	}
	return m.o.writeStep(&objstore.Step{Kind: objstore.StepSetOmap, Omap: kv})
}

func (m *methodCtx) OmapRemove(key string) error {
	if !m.write {
		return syscall.EPERM
	}
	return m.o.writeStep(&objstore.Step{Kind: objstore.StepRmOmapKeys, Keys: []string{key}})
}

func (m *methodCtx) GetXattr(name string) ([]byte, error) {
	meta, err := m.existingMeta()
	if err != nil {
		return nil, err
	}
	v, ok := meta.xattrs[name]
	if !ok {
		return nil, syscall.ENOENT
	}
	return append([]byte{}, v...), nil
}

func (m *methodCtx) GetXattrs() (map[string][]byte, error) {
	meta, err := m.existingMeta()
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(meta.xattrs))
	for k, v := range meta.xattrs {
		out[k] = append([]byte{}, v...)
	}
	return out, nil
}

func (m *methodCtx) SetXattr(name string, value []byte) error {
	if !m.write {
		return syscall.EPERM
	}
	return m.o.writeStep(&objstore.Step{Kind: objstore.StepSetXattr, Name: name, Data: value})
}
