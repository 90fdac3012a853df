package clsjournal

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// memObject is an in-memory object and the objstore.MethodContext over it:
// a test double for the pure-logic tests of the class methods.
type memObject struct {
	exists bool
	data   []byte
	omap   map[string][]byte
	xattrs map[string][]byte

	omapWrites int // OmapSet and OmapRemove calls, to see what a method wrote
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
	o.omapWrites++
	for k, v := range kv {
		o.omap[k] = bytes.Clone(v)
	}
	return nil
}

func (o *memObject) OmapRemove(key string) error {
	o.omapWrites++
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

// memPool runs compound operations against memObjects with the journal
// class, applying a write operation only if every step succeeds. It is the
// Reader the client calls are tested with.
type memPool struct {
	objects map[string]*memObject
	class   objstore.Class
}

func newMemPool() *memPool {
	return &memPool{objects: map[string]*memObject{}, class: Class()}
}

func (p *memPool) object(oid string) *memObject {
	if o, ok := p.objects[oid]; ok {
		return o
	}
	return newMemObject()
}

func (p *memPool) call(o *memObject, s objstore.Step, write bool) ([]byte, error) {
	if s.Class != className {
		return nil, objstore.ErrNotSupp
	}
	m, ok := p.class[s.Method]
	if !ok {
		return nil, objstore.ErrNotSupp
	}
	if m.Write && !write {
		return nil, objstore.ErrPerm
	}
	return m.Call(o, s.Data)
}

func (p *memPool) Operate(_ context.Context, oid string, op *objstore.WriteOp) error {
	o := p.object(oid).clone()
	for _, s := range op.Steps() {
		var err error
		switch s.Kind {
		case objstore.StepExec:
			_, err = p.call(o, s, true)
		case objstore.StepAppend:
			err = o.Write(uint64(len(o.data)), s.Data)
		case objstore.StepWrite:
			err = o.Write(s.Off, s.Data)
		case objstore.StepCreate:
			err = o.Create(s.Exclusive)
		default:
			err = objstore.ErrNotSupp
		}
		if err != nil {
			return &objstore.OpError{Op: "operate", OID: oid, Err: err}
		}
	}
	p.objects[oid] = o
	return nil
}

func (p *memPool) Read(_ context.Context, oid string, op *objstore.ReadOp) error {
	o := p.object(oid).clone()
	for _, s := range op.Steps() {
		switch s.Kind {
		case objstore.StepExec:
			out, err := p.call(o, *s, false)
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
			return objstore.ErrNotSupp
		}
	}
	return nil
}
