package clslock

import (
	"bytes"
	"context"
	"maps"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// memObject is an in-memory object: a test double for the pure-logic tests
// of the class methods.
type memObject struct {
	exists bool
	data   []byte
	xattrs map[string][]byte
}

func (o *memObject) clone() *memObject {
	c := *o
	c.data = bytes.Clone(o.data)
	c.xattrs = maps.Clone(o.xattrs)
	if c.xattrs == nil {
		c.xattrs = map[string][]byte{}
	}
	return &c
}

// memCtx is the objstore.MethodContext of one call on a memObject, with
// GetXattrs for list_locks. Like objstore/local's, it refuses changes from
// a read-only method.
type memCtx struct {
	o      *memObject
	caller objstore.ClientInfo
	write  bool
}

var _ objstore.MethodContext = (*memCtx)(nil)

func (c *memCtx) Caller() objstore.ClientInfo { return c.caller }

func (c *memCtx) Stat() (uint64, error) {
	if !c.o.exists {
		return 0, objstore.ErrNotFound
	}
	return uint64(len(c.o.data)), nil
}

func (c *memCtx) Create(exclusive bool) error {
	if !c.write {
		return objstore.ErrPerm
	}
	if c.o.exists && exclusive {
		return objstore.ErrExists
	}
	c.o.exists = true
	return nil
}

func (c *memCtx) Remove() error {
	if !c.write {
		return objstore.ErrPerm
	}
	if !c.o.exists {
		return objstore.ErrNotFound
	}
	*c.o = memObject{xattrs: map[string][]byte{}}
	return nil
}

func (c *memCtx) Read(off, length uint64) ([]byte, error) {
	if !c.o.exists {
		return nil, objstore.ErrNotFound
	}
	if off >= uint64(len(c.o.data)) {
		return nil, nil
	}
	end := uint64(len(c.o.data))
	if length != 0 && off+length < end {
		end = off + length
	}
	return bytes.Clone(c.o.data[off:end]), nil
}

func (c *memCtx) Write(off uint64, data []byte) error { return objstore.ErrNotSupp }
func (c *memCtx) WriteFull(data []byte) error         { return objstore.ErrNotSupp }

func (c *memCtx) OmapGet(string) ([]byte, error) { return nil, objstore.ErrNotFound }

func (c *memCtx) OmapList(string, string, int) (objstore.OmapPage, error) {
	return objstore.OmapPage{}, nil
}

func (c *memCtx) OmapSet(map[string][]byte) error { return objstore.ErrNotSupp }
func (c *memCtx) OmapRemove(string) error         { return objstore.ErrNotSupp }

func (c *memCtx) GetXattr(name string) ([]byte, error) {
	v, ok := c.o.xattrs[name]
	if !c.o.exists || !ok {
		return nil, objstore.ErrNotFound
	}
	return bytes.Clone(v), nil
}

func (c *memCtx) SetXattr(name string, value []byte) error {
	if !c.write {
		return objstore.ErrPerm
	}
	c.o.exists = true
	c.o.xattrs[name] = bytes.Clone(value)
	return nil
}

func (c *memCtx) GetXattrs() (map[string][]byte, error) {
	if !c.o.exists {
		return nil, objstore.ErrNotFound
	}
	return maps.Clone(c.o.xattrs), nil
}

// memCluster holds objects and runs the class with a settable clock.
type memCluster struct {
	objects map[string]*memObject
	now     time.Time
	class   objstore.Class
}

func newMemCluster() *memCluster {
	c := &memCluster{objects: map[string]*memObject{}, now: time.Unix(1_700_000_000, 0)}
	c.class = ClassWithClock(func() time.Time { return c.now })
	return c
}

func (c *memCluster) object(oid string) *memObject {
	if o, ok := c.objects[oid]; ok {
		return o.clone()
	}
	return &memObject{xattrs: map[string][]byte{}}
}

// client returns a handle of client id with address addr: the Reader and
// the Operate the client calls are tested with.
func (c *memCluster) client(id uint64, addr string) *memClient {
	return &memClient{c: c, info: objstore.ClientInfo{ID: id, Addr: addr}}
}

type memClient struct {
	c    *memCluster
	info objstore.ClientInfo
}

// call runs one method as the OSD (and objstore/local) do: a read-only
// method on a missing object is ENOENT without running, a writing method in
// a read is EINVAL.
func (m *memClient) call(o *memObject, s objstore.Step, write bool) ([]byte, error) {
	if s.Class != className {
		return nil, objstore.ErrNotSupp
	}
	meth, ok := m.c.class[s.Method]
	if !ok {
		return nil, objstore.ErrNotSupp
	}
	if meth.Write && !write {
		return nil, objstore.ErrInvalid
	}
	if !meth.Write && !o.exists {
		return nil, objstore.ErrNotFound
	}
	return meth.Call(&memCtx{o: o, caller: m.info, write: meth.Write}, s.Data)
}

func (m *memClient) Operate(_ context.Context, oid string, op *objstore.WriteOp) error {
	o := m.c.object(oid)
	for _, s := range op.Steps() {
		var err error
		switch s.Kind {
		case objstore.StepExec:
			_, err = m.call(o, s, true)
		case objstore.StepWriteFull:
			o.exists, o.data = true, bytes.Clone(s.Data)
		case objstore.StepSetXattr:
			o.exists, o.xattrs[s.Name] = true, bytes.Clone(s.Data)
		default:
			err = objstore.ErrNotSupp
		}
		if err != nil {
			return &objstore.OpError{Op: "operate", OID: oid, Err: err}
		}
	}
	m.c.objects[oid] = o
	return nil
}

func (m *memClient) Read(_ context.Context, oid string, op *objstore.ReadOp) error {
	o := m.c.object(oid)
	for _, s := range op.Steps() {
		if s.Kind != objstore.StepExec {
			return objstore.ErrNotSupp
		}
		out, err := m.call(o, *s, false)
		if err != nil {
			return &objstore.OpError{Op: "exec " + s.Class + "." + s.Method, OID: oid, Err: err}
		}
		s.Result = out
	}
	return nil
}
