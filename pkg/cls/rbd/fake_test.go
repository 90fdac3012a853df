package clsrbd

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

// memObject is an in-memory object and the objstore.MethodContext over it:
// a test double for the pure-logic tests of the class methods.
type memObject struct {
	exists bool
	data   []byte
	omap   map[string][]byte
	xattrs map[string][]byte
}

func newMemObject() *memObject {
	return &memObject{omap: map[string][]byte{}, xattrs: map[string][]byte{}}
}

func (o *memObject) clone() *memObject {
	c := *o
	c.data = bytes.Clone(o.data)
	c.omap = maps.Clone(o.omap)
	c.xattrs = maps.Clone(o.xattrs)
	return &c
}

func (o *memObject) Caller() objstore.ClientInfo {
	return objstore.ClientInfo{ID: 4100, Addr: "127.0.0.1:0/1"}
}

func (o *memObject) Stat() (uint64, error) {
	if !o.exists {
		return 0, objstore.ErrNotFound
	}
	return uint64(len(o.data)), nil
}

func (o *memObject) Create(exclusive bool) error {
	if o.exists && exclusive {
		return objstore.ErrExists
	}
	o.exists = true
	return nil
}

func (o *memObject) Remove() error {
	if !o.exists {
		return objstore.ErrNotFound
	}
	*o = *newMemObject()
	return nil
}

func (o *memObject) Read(off, length uint64) ([]byte, error) {
	if !o.exists {
		return nil, objstore.ErrNotFound
	}
	if off >= uint64(len(o.data)) {
		return nil, nil
	}
	end := uint64(len(o.data))
	if length != 0 && off+length < end {
		end = off + length
	}
	return bytes.Clone(o.data[off:end]), nil
}

func (o *memObject) Write(off uint64, data []byte) error {
	o.exists = true
	if need := off + uint64(len(data)); need > uint64(len(o.data)) {
		o.data = append(o.data, make([]byte, need-uint64(len(o.data)))...)
	}
	copy(o.data[off:], data)
	return nil
}

func (o *memObject) WriteFull(data []byte) error {
	o.exists = true
	o.data = bytes.Clone(data)
	return nil
}

func (o *memObject) OmapGet(key string) ([]byte, error) {
	if !o.exists {
		return nil, objstore.ErrNotFound
	}
	v, ok := o.omap[key]
	if !ok {
		return nil, fmt.Errorf("omap key %q: %w", key, objstore.ErrNotFound)
	}
	return bytes.Clone(v), nil
}

// OmapList has the OSD's semantics: keys after startAfter with the prefix,
// in order, up to max; More if another matching key follows.
func (o *memObject) OmapList(startAfter, prefix string, max int) (objstore.OmapPage, error) {
	if !o.exists {
		return objstore.OmapPage{}, objstore.ErrNotFound
	}
	keys := slices.Sorted(maps.Keys(o.omap))
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
		page.Entries = append(page.Entries, objstore.KV{Key: keys[i], Value: bytes.Clone(o.omap[keys[i]])})
	}
	return page, nil
}

func (o *memObject) OmapSet(kv map[string][]byte) error {
	o.exists = true
	for k, v := range kv {
		o.omap[k] = bytes.Clone(v)
	}
	return nil
}

func (o *memObject) OmapRemove(key string) error {
	delete(o.omap, key)
	return nil
}

func (o *memObject) GetXattr(name string) ([]byte, error) {
	v, ok := o.xattrs[name]
	if !o.exists || !ok {
		return nil, objstore.ErrNotFound
	}
	return bytes.Clone(v), nil
}

func (o *memObject) GetXattrs() (map[string][]byte, error) {
	if !o.exists {
		return nil, objstore.ErrNotFound
	}
	out := make(map[string][]byte, len(o.xattrs))
	for k, v := range o.xattrs {
		out[k] = bytes.Clone(v)
	}
	return out, nil
}

func (o *memObject) SetXattr(name string, value []byte) error {
	o.exists = true
	o.xattrs[name] = bytes.Clone(value)
	return nil
}

// memPool runs WriteOps and ReadOps made of Create, Remove, Write and Exec
// steps against in-memory objects with the "rbd" class: enough to check
// the client calls against the server methods end to end. Each operation
// applies to a copy that replaces the object only if every step succeeds.
type memPool struct {
	mu      sync.Mutex
	objects map[string]*memObject
	class   objstore.Class
}

func newMemPool() *memPool {
	return &memPool{objects: map[string]*memObject{}, class: Class()}
}

func (p *memPool) object(oid string) *memObject {
	if o, ok := p.objects[oid]; ok {
		return o.clone()
	}
	return newMemObject()
}

func (p *memPool) exec(o *memObject, s objstore.Step, write bool) ([]byte, error) {
	if s.Class != className {
		return nil, fmt.Errorf("class %s: %w", s.Class, objstore.ErrNotSupp)
	}
	m, ok := p.class[s.Method]
	if !ok {
		return nil, fmt.Errorf("method %s: %w", s.Method, objstore.ErrNotSupp)
	}
	if m.Write && !write {
		return nil, fmt.Errorf("write method %s in a read: %w", s.Method, objstore.ErrPerm)
	}
	return m.Call(o, s.Data)
}

func (p *memPool) Operate(_ context.Context, oid string, op *objstore.WriteOp) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	o := p.object(oid)
	for _, s := range op.Steps() {
		var err error
		switch s.Kind {
		case objstore.StepCreate:
			err = o.Create(s.Exclusive)
		case objstore.StepRemove:
			err = o.Remove()
		case objstore.StepWrite:
			err = o.Write(s.Off, s.Data)
		case objstore.StepExec:
			_, err = p.exec(o, s, true)
		default:
			err = fmt.Errorf("step %d: %w", s.Kind, objstore.ErrNotSupp)
		}
		if err != nil {
			return &objstore.OpError{Op: "operate", OID: oid, Err: err}
		}
	}
	if o.exists {
		p.objects[oid] = o
	} else {
		delete(p.objects, oid)
	}
	return nil
}

func (p *memPool) Read(_ context.Context, oid string, op *objstore.ReadOp) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	o := p.object(oid)
	for _, s := range op.Steps() {
		if s.Kind != objstore.StepExec {
			return fmt.Errorf("step %d: %w", s.Kind, objstore.ErrNotSupp)
		}
		out, err := p.exec(o, *s, false)
		if err != nil {
			return &objstore.OpError{Op: "exec rbd." + s.Method, OID: oid, Err: err}
		}
		s.Result = out
	}
	return nil
}
