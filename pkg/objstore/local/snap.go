package local

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Self-managed snapshots (objstore.SelfManagedSnapper), as Ceph's OSD keeps
// them, on the local backend:
//
//	<dir>/pools/<id>/snaps.json   the pool's snapshot registry: the last id
//	                              allocated (seq) and the removed ids
//	"\x00snap\x00dir\x00<oid>"    the object's snapset (hidden object): its
//	                              seq and its clones, each with the
//	                              snapshots it covers
//	"\x00snap\x00clone\x00<oid>\x00<clone id as 16 hex digits>"
//	                              a clone (hidden object): the object's data,
//	                              omap and xattrs as of its snapshots
//
// A write whose snapshot context is newer than the object's seq is
// committed as up to three records of one batch, in this order: the clone
// (if the object existed and a snapshot of the context is newer than its
// seq), the snapset, then the write. A crash can keep a prefix of them: an
// orphan clone (no snapset names it; the next trim deletes it) or a
// snapset naming a clone equal to the unchanged head, both harmless.
//
// A read at a snapshot reads the snapset, then the head or the clone it
// names, then the snapset again, and retries if the snapset changed: a
// write that changed the head after the first snapset read also changed
// the snapset before it (its records apply in order).
//
// Removing a snapshot id records it as removed, then trims every snapset
// (a class method, so it is atomic with concurrent clone-on-writes) and
// deletes the clones no snapset names any more. Only clones with an id no
// newer than the snapset's seq are deleted: a clone whose snapset record is
// still to be applied has a newer id.

const (
	snapHidden      = "\x00snap\x00"
	snapDirPrefix   = snapHidden + "dir\x00"
	snapClonePrefix = snapHidden + "clone\x00"
	// snapClassName is the internal class that trims snapsets.
	snapClassName = "\x00snap"
)

func snapDirOID(oid string) string { return snapDirPrefix + oid }

func cloneOIDPrefix(oid string) string { return snapClonePrefix + oid + "\x00" }

func cloneOID(oid string, id uint64) string {
	return fmt.Sprintf("%s%016x", cloneOIDPrefix(oid), id)
}

// hiddenOID reports whether oid is one of the store's own snapshot objects.
func hiddenOID(oid string) bool { return strings.HasPrefix(oid, snapHidden) }

// snapset is an object's snapshot state (Ceph's SnapSet).
type snapset struct {
	Seq    uint64      `json:"seq"`
	Clones []snapClone `json:"clones,omitempty"` // ascending by ID
}

type snapClone struct {
	ID    uint64   `json:"id"`
	Snaps []uint64 `json:"snaps"` // descending
	Size  uint64   `json:"size"`
}

func decodeSnapset(b []byte) (snapset, error) {
	var ss snapset
	if len(b) == 0 {
		return ss, nil
	}
	if err := json.Unmarshal(b, &ss); err != nil {
		return ss, fmt.Errorf("%w: snapset: %v", syscall.EIO, err)
	}
	return ss, nil
}

func (ss snapset) encode() []byte {
	b, _ := json.Marshal(ss)
	return b
}

// cloneFor returns the clone that holds the object as of snapshot id
// (Ceph's find_object_context): the oldest clone at least as new as id
// that covers it.
func (ss snapset) cloneFor(id uint64) (snapClone, bool) {
	for _, c := range ss.Clones {
		if c.ID >= id {
			return c, slices.Contains(c.Snaps, id)
		}
	}
	return snapClone{}, false
}

// stateIn returns the batch's state of an object, loading it from disk if
// the batch has not touched it yet.
func stateIn(states map[objKey]*objState, p *pool, oid string) (*objState, error) {
	if st, ok := states[objKey{p.id, oid}]; ok {
		return st, nil
	}
	return loadState(p.paths(oid))
}

