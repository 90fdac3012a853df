//go:build ceph && pacific

package ceph

/*
#include "radosops.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/ceph/go-ceph/rados"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Pool is one pool of a Cluster: an objstore.Pool over a librados I/O
// context. Its methods are safe for concurrent use.
type Pool struct {
	c     *Cluster
	name  string
	id    int64
	ioctx *rados.IOContext
	io    *C.csi_ioctx // the C++ API's view of ioctx
	// syncOps runs single operations (Operate, Read) as blocking calls
	// on their own goroutine instead of through the completion queue
	// (aio); batches and ordered submissions (Submit, OperateBatch) always
	// use aio. Off by default: a blocking call holds a thread and its
	// scheduler slot for the round trip, and a 4K random read on an image
	// cost this process 1.5-2x the CPU (BenchmarkRead4K compares the
	// two). It was the default for a while because taking the lock from a
	// live librbd client (TestLibrbdOwnerHandsOverCeph) failed in about 1
	// of 3 runs with aio: the cause was not aio but a librbd answer that
	// faster requests hit more often (an owner still taking the lock
	// answers 0 without releasing it; pkg/exclusivelock now asks again).
	syncOps bool
}

var _ objstore.Pool = (*Pool)(nil)

func newPool(c *Cluster, name string, ioctx *rados.IOContext) (*Pool, error) {
	io := C.csi_ioctx_new(C.rados_ioctx_t(ioctx.Pointer()))
	if io == nil {
		return nil, syscall.ENOMEM
	}
	return &Pool{c: c, name: name, id: ioctx.GetPoolID(), ioctx: ioctx, io: io}, nil
}

func (p *Pool) destroy() {
	C.csi_ioctx_free(p.io)
	p.ioctx.Destroy()
}

// ID is the pool's id.
func (p *Pool) ID() int64 { return p.id }

// Name is the pool's name.
func (p *Pool) Name() string { return p.name }

// Client identifies the cluster client this pool belongs to.
func (p *Pool) Client() objstore.ClientInfo { return p.c.client }

// Cluster is the client this pool belongs to.
func (p *Pool) Cluster() *Cluster { return p.c }

// IOContext is the go-ceph I/O context of the pool, for librbd calls
// (pkg/librbd). Run blocking calls on it through Cluster().Call.
func (p *Pool) IOContext() *rados.IOContext { return p.ioctx }

func opErr(op, oid string, err error) error {
	if err == nil {
		return nil
	}
	var oe *objstore.OpError
	if errors.As(err, &oe) {
		if oe.OID == "" {
			oe.OID = oid
		}
		return err
	}
	return &objstore.OpError{Op: op, OID: oid, Err: err}
}

// Operate applies op to oid atomically (one librados write operation).
func (p *Pool) Operate(ctx context.Context, oid string, op *objstore.WriteOp) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if op.Empty() {
		return nil
	}
	w, err := buildWriteOp(op)
	if err != nil {
		return opErr("write", oid, err)
	}
	if !p.syncOps {
		a, err := p.submitWrite(w, oid)
		if err != nil {
			return err
		}
		return p.waitWrite(ctx, a, w, oid)
	}
	var opErrno error
	started, cerr := p.c.run(ctx, func() {
		defer w.free()
		opErrno = w.operate(p.io, oid)
	})
	if !started {
		w.free()
	}
	if cerr != nil {
		return opErr(w.name, oid, cerr)
	}
	return opErr(w.name, oid, opErrno)
}

// Read runs op's steps against oid (one librados read operation) and fills
// their results.
func (p *Pool) Read(ctx context.Context, oid string, op *objstore.ReadOp) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(op.Steps()) == 0 {
		return nil
	}
	r, err := buildReadOp(op)
	if err != nil {
		return opErr("read", oid, err)
	}
	if !p.syncOps && r.snap == 0 {
		return p.readAsync(ctx, r, oid)
	}
	var (
		name  string
		rdErr error
	)
	started, cerr := p.c.run(ctx, func() {
		defer r.free()
		name, rdErr = r.operate(p.io, oid)
	})
	if !started {
		r.free()
	}
	if cerr != nil {
		return opErr("read", oid, cerr)
	}
	if rdErr != nil {
		return opErr(name, oid, rdErr)
	}
	r.apply()
	return nil
}

// List returns the names of the pool's objects (default namespace) that
// start with prefix. Ceph lists every object of the pool: the cost grows
// with the pool, not with the answer.
func (p *Pool) List(ctx context.Context, prefix string) ([]string, error) {
	var (
		names []string
		err   error
	)
	// The listing runs in one call so that it is abandoned as a whole when
	// ctx ends; stop asks it to end early.
	stop := make(chan struct{})
	defer close(stop)
	cerr := p.c.call(ctx, func() {
		var it *rados.Iter
		it, err = p.ioctx.Iter()
		if err != nil {
			return
		}
		defer it.Close()
		for it.Next() {
			select {
			case <-stop:
				return
			default:
			}
			if oid := it.Value(); strings.HasPrefix(oid, prefix) {
				names = append(names, oid)
			}
		}
		err = it.Err()
	})
	if cerr != nil {
		return nil, opErr("list", prefix+"*", cerr)
	}
	if err != nil {
		return nil, opErr("list", prefix+"*", errnoErr(err))
	}
	return names, nil
}

// ListWatchers returns the watches registered on oid.
func (p *Pool) ListWatchers(ctx context.Context, oid string) ([]objstore.WatcherInfo, error) {
	var (
		ws  []objstore.WatcherInfo
		err error
	)
	if cerr := p.c.call(ctx, func() { ws, err = listWatchers(p.io, oid) }); cerr != nil {
		return nil, opErr("list-watchers", oid, cerr)
	}
	if err != nil {
		return nil, opErr("list-watchers", oid, err)
	}
	return ws, nil
}

// String names the pool for logs.
func (p *Pool) String() string { return fmt.Sprintf("ceph pool %s (id %d)", p.name, p.id) }

var _ objstore.SelfManagedSnapper = (*Pool)(nil)

// SelfManagedSnapCreate allocates a self-managed snapshot id in the pool.
func (p *Pool) SelfManagedSnapCreate(ctx context.Context) (uint64, error) {
	var (
		id  C.uint64_t
		ret C.int
	)
	if err := p.c.call(ctx, func() { ret = C.csi_selfmanaged_snap_create(p.io, &id) }); err != nil {
		return 0, opErr("selfmanaged-snap-create", "", err)
	}
	if err := errnoOf(ret); err != nil {
		return 0, opErr("selfmanaged-snap-create", "", err)
	}
	return uint64(id), nil
}

// SelfManagedSnapRemove removes a self-managed snapshot id; the OSDs trim
// its clones in the background.
func (p *Pool) SelfManagedSnapRemove(ctx context.Context, id uint64) error {
	var ret C.int
	if err := p.c.call(ctx, func() { ret = C.csi_selfmanaged_snap_remove(p.io, C.uint64_t(id)) }); err != nil {
		return opErr("selfmanaged-snap-remove", "", err)
	}
	if err := errnoOf(ret); err != nil && !errors.Is(err, syscall.ENOENT) {
		return opErr("selfmanaged-snap-remove", fmt.Sprint(id), err)
	}
	return nil
}

// submitWrite submits w on oid; on error w is freed.
func (p *Pool) submitWrite(w *writeOp, oid string) (*aioOp, error) {
	if err := p.c.enter(); err != nil {
		w.free()
		return nil, opErr(w.name, oid, err)
	}
	a, err := p.aioWrite(w, oid)
	if err != nil {
		w.free()
		p.c.exit()
		return nil, opErr(w.name, oid, err)
	}
	return a, nil
}

// waitWrite waits for a submitted write.
func (p *Pool) waitWrite(ctx context.Context, a *aioOp, w *writeOp, oid string) error {
	name := w.name // w is freed by release
	ret, err := a.wait(ctx)
	if err != nil {
		return opErr(name, oid, err)
	}
	a.release()
	return opErr(name, oid, errnoOf(ret))
}

// readAsync runs r through the completion queue.
func (p *Pool) readAsync(ctx context.Context, r *readOp, oid string) error {
	if err := p.c.enter(); err != nil {
		r.free()
		return opErr("read", oid, err)
	}
	a, err := p.aioRead(r, oid)
	if err != nil {
		r.free()
		p.c.exit()
		return opErr("read", oid, err)
	}
	ret, err := a.wait(ctx)
	if err != nil {
		return opErr("read", oid, err)
	}
	name, rdErr := r.collect(ret)
	a.release()
	if rdErr != nil {
		return opErr(name, oid, rdErr)
	}
	r.apply()
	return nil
}

// Submit submits every operation at once and returns a function that waits
// for their outcomes (objstore.Submitter): operations submitted by one
// caller one after the other on one object apply in that order, because
// librados keeps one client's operations on an object in order.
func (p *Pool) Submit(ctx context.Context, ops []objstore.BatchOp) func() []error {
	errs := make([]error, len(ops))
	subs := make([]*aioOp, len(ops))
	names := make([]string, len(ops))
	for i, o := range ops {
		if err := ctx.Err(); err != nil {
			errs[i] = opErr("write", o.OID, err)
			continue
		}
		if o.OID == "" || o.Op == nil {
			errs[i] = opErr("write", o.OID, syscall.EINVAL)
			continue
		}
		if o.Op.Empty() {
			continue
		}
		w, err := buildWriteOp(o.Op)
		if err != nil {
			errs[i] = opErr("write", o.OID, err)
			continue
		}
		names[i] = w.name
		subs[i], errs[i] = p.submitWrite(w, o.OID)
	}
	return func() []error {
		for i, a := range subs {
			if a == nil {
				continue
			}
			ret, err := a.wait(ctx)
			if err != nil {
				errs[i] = opErr(names[i], ops[i].OID, err)
				continue
			}
			a.release()
			errs[i] = opErr(names[i], ops[i].OID, errnoOf(ret))
		}
		return errs
	}
}

// OperateBatch applies every operation, submitted together
// (objstore.Batcher).
func (p *Pool) OperateBatch(ctx context.Context, ops []objstore.BatchOp) []error {
	return p.Submit(ctx, ops)()
}
