// Package classtest is an in-memory test double for object-class methods:
// an Object that is the objstore.MethodContext of a call on it, and a Pool
// that runs compound operations against Objects with a set of classes, for
// testing the client calls against the server methods end to end.
package classtest

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Object is an in-memory object and the objstore.MethodContext over it.
// The zero value is a missing object.
type Object struct {
	Exists bool
	Data   []byte
	Omap   map[string][]byte
	Xattrs map[string][]byte

	// Client is what Caller returns.
	Client objstore.ClientInfo
	// ReadOnly makes every change fail with objstore.ErrPerm, as in a
	// read-only method (objstore/local refuses them so).
	ReadOnly bool
	// OmapWrites counts OmapSet and OmapRemove calls, to see what a
	// method wrote.
	OmapWrites int
}

var _ objstore.MethodContext = (*Object)(nil)

// NewObject returns a missing object with empty omap and xattrs.
func NewObject() *Object {
	return &Object{Omap: map[string][]byte{}, Xattrs: map[string][]byte{}}
}

// Clone returns a deep copy of o (nil maps become empty ones).
func (o *Object) Clone() *Object {
	c := *o
	c.Data = bytes.Clone(o.Data)
	c.Omap = cloneMap(o.Omap)
	c.Xattrs = cloneMap(o.Xattrs)
	return &c
}

func cloneMap(m map[string][]byte) map[string][]byte {
	c := make(map[string][]byte, len(m))
	for k, v := range m {
		c[k] = bytes.Clone(v)
	}
	return c
}

func (o *Object) Caller() objstore.ClientInfo { return o.Client }

func (o *Object) Stat() (uint64, error) {
	if !o.Exists {
		return 0, objstore.ErrNotFound
	}
	return uint64(len(o.Data)), nil
}

func (o *Object) Create(exclusive bool) error {
	if o.ReadOnly {
		return objstore.ErrPerm
	}
	if o.Exists && exclusive {
		return objstore.ErrExists
	}
	o.Exists = true
	return nil
}

// Remove deletes the object: what is left is a missing object that keeps
// the calling context (Client, ReadOnly, OmapWrites).
func (o *Object) Remove() error {
	if o.ReadOnly {
		return objstore.ErrPerm
	}
	if !o.Exists {
		return objstore.ErrNotFound
	}
	o.Exists, o.Data, o.Omap, o.Xattrs = false, nil, map[string][]byte{}, map[string][]byte{}
	return nil
}

func (o *Object) Read(off, length uint64) ([]byte, error) {
	if !o.Exists {
		return nil, objstore.ErrNotFound
	}
	if off >= uint64(len(o.Data)) {
		return nil, nil
	}
	end := uint64(len(o.Data))
	if length != 0 && off+length < end {
		end = off + length
	}
	return bytes.Clone(o.Data[off:end]), nil
}

func (o *Object) Write(off uint64, data []byte) error {
	if o.ReadOnly {
		return objstore.ErrPerm
	}
	o.Exists = true
	if need := off + uint64(len(data)); need > uint64(len(o.Data)) {
		o.Data = append(o.Data, make([]byte, need-uint64(len(o.Data)))...)
	}
	copy(o.Data[off:], data)
	return nil
}

func (o *Object) WriteFull(data []byte) error {
	if o.ReadOnly {
		return objstore.ErrPerm
	}
	o.Exists = true
	o.Data = bytes.Clone(data)
	return nil
}

func (o *Object) OmapGet(key string) ([]byte, error) {
	if !o.Exists {
		return nil, objstore.ErrNotFound
	}
	v, ok := o.Omap[key]
	if !ok {
		return nil, fmt.Errorf("omap key %q: %w", key, objstore.ErrNotFound)
	}
	return bytes.Clone(v), nil
}

// OmapList has the OSD's semantics: keys after startAfter with the prefix,
// in order, up to max; More if another matching key follows.
func (o *Object) OmapList(startAfter, prefix string, max int) (objstore.OmapPage, error) {
	if !o.Exists {
		return objstore.OmapPage{}, objstore.ErrNotFound
	}
	keys := slices.Sorted(maps.Keys(o.Omap))
	i := sort.SearchStrings(keys, startAfter)
	if i < len(keys) && keys[i] == startAfter {
		i++
	}
	var page objstore.OmapPage
	for ; i < len(keys); i++ {
		if !strings.HasPrefix(keys[i], prefix) {
			if keys[i] > prefix {
				break
			}
			continue
		}
		if len(page.Entries) >= max {
			page.More = true
			break
		}
		page.Entries = append(page.Entries, objstore.KV{Key: keys[i], Value: bytes.Clone(o.Omap[keys[i]])})
	}
	return page, nil
}

func (o *Object) OmapSet(kv map[string][]byte) error {
	o.OmapWrites++
	if o.ReadOnly {
		return objstore.ErrPerm
	}
	o.Exists = true
	if o.Omap == nil {
		o.Omap = map[string][]byte{}
	}
	for k, v := range kv {
		o.Omap[k] = bytes.Clone(v)
	}
	return nil
}

func (o *Object) OmapRemove(key string) error {
	o.OmapWrites++
	if o.ReadOnly {
		return objstore.ErrPerm
	}
	delete(o.Omap, key)
	return nil
}

func (o *Object) GetXattr(name string) ([]byte, error) {
	v, ok := o.Xattrs[name]
	if !o.Exists || !ok {
		return nil, objstore.ErrNotFound
	}
	return bytes.Clone(v), nil
}

func (o *Object) GetXattrs() (map[string][]byte, error) {
	if !o.Exists {
		return nil, objstore.ErrNotFound
	}
	return cloneMap(o.Xattrs), nil
}