// snapPrepare runs before a write's steps: if the write carries a snapshot
// context newer than its object's seq, it returns the records that
// preserve the object (its clone, its new snapset) and keep, which stores
// their states in the batch once the write turned out to change the object.
func (c *Cluster) snapPrepare(r *request, states map[objKey]*objState, now int64) ([]*record, func(), error) {
	sc := r.op.SnapContext()
	if sc.Seq == 0 && len(sc.Snaps) == 0 || hiddenOID(r.oid) {
		return nil, func() {}, nil
	}
	if !sc.Valid() {
		return nil, nil, &objstore.OpError{Op: "write", OID: r.oid, Err: fmt.Errorf("%w: snapshot context %v", syscall.EINVAL, sc)}
	}
	p := r.p
	dirOID := snapDirOID(r.oid)
	dir, err := stateIn(states, p, dirOID)
	if err != nil {
		return nil, nil, stepErr("write", r.oid, err)
	}
	var raw []byte
	if dir.exists {
		if raw, err = dir.read(0, 0); err != nil {
			return nil, nil, stepErr("write", r.oid, err)
		}
	}
	ss, err := decodeSnapset(raw)
	if err != nil {
		return nil, nil, stepErr("write", r.oid, err)
	}
	if sc.Seq <= ss.Seq {
		return nil, func() {}, nil
	}
	// Only snapshots newer than the object's seq need anything: the
	// others are preserved already (a clone) or the object did not exist
	// then. Without one (every newer snapshot was removed) nothing is
	// recorded: reads at removed snapshots fail anyway.
	var snaps []uint64
	for _, s := range sc.Snaps {
		if s > ss.Seq {
			snaps = append(snaps, s)
		}
	}
	if len(snaps) == 0 {
		return nil, func() {}, nil
	}
	head, err := stateIn(states, p, r.oid)
	if err != nil {
		return nil, nil, stepErr("write", r.oid, err)
	}
	var recs []*record
	newStates := map[objKey]*objState{}
	if head.exists {
		data, err := head.read(0, 0)
		if err != nil {
			return nil, nil, stepErr("write", r.oid, err)
		}
		meta, err := head.loadMeta()
		if err != nil {
			return nil, nil, stepErr("write", r.oid, err)
		}
		coid := cloneOID(r.oid, sc.Seq)
		muts := []mut{{kind: mutCreateFresh}}
		if len(data) > 0 {
			muts = append(muts, mut{kind: mutWrite, a: 0, data: data})
		}
		rec := &record{poolID: p.id, oid: coid, muts: muts, hasMeta: true, mtime: head.mtime}
		if !meta.empty() {
			rec.meta = meta.encode()
		}
		recs = append(recs, rec)
		newStates[objKey{p.id, coid}] = &objState{paths: p.paths(coid), exists: true, size: uint64(len(data)),
			mtime: head.mtime, meta: meta.clone(), muts: muts, fd: -1}
		ss.Clones = append(ss.Clones, snapClone{ID: sc.Seq, Snaps: snaps, Size: uint64(len(data))})
	}
	ss.Seq = sc.Seq
	enc := ss.encode()
	muts := []mut{{kind: mutCreateFresh}, {kind: mutWrite, a: 0, data: enc}}
	recs = append(recs, &record{poolID: p.id, oid: dirOID, muts: muts, hasMeta: true, mtime: now})
	newStates[objKey{p.id, dirOID}] = &objState{paths: p.paths(dirOID), exists: true, size: uint64(len(enc)),
		mtime: now, meta: &objMeta{}, muts: muts, fd: -1}
	return recs, func() {
		for k, st := range newStates {
			states[k] = st
		}
	}, nil
}

// --- the pool's snapshot registry ---

type snapRegistry struct {
	Seq     uint64   `json:"seq"`
	Removed []uint64 `json:"removed,omitempty"`
}

func (p *pool) snapRegistryPath() string { return filepath.Join(p.dir, "snaps.json") }

func (p *pool) readSnapRegistry() (snapRegistry, error) {
	var reg snapRegistry
	err := readJSONFile(p.snapRegistryPath(), &reg, func(err error) error {
		return fmt.Errorf("%w: %s: %v", syscall.EIO, p.snapRegistryPath(), err)
	})
	return reg, err
}

// updateSnapRegistry changes the registry under the commit lock (which
// orders it with every other client's changes) and writes it durably.
func (p *pool) updateSnapRegistry(ctx context.Context, fn func(*snapRegistry) error) (snapRegistry, error) {
	c := p.c
	if err := c.enter(); err != nil {
		return snapRegistry{}, err
	}
	defer c.exit()
	if c.blocklisted() {
		return snapRegistry{}, blocklistedErr("snap", "")
	}
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	if err := c.lockCommit(ctx); err != nil {
		return snapRegistry{}, err
	}
	defer c.unlockCommit()
	reg, err := p.readSnapRegistry()
	if err != nil {
		return reg, err
	}
	if err := fn(&reg); err != nil {
		return reg, err
	}
	if err := ensurePoolDirs(p.dir); err != nil {
		return reg, err
	}
	b, err := json.Marshal(reg)
	if err != nil {
		return reg, err
	}
	return reg, c.writeFileAtomic(p.snapRegistryPath(), b)
}

var _ objstore.SelfManagedSnapper = (*pool)(nil)

// SelfManagedSnapCreate allocates the pool's next snapshot id.
func (p *pool) SelfManagedSnapCreate(ctx context.Context) (uint64, error) {
	reg, err := p.updateSnapRegistry(ctx, func(r *snapRegistry) error {
		r.Seq++
		return nil
	})
	if err != nil {
		return 0, &objstore.OpError{Op: "selfmanaged-snap-create", Err: err}
	}
	klog.FromContext(ctx).V(2).Info("local cluster: snapshot id allocated", "pool", p.name, "snap", reg.Seq)
	return reg.Seq, nil
}

// SelfManagedSnapRemove removes snapshot id and trims it from every
// object's clones before it returns.
func (p *pool) SelfManagedSnapRemove(ctx context.Context, id uint64) error {
	reg, err := p.updateSnapRegistry(ctx, func(r *snapRegistry) error {
		if id == 0 || id > r.Seq {
			return fmt.Errorf("snapshot %d was never allocated: %w", id, syscall.ENOENT)
		}
		if !slices.Contains(r.Removed, id) {
			r.Removed = append(r.Removed, id)
		}
		return nil
	})
	if err != nil {
		return &objstore.OpError{Op: "selfmanaged-snap-remove", OID: strconv.FormatUint(id, 10), Err: err}
	}
	if err := p.trimSnaps(ctx, reg.Removed); err != nil {
		return &objstore.OpError{Op: "selfmanaged-snap-remove", OID: strconv.FormatUint(id, 10), Err: fmt.Errorf("trim clones: %w", err)}
	}
	return nil
}

