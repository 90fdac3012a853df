//go:build ceph && pacific

package ceph

/*
#include "radosops.h"
*/
import "C"

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// Object operations run asynchronously (librados aio) and complete through
// one completion queue per cluster, drained by one goroutine.
//
// Why: a blocking librados call holds an OS thread for the whole round
// trip, and a caller that must give up when its context ends needs a second
// goroutine to wait on. With 16 reads in flight that was 16 blocked
// threads, 16 goroutines handing results over and the Go scheduler waking
// threads for each: the 4K random read benchmark (bench_test.go) reached
// 40 % of fio's rados engine on the same cluster. Submitting is now a short
// non-blocking call, and completions come back in batches to a single
// waiter. It also orders operations: two operations submitted one after
// the other on one object apply in that order (librados keeps one client's
// operations on an object in order), which the journal's pipelined appends
// rely on (Pool.Submit).

// aioQueue is a cluster's completion queue.
type aioQueue struct {
	cq *C.csi_cq

	mu      sync.Mutex
	next    uint64
	pending map[uint64]*aioOp

	stopped chan struct{} // closed when the poller returned
}

// aioOp is one submitted operation.
type aioOp struct {
	done chan struct{}
	rval C.int
	// state: aioWaiting until the completion or the waiter's context ends
	// first. The side that moves it on owns the release: the waiter after
	// aioCompleted, the poller after aioAbandoned.
	state   atomic.Int32
	release func() // frees the C operation and leaves the cluster
}

const (
	aioWaiting int32 = iota
	aioCompleted
	aioAbandoned
)

// aioBatch is how many completions the poller takes per wake-up.
const aioBatch = 64

func newAIOQueue() (*aioQueue, error) {
	cq := C.csi_cq_new()
	if cq == nil {
		return nil, syscall.ENOMEM
	}
	q := &aioQueue{cq: cq, pending: map[uint64]*aioOp{}, stopped: make(chan struct{})}
	go q.poll()
	return q, nil
}

// poll delivers completions until stop. Owned by the Cluster: Close stops it
// once no operation is in flight.
func (q *aioQueue) poll() {
	defer close(q.stopped)
	var toks [aioBatch]C.uint64_t
	var rvals [aioBatch]C.int
	for {
		n := int(C.csi_cq_wait(q.cq, &toks[0], &rvals[0], aioBatch))
		if n < 0 {
			return
		}
		q.mu.Lock()
		ops := make([]*aioOp, n)
		for i := range n {
			tok := uint64(toks[i])
			ops[i] = q.pending[tok]
			delete(q.pending, tok)
		}
		q.mu.Unlock()
		for i, a := range ops {
			if a == nil {
				continue // cannot happen: every token is registered before submission
			}
			a.rval = rvals[i]
			if a.state.CompareAndSwap(aioWaiting, aioCompleted) {
				close(a.done)
			} else {
				a.release()
			}
		}
		// Let the waiters just woken run here, on this thread, before it
		// blocks in C again (entering a cgo call keeps the P, and the next
		// waiter would wait for another thread to steal it).
		runtime.Gosched()
	}
}

// stop ends the poller; every operation must have completed.
func (q *aioQueue) stop() {
	C.csi_cq_shutdown(q.cq)
	<-q.stopped
	C.csi_cq_free(q.cq)
}

// submit registers an operation and submits it with send (given the
// queue and the token). On error the operation was not submitted and
// release has not been called.
func (q *aioQueue) submit(send func(cq *C.csi_cq, token C.uint64_t) C.int, release func()) (*aioOp, error) {
	a := &aioOp{done: make(chan struct{}), release: release}
	q.mu.Lock()
	q.next++
	tok := q.next
	q.pending[tok] = a
	q.mu.Unlock()
	if r := send(q.cq, C.uint64_t(tok)); r < 0 {
		q.mu.Lock()
		delete(q.pending, tok)
		q.mu.Unlock()
		return nil, errnoOf(r)
	}
	return a, nil
}

// wait waits for the completion. If ctx ends first it returns ctx.Err() and
// the operation is released when it completes; otherwise the caller reads
// the results and then calls a.release.
func (a *aioOp) wait(ctx context.Context) (C.int, error) {
	select {
	case <-a.done:
		return a.rval, nil
	case <-ctx.Done():
		if a.state.CompareAndSwap(aioWaiting, aioAbandoned) {
			return 0, ctx.Err()
		}
		<-a.done // completed meanwhile
		return a.rval, nil
	}
}

// aioWrite submits w on oid. The caller has entered the cluster; the
// returned operation's release frees w and exits.
func (p *Pool) aioWrite(w *writeOp, oid string) (*aioOp, error) {
	return p.c.aio.submit(func(cq *C.csi_cq, tok C.uint64_t) C.int {
		var snaps *C.uint64_t
		if len(w.snapc.Snaps) > 0 {
			snaps = (*C.uint64_t)(unsafe.Pointer(&w.snapc.Snaps[0]))
		}
		return C.csi_wop_aio_operate(p.io, cstr(oid), C.size_t(len(oid)), w.p,
			C.uint64_t(w.snapc.Seq), snaps, C.size_t(len(w.snapc.Snaps)), cq, tok)
	}, func() {
		w.free()
		p.c.exit()
	})
}

// aioRead submits r (a read of the head) on oid, like aioWrite.
func (p *Pool) aioRead(r *readOp, oid string) (*aioOp, error) {
	return p.c.aio.submit(func(cq *C.csi_cq, tok C.uint64_t) C.int {
		return C.csi_rop_aio_operate(p.io, cstr(oid), C.size_t(len(oid)), r.p, cq, tok)
	}, func() {
		r.free()
		p.c.exit()
	})
}
