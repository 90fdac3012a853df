//go:build ceph && pacific

package ceph

/*
#cgo CXXFLAGS: -std=c++17 -O2 -Wall
#cgo LDFLAGS: -lrados
#include <stdlib.h>
#include "radosops.h"
*/
import "C"

import (
	"encoding/binary"
	"fmt"
	"syscall"
	"time"
	"unsafe"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// cbuf returns a pointer to b's first byte for a C call that copies it, or
// nil for an empty slice.
func cbuf(b []byte) *C.char {
	if len(b) == 0 {
		return nil
	}
	return (*C.char)(unsafe.Pointer(&b[0]))
}

// cstr returns a pointer to s's bytes for a C call that copies them.
func cstr(s string) *C.char {
	if s == "" {
		return nil
	}
	return (*C.char)(unsafe.Pointer(unsafe.StringData(s)))
}

// appendStr appends s as {u32 length, bytes}, the encoding radosops.cc parses.
func appendStr(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// errnoOf turns a negative librados return code into a syscall.Errno.
func errnoOf(ret C.int) error {
	if ret >= 0 {
		return nil
	}
	if ret <= -maxErrno {
		// cmpext reports a mismatch as -MAX_ERRNO - the offset of the
		// first differing byte.
		return objstore.ErrMismatch
	}
	return syscall.Errno(-ret)
}

// maxErrno is the kernel's (and Ceph's) MAX_ERRNO.
const maxErrno = 4095

// writeOp is a write operation built in C++ memory: building copies the
// caller's data, so it is safe to run after the caller has returned.
type writeOp struct {
	p     *C.csi_wop
	snapc objstore.SnapContext // copied: the caller's slice may change
	name  string               // how an error names the operation
	cnames
}

// buildWriteOp translates op into a librados write operation.
func buildWriteOp(op *objstore.WriteOp) (*writeOp, error) {
	w := &writeOp{p: C.csi_wop_new(), name: "write"}
	if w.p == nil {
		return nil, syscall.ENOMEM
	}
	if sc := op.SnapContext(); sc.Seq != 0 || len(sc.Snaps) != 0 {
		if !sc.Valid() {
			w.free()
			return nil, &objstore.OpError{Op: "write", Err: fmt.Errorf("%w: snapshot context %v", syscall.EINVAL, sc)}
		}
		w.snapc = objstore.SnapContext{Seq: sc.Seq, Snaps: append([]uint64(nil), sc.Snaps...)}
	}
	steps := op.Steps()
	if len(steps) == 1 {
		w.name = steps[0].OpName()
	}
	for i := range steps {
		s := &steps[i]
		if err := w.add(s); err != nil {
			w.free()
			return nil, &objstore.OpError{Op: s.OpName(), Err: err}
		}
	}
	return w, nil
}

// cnames are the C strings an operation passes to librados, owned by the
// operation until it is freed.
type cnames []*C.char

// cstring returns s as a C string that lives until free.
func (n *cnames) cstring(s string) *C.char {
	c := C.CString(s)
	*n = append(*n, c)
	return c
}

// free releases the strings.
func (n *cnames) free() {
	for _, c := range *n {
		C.free(unsafe.Pointer(c))
	}
	*n = nil
}

// gather copies the pieces of a vectored step into the operation, one
// piece per call so that no Go pointer is handed to C inside Go memory.
func (w *writeOp) gather(bufs [][]byte) error {
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	for i, b := range bufs {
		reserve := 0
		if i == 0 {
			reserve = total
		}
		if err := errnoOf(C.csi_wop_gather(w.p, cbuf(b), C.size_t(len(b)), C.size_t(reserve))); err != nil {
			return err
		}
	}
	return nil
}

func (w *writeOp) add(s *objstore.Step) error {
	switch s.Kind {
	case objstore.StepCreate:
		excl := C.int(0)
		if s.Exclusive {
			excl = 1
		}
		C.csi_wop_create(w.p, excl)
	case objstore.StepRemove:
		C.csi_wop_remove(w.p)
	case objstore.StepWrite:
		C.csi_wop_write(w.p, C.uint64_t(s.Off), cbuf(s.Data), C.size_t(len(s.Data)))
	case objstore.StepWriteFull:
		C.csi_wop_write_full(w.p, cbuf(s.Data), C.size_t(len(s.Data)))
	case objstore.StepAppend:
		C.csi_wop_append(w.p, cbuf(s.Data), C.size_t(len(s.Data)))
	case objstore.StepWritev:
		if err := w.gather(s.Bufs); err != nil {
			return err
		}
		C.csi_wop_write_gathered(w.p, C.uint64_t(s.Off))
	case objstore.StepAppendv:
		if err := w.gather(s.Bufs); err != nil {
			return err
		}
		C.csi_wop_append_gathered(w.p)
	case objstore.StepTruncate:
		C.csi_wop_truncate(w.p, C.uint64_t(s.Off))
	case objstore.StepZero:
		C.csi_wop_zero(w.p, C.uint64_t(s.Off), C.uint64_t(s.Len))
	case objstore.StepSetOmap:
		var b []byte
		for k, v := range s.Omap {
			b = appendStr(b, k)
			b = binary.LittleEndian.AppendUint32(b, uint32(len(v)))
			b = append(b, v...)
		}
		return errnoOf(C.csi_wop_omap_set(w.p, cbuf(b), C.size_t(len(b))))
	case objstore.StepRmOmapKeys:
		var b []byte
		for _, k := range s.Keys {
			b = appendStr(b, k)
		}
		return errnoOf(C.csi_wop_omap_rm_keys(w.p, cbuf(b), C.size_t(len(b))))
	case objstore.StepClearOmap:
		C.csi_wop_omap_clear(w.p)
	case objstore.StepSetXattr:
		C.csi_wop_setxattr(w.p, w.cstring(s.Name), cbuf(s.Data), C.size_t(len(s.Data)))
	case objstore.StepRmXattr:
		C.csi_wop_rmxattr(w.p, w.cstring(s.Name))
	case objstore.StepAssertExists:
		C.csi_wop_assert_exists(w.p)
	case objstore.StepExec:
		C.csi_wop_exec(w.p, w.cstring(s.Class), w.cstring(s.Method), cbuf(s.Data), C.size_t(len(s.Data)))
	case objstore.StepCmpExt:
		C.csi_wop_cmpext(w.p, C.uint64_t(s.Off), cbuf(s.Data), C.size_t(len(s.Data)))
	default:
		return fmt.Errorf("%w: step kind %d in a write", syscall.EINVAL, s.Kind)
	}
	return nil
}

// operate runs the operation (blocking). It must be called once.
func (w *writeOp) operate(io *C.csi_ioctx, oid string) error {
	if sc := w.snapc; sc.Seq != 0 || len(sc.Snaps) != 0 {
		var snaps *C.uint64_t
		if len(sc.Snaps) > 0 {
			snaps = (*C.uint64_t)(unsafe.Pointer(&sc.Snaps[0]))
		}
		return errnoOf(C.csi_wop_operate_snapc(io, cstr(oid), C.size_t(len(oid)), w.p,
			C.uint64_t(sc.Seq), snaps, C.size_t(len(sc.Snaps))))
	}
	return errnoOf(C.csi_wop_operate(io, cstr(oid), C.size_t(len(oid)), w.p))
}

func (w *writeOp) free() {
	C.csi_wop_free(w.p)
	w.cnames.free()
	w.p = nil
}

// readOp is a read operation built in C++ memory. Its results are decoded
// into Go values by collect, which the caller's goroutine then stores into
// the steps (apply), so a caller that gave up never sees a late write.
type readOp struct {
	p     *C.csi_rop
	snap  uint64 // 0: the head
	steps []*objstore.Step
	cnames
	results []any
}

func buildReadOp(op *objstore.ReadOp) (*readOp, error) {
	steps := op.Steps()
	r := &readOp{p: C.csi_rop_new(C.size_t(len(steps))), steps: steps, snap: op.Snap()}
	if r.p == nil {
		return nil, syscall.ENOMEM
	}
	for i, s := range steps {
		if err := r.add(C.size_t(i), s); err != nil {
			r.free()
			return nil, &objstore.OpError{Op: s.OpName(), Err: err}
		}
	}
	return r, nil
}

func (r *readOp) add(i C.size_t, s *objstore.Step) error {
	switch s.Kind {
	case objstore.StepRead:
		C.csi_rop_read(r.p, i, C.uint64_t(s.Off), C.uint64_t(s.Len))
	case objstore.StepStat:
		C.csi_rop_stat(r.p, i)
	case objstore.StepGetOmapVals:
		max := s.MaxReturn
		if max <= 0 || max > maxOmapEntries {
			max = maxOmapEntries
		}
		C.csi_rop_omap_get_vals(r.p, i, cstr(s.StartAfter), C.size_t(len(s.StartAfter)),
			cstr(s.Prefix), C.size_t(len(s.Prefix)), C.uint64_t(max))
	case objstore.StepGetOmapValsByKeys:
		var b []byte
		for _, k := range s.Keys {
			b = appendStr(b, k)
		}
		return errnoOf(C.csi_rop_omap_get_vals_by_keys(r.p, i, cbuf(b), C.size_t(len(b))))
	case objstore.StepGetXattr:
		C.csi_rop_getxattr(r.p, i, r.cstring(s.Name))
	case objstore.StepGetXattrs:
		C.csi_rop_getxattrs(r.p, i)
	case objstore.StepAssertExists:
		C.csi_rop_assert_exists(r.p, i)
	case objstore.StepExec:
		C.csi_rop_exec(r.p, i, r.cstring(s.Class), r.cstring(s.Method), cbuf(s.Data), C.size_t(len(s.Data)))
	default:
		return fmt.Errorf("%w: step kind %d in a read", syscall.EINVAL, s.Kind)
	}
	return nil
}

// operate runs the read (blocking) and decodes every step's result. On
// failure it returns the failing step's name with the error.
func (r *readOp) operate(io *C.csi_ioctx, oid string) (string, error) {
	var ret C.int
	if r.snap != 0 {
		ret = C.csi_rop_operate_snap(io, cstr(oid), C.size_t(len(oid)), r.p, C.uint64_t(r.snap))
	} else {
		ret = C.csi_rop_operate(io, cstr(oid), C.size_t(len(oid)), r.p)
	}
	return r.collect(ret)
}

// collect decodes the results of the read, which returned ret. On failure
// it returns the failing step's name with the error.
func (r *readOp) collect(ret C.int) (string, error) {
	if ret < 0 {
		name := "read"
		for i, s := range r.steps {
			if rv := C.csi_rop_rval(r.p, C.size_t(i)); rv < 0 {
				name = s.OpName()
				if s.Kind == objstore.StepGetXattr && rv == -C.int(syscall.ENODATA) {
					// the contract's error for a missing xattr
					return name, fmt.Errorf("xattr %q: %w", s.Name, syscall.ENOENT)
				}
				break
			}
		}
		return name, errnoOf(ret)
	}
	r.results = make([]any, len(r.steps))
	for i, s := range r.steps {
		ci := C.size_t(i)
		var buf *C.char
		var n C.size_t
		C.csi_rop_bytes(r.p, ci, &buf, &n)
		raw := C.GoBytes(unsafe.Pointer(buf), C.int(n))
		switch s.Kind {
		case objstore.StepRead, objstore.StepGetXattr, objstore.StepExec:
			r.results[i] = raw
		case objstore.StepStat:
			var size C.uint64_t
			var sec, nsec C.int64_t
			C.csi_rop_stat_result(r.p, ci, &size, &sec, &nsec)
			r.results[i] = objstore.Stat{Size: uint64(size), MTime: time.Unix(int64(sec), int64(nsec)).UnixNano()}
		case objstore.StepGetOmapVals, objstore.StepGetOmapValsByKeys:
			page, err := decodePage(raw)
			if err != nil {
				return s.OpName(), err
			}
			if s.Kind == objstore.StepGetOmapValsByKeys {
				page.More = false
			}
			r.results[i] = page
		case objstore.StepGetXattrs:
			page, err := decodePage(raw)
			if err != nil {
				return s.OpName(), err
			}
			m := make(map[string][]byte, len(page.Entries))
			for _, kv := range page.Entries {
				m[kv.Key] = kv.Value
			}
			r.results[i] = m
		}
	}
	return "", nil
}

// apply stores the decoded results into the caller's steps.
func (r *readOp) apply() {
	for i, s := range r.steps {
		if r.results[i] != nil {
			s.Result = r.results[i]
		}
	}
}

func (r *readOp) free() {
	C.csi_rop_free(r.p)
	r.cnames.free()
	r.p = nil
}

var errShortResult = fmt.Errorf("%w: malformed result from librados shim", syscall.EIO)

// shortResult is nil, or errShortResult with what d failed on: the shim
// writes its results with Ceph's primitive encodings (little-endian
// integers, u32-length-prefixed bytes), which a cephenc.Decoder reads.
func shortResult(d *cephenc.Decoder) error {
	if err := d.Err(); err != nil {
		return fmt.Errorf("%w: %w", errShortResult, err)
	}
	return nil
}

// decodePage decodes {u8 more, u32 n, n times {u32 klen, key, u32 vlen, value}}.
func decodePage(b []byte) (objstore.OmapPage, error) {
	var page objstore.OmapPage
	d := cephenc.NewDecoder(b)
	page.More = d.Bool()
	n := d.Count(8) // two lengths at least
	if err := shortResult(d); err != nil {
		return page, err
	}
	page.Entries = make([]objstore.KV, 0, n)
	for range n {
		k, v := d.Str(), d.Bytes()
		if err := shortResult(d); err != nil {
			return page, err
		}
		if v == nil {
			v = []byte{}
		}
		page.Entries = append(page.Entries, objstore.KV{Key: k, Value: v[:len(v):len(v)]})
	}
	return page, nil
}

// maxOmapEntries bounds an omap listing that asks for "all" (max <= 0), as
// the local backend does.
const maxOmapEntries = 1 << 16

// listWatchers returns the watchers of oid (blocking).
func listWatchers(io *C.csi_ioctx, oid string) ([]objstore.WatcherInfo, error) {
	var out *C.char
	var n C.size_t
	if err := errnoOf(C.csi_list_watchers(io, cstr(oid), C.size_t(len(oid)), &out, &n)); err != nil {
		return nil, err
	}
	defer C.csi_free(unsafe.Pointer(out))
	d := cephenc.NewDecoder(C.GoBytes(unsafe.Pointer(out), C.int(n)))
	var ws []objstore.WatcherInfo
	for d.Remaining() > 0 {
		addr, id, cookie := d.Str(), d.U64(), d.U64()
		d.U32() // timeout_seconds
		if err := shortResult(d); err != nil {
			return nil, err
		}
		ws = append(ws, objstore.WatcherInfo{Client: objstore.ClientInfo{ID: id, Addr: normalizeAddr(addr)}, Cookie: cookie})
	}
	return ws, nil
}