// trimSnaps removes the removed snapshots from every snapset and deletes
// the clones left covering none (and orphan clones of a crashed write).
func (p *pool) trimSnaps(ctx context.Context, removed []uint64) error {
	dirs, err := p.List(ctx, snapDirPrefix)
	if err != nil {
		return err
	}
	in, _ := json.Marshal(removed)
	for _, dirOID := range dirs {
		oid := strings.TrimPrefix(dirOID, snapDirPrefix)
		op := &objstore.WriteOp{}
		op.Exec(snapClassName, "trim", in)
		if err := p.Operate(ctx, dirOID, op); err != nil && !errors.Is(err, objstore.ErrNotFound) {
			return err
		}
		ss, err := p.readSnapset(ctx, oid)
		if err != nil {
			return err
		}
		clones, err := p.List(ctx, cloneOIDPrefix(oid))
		if err != nil {
			return err
		}
		for _, coid := range clones {
			cid, err := strconv.ParseUint(strings.TrimPrefix(coid, cloneOIDPrefix(oid)), 16, 64)
			if err != nil || cid > ss.Seq || slices.ContainsFunc(ss.Clones, func(c snapClone) bool { return c.ID == cid }) {
				continue
			}
			op := &objstore.WriteOp{}
			op.Remove()
			if err := p.Operate(ctx, coid, op); err != nil && !errors.Is(err, objstore.ErrNotFound) {
				return err
			}
		}
	}
	return nil
}

// snapClass is the internal class whose "trim" method removes snapshot ids
// (input: a JSON array) from the snapset it is called on.
var snapClass = objstore.Class{
	"trim": {Write: true, Call: func(ctx objstore.MethodContext, in []byte) ([]byte, error) {
		var removed []uint64
		if err := json.Unmarshal(in, &removed); err != nil {
			return nil, syscall.EINVAL
		}
		raw, err := ctx.Read(0, 0)
		if err != nil {
			return nil, err
		}
		ss, err := decodeSnapset(raw)
		if err != nil {
			return nil, err
		}
		kept := ss.Clones[:0]
		changed := false
		for _, cl := range ss.Clones {
			n := len(cl.Snaps)
			cl.Snaps = slices.DeleteFunc(cl.Snaps, func(s uint64) bool { return slices.Contains(removed, s) })
			changed = changed || n != len(cl.Snaps)
			if len(cl.Snaps) > 0 {
				kept = append(kept, cl)
			}
		}
		if !changed {
			return nil, nil
		}
		ss.Clones = kept
		return nil, ctx.WriteFull(ss.encode())
	}},
}

// readSnapset returns oid's snapset (empty if it has none) and its bytes.
func (p *pool) readSnapset(ctx context.Context, oid string) (snapset, error) {
	ss, _, err := p.readSnapsetRaw(ctx, oid)
	return ss, err
}

func (p *pool) readSnapsetRaw(ctx context.Context, oid string) (snapset, []byte, error) {
	var op objstore.ReadOp
	r := op.Read(0, 0)
	err := p.readSteps(ctx, snapDirOID(oid), op.Steps())
	if errors.Is(err, objstore.ErrNotFound) {
		return snapset{}, nil, nil
	}
	if err != nil {
		return snapset{}, nil, err
	}
	ss, err := decodeSnapset(r.Data())
	return ss, r.Data(), err
}

// readSnap runs a read at snapshot id: on the head if the object has not
// been written since the snapshot, else on the clone that preserved it.
func (p *pool) readSnap(ctx context.Context, oid string, id uint64, steps []*objstore.Step) error {
	reg, err := p.readSnapRegistry()
	if err != nil {
		return &objstore.OpError{Op: "read", OID: oid, Err: err}
	}
	if id > reg.Seq || slices.Contains(reg.Removed, id) {
		return &objstore.OpError{Op: "read", OID: oid, Err: fmt.Errorf("snapshot %d: %w", id, syscall.ENOENT)}
	}
	for {
		ss, raw, err := p.readSnapsetRaw(ctx, oid)
		if err != nil {
			return err
		}
		target := oid
		if id <= ss.Seq {
			cl, ok := ss.cloneFor(id)
			if !ok {
				return &objstore.OpError{Op: "read", OID: oid, Err: fmt.Errorf("at snapshot %d: %w", id, syscall.ENOENT)}
			}
			target = cloneOID(oid, cl.ID)
		}
		rerr := p.readSteps(ctx, target, steps)
		var oe *objstore.OpError
		if errors.As(rerr, &oe) {
			oe.OID = oid
		}
		_, raw2, err := p.readSnapsetRaw(ctx, oid)
		if err != nil {
			return err
		}
		if bytes.Equal(raw, raw2) {
			return rerr
		}
	}
}