func (o *Object) SetXattr(name string, value []byte) error {
	if o.ReadOnly {
		return objstore.ErrPerm
	}
	o.Exists = true
	if o.Xattrs == nil {
		o.Xattrs = map[string][]byte{}
	}
	o.Xattrs[name] = bytes.Clone(value)
	return nil
}

// Call runs method m on o as a call from caller: while it runs, o is
// ReadOnly unless m is a write method.
func Call(m objstore.Method, o *Object, caller objstore.ClientInfo, in []byte) ([]byte, error) {
	o.Client, o.ReadOnly = caller, !m.Write
	defer func() { o.ReadOnly = false }()
	return m.Call(o, in)
}

// Pool runs WriteOps and ReadOps against Objects with a set of classes:
// enough to check client calls against the server methods end to end.
// A WriteOp applies to a copy of the object that replaces it only if every
// step succeeds (a missing object is then dropped from Objects). WriteOps
// may hold Create, Remove, Write, WriteFull, Append, SetXattr and Exec
// steps; ReadOps Exec and Stat steps; others fail with ErrNotSupp.
//
// Pools made with As share the objects and the lock of their origin.
type Pool struct {
	// Objects are the pool's objects by name; tests may read and change
	// them between operations.
	Objects map[string]*Object
	// Classes are the classes Exec steps call, by name.
	Classes map[string]objstore.Class
	// Caller is the client the methods see.
	Caller objstore.ClientInfo
	// OSD makes Exec steps behave as on an OSD (and objstore/local): a
	// read-only method on a missing object fails with ErrNotFound without
	// running and a write method in a read with ErrInvalid. Without it
	// read-only methods run on missing objects (so that a test sees what
	// they do there) and a write method in a read fails with ErrPerm.
	OSD bool

	mu *sync.Mutex
}

// NewPool returns an empty pool with the classes.
func NewPool(classes map[string]objstore.Class) *Pool {
	return &Pool{Objects: map[string]*Object{}, Classes: classes, mu: new(sync.Mutex)}
}

// As returns a handle on the same objects whose operations come from
// caller.
func (p *Pool) As(caller objstore.ClientInfo) *Pool {
	q := *p
	q.Caller = caller
	return &q
}

// Object returns a copy of object oid, or a new missing object.
func (p *Pool) Object(oid string) *Object {
	if o, ok := p.Objects[oid]; ok {
		return o.Clone()
	}
	return NewObject()
}

// exec runs the method of an Exec step on o as a call from the pool's
// caller; write tells whether the step is part of a WriteOp.
func (p *Pool) exec(o *Object, s objstore.Step, write bool) ([]byte, error) {
	class, ok := p.Classes[s.Class]
	if !ok {
		return nil, fmt.Errorf("class %s: %w", s.Class, objstore.ErrNotSupp)
	}
	m, ok := class[s.Method]
	if !ok {
		return nil, fmt.Errorf("method %s.%s: %w", s.Class, s.Method, objstore.ErrNotSupp)
	}
	if m.Write && !write {
		err := objstore.ErrPerm
		if p.OSD {
			err = objstore.ErrInvalid
		}
		return nil, fmt.Errorf("write method %s.%s in a read: %w", s.Class, s.Method, err)
	}
	if p.OSD && !m.Write && !o.Exists {
		return nil, objstore.ErrNotFound
	}
	return Call(m, o, p.Caller, s.Data)
}

// Operate applies op to object oid if every step succeeds.
func (p *Pool) Operate(_ context.Context, oid string, op *objstore.WriteOp) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	o := p.Object(oid)
	for _, s := range op.Steps() {
		var err error
		switch s.Kind {
		case objstore.StepCreate:
			err = o.Create(s.Exclusive)
		case objstore.StepRemove:
			err = o.Remove()
		case objstore.StepWrite:
			err = o.Write(s.Off, s.Data)
		case objstore.StepWriteFull:
			err = o.WriteFull(s.Data)
		case objstore.StepAppend:
			err = o.Write(uint64(len(o.Data)), s.Data)
		case objstore.StepWritev:
			err = o.Write(s.Off, bytes.Join(s.Bufs, nil))
		case objstore.StepAppendv:
			err = o.Write(uint64(len(o.Data)), bytes.Join(s.Bufs, nil))
		case objstore.StepSetXattr:
			err = o.SetXattr(s.Name, s.Data)
		case objstore.StepExec:
			_, err = p.exec(o, s, true)
		default:
			err = fmt.Errorf("step %d: %w", s.Kind, objstore.ErrNotSupp)
		}
		if err != nil {
			return &objstore.OpError{Op: "operate", OID: oid, Err: err}
		}
	}
	if o.Exists {
		p.Objects[oid] = o
	} else {
		delete(p.Objects, oid)
	}
	return nil
}

// Read runs op against object oid and fills its results.
func (p *Pool) Read(_ context.Context, oid string, op *objstore.ReadOp) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	o := p.Object(oid)
	for _, s := range op.Steps() {
		switch s.Kind {
		case objstore.StepExec:
			out, err := p.exec(o, *s, false)
			if err != nil {
				return &objstore.OpError{Op: "exec " + s.Class + "." + s.Method, OID: oid, Err: err}
			}
			s.Result = out
		case objstore.StepStat:
			size, err := o.Stat()
			if err != nil {
				return &objstore.OpError{Op: "stat", OID: oid, Err: err}
			}
			s.Result = objstore.Stat{Size: size}
		default:
			return fmt.Errorf("step %d: %w", s.Kind, objstore.ErrNotSupp)
		}
	}
	return nil
}
