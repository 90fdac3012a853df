package clsrbd

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"math"
	"syscall"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/cls/clsenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
)

// SnapshotNamespace is cls::rbd::SnapshotNamespace (user, group, trash,
// mirror); rbdnotify and the journal carry the same encoding.
type SnapshotNamespace = rbdnotify.SnapshotNamespace

// Snapshot protection states (RBD_PROTECTION_STATUS_*).
const (
	ProtectionUnprotected  uint8 = 0
	ProtectionUnprotecting uint8 = 1
	ProtectionProtected    uint8 = 2
)

// Operation features cls_rbd keeps in "op_features" (RBD_OPERATION_FEATURE_*).
const (
	OpFeatureCloneParent uint64 = 1 << 0
	OpFeatureCloneChild  uint64 = 1 << 1
	OpFeatureGroup       uint64 = 1 << 2
	OpFeatureSnapTrash   uint64 = 1 << 3
)

const (
	keySnapLimit  = "snap_limit"
	keyFlags      = "flags"
	keyOpFeatures = "op_features"
)

// SnapRecord is a snapshot's record in the header, "snapshot_<id>"
// (cls_rbd_snap). Pacific writes version 8 (compat 8: no features or
// parent fields); older versions decode too.
type SnapRecord struct {
	ID               uint64
	Name             string
	ImageSize        uint64
	ProtectionStatus uint8
	Flags            uint64
	Namespace        SnapshotNamespace
	Timestamp        UTime
	ChildCount       uint32
	ParentOverlap    *uint64
	parent           *parentRecord // versions before 8 only
}

// Encode writes r as a Nautilus-or-later OSD does.
func (r SnapRecord) Encode(e *cephenc.Encoder) {
	m := e.Start(8, 8)
	e.U64(r.ID)
	e.String(r.Name)
	e.U64(r.ImageSize)
	e.U8(r.ProtectionStatus)
	e.U64(r.Flags)
	r.Namespace.Encode(e)
	r.Timestamp.Encode(e)
	e.U32(r.ChildCount)
	e.Bool(r.ParentOverlap != nil)
	if r.ParentOverlap != nil {
		e.U64(*r.ParentOverlap)
	}
	e.Finish(m)
}

// Decode reads a record of any version.
func (r *SnapRecord) Decode(d *cephenc.Decoder) error {
	s := d.Start(8)
	*r = SnapRecord{ID: d.U64(), Name: d.Str(), ImageSize: d.U64()}
	if s.Compat < 8 {
		d.U64() // features, unused
		if s.Version >= 2 {
			var p parentRecord
			_ = p.decode(d) // the error stays in d
			r.parent = &p
		}
	}
	if s.Version >= 3 {
		r.ProtectionStatus = d.U8()
	}
	if s.Version >= 4 {
		r.Flags = d.U64()
	}
	if s.Version >= 5 {
		_ = r.Namespace.Decode(d)
	}
	if s.Version >= 6 {
		_ = r.Timestamp.Decode(d)
	}
	if s.Version >= 7 {
		r.ChildCount = d.U32()
	}
	if s.Version >= 8 && d.Bool() {
		v := d.U64()
		r.ParentOverlap = &v
	}
	d.Finish(s)
	if err := d.Err(); err != nil {
		return fmt.Errorf("decode snapshot record: %w", err)
	}
	return nil
}

// SnapshotInfo is what snapshot_get returns (cls::rbd::SnapshotInfo).
type SnapshotInfo struct {
	ID         uint64
	Namespace  SnapshotNamespace
	Name       string
	ImageSize  uint64
	Timestamp  UTime
	ChildCount uint32
}

// Encode writes i.
func (i SnapshotInfo) Encode(e *cephenc.Encoder) {
	m := e.Start(1, 1)
	e.U64(i.ID)
	i.Namespace.Encode(e)
	e.String(i.Name)
	e.U64(i.ImageSize)
	i.Timestamp.Encode(e)
	e.U32(i.ChildCount)
	e.Finish(m)
}

// Decode reads i.
func (i *SnapshotInfo) Decode(d *cephenc.Decoder) error {
	s := d.Start(1)
	i.ID = d.U64()
	_ = i.Namespace.Decode(d)
	i.Name = d.Str()
	i.ImageSize = d.U64()
	_ = i.Timestamp.Decode(d)
	i.ChildCount = d.U32()
	d.Finish(s)
	if err := d.Err(); err != nil {
		return fmt.Errorf("decode snapshot info: %w", err)
	}
	return nil
}

func nsEqual(a, b SnapshotNamespace) bool {
	return bytes.Equal(cephenc.Marshal(a), cephenc.Marshal(b))
}

func decSnapRecord(d *cephenc.Decoder) (SnapRecord, error) {
	var r SnapRecord
	err := r.Decode(d)
	return r, err
}

// forEachSnap calls fn for every snapshot record of the header, in id order.
func forEachSnap(ctx objstore.MethodContext, fn func(key string, r SnapRecord) error) error {
	last := snapKeyPrefix
	for {
		page, err := ctx.OmapList(last, snapKeyPrefix, maxKeysRead)
		if err != nil {
			return err
		}
		for _, kv := range page.Entries {
			var r SnapRecord
			if err := cephenc.Unmarshal(kv.Value, &r); err != nil {
				return fmt.Errorf("%s: %w", kv.Key, errIO)
			}
			if err := fn(kv.Key, r); err != nil {
				return err
			}
		}
		if len(page.Entries) > 0 {
			last = page.Entries[len(page.Entries)-1].Key
		}
		if !page.More || len(page.Entries) == 0 {
			return nil
		}
	}
}

// snapshotAdd records a new snapshot (cls_rbd's snapshot_add). Input:
// string name, u64 snap id, optional SnapshotNamespace (user if absent).
// ESTALE if the id is older than the image's snap_seq (a concurrent
// snapshot won), EEXIST for a name taken in the namespace or a taken id,
// EDQUOT past the snapshot limit.
func snapshotAdd(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	d := cephenc.NewDecoder(in)
	r := SnapRecord{Name: d.Str(), ID: d.U64()}
	if d.Err() == nil && d.Remaining() > 0 {
		_ = r.Namespace.Decode(d)
	}
	if err := clsenc.BadInput(d.Err()); err != nil {
		return nil, err
	}
	if r.ID > MaxSnap {
		return nil, objstore.ErrInvalid
	}
	if err := checkExists(ctx); err != nil {
		return nil, err
	}
	seq, err := readKey(ctx, keySnapSeq, clsenc.U64)
	if err != nil {
		return nil, err
	}
	if r.ID < seq {
		return nil, objstore.ErrStale
	}
	if r.ImageSize, err = readKey(ctx, keySize, clsenc.U64); err != nil {
		return nil, err
	}
	if r.Flags, err = readKey(ctx, keyFlags, clsenc.U64); err != nil && !isNotFound(err) {
		return nil, err
	}
	limit, err := readKey(ctx, keySnapLimit, clsenc.U64)
	if isNotFound(err) {
		limit, err = math.MaxUint64, nil
	}
	if err != nil {
		return nil, err
	}
	r.Timestamp = UTimeOf(time.Now())
	n := uint64(0)
	err = forEachSnap(ctx, func(_ string, old SnapRecord) error {
		if n++; n >= limit {
			return syscall.EDQUOT
		}
		if old.ID == r.ID || old.Name == r.Name && nsEqual(old.Namespace, r.Namespace) {
			return objstore.ErrExists
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// A snapshot of a clone records how much of the image maps onto the
	// parent at that moment.
	p, err := readKey(ctx, keyParent, decParent)
	if err != nil && !isNotFound(err) {
		return nil, err
	}
	if err == nil && p.exists() && p.headOverlap != nil {
		v := *p.headOverlap
		r.ParentOverlap = &v
	}
	if r.Namespace.Type == rbdnotify.SnapNamespaceTrash {
		if err := setOpFeatures(ctx, OpFeatureSnapTrash, OpFeatureSnapTrash); err != nil {
			return nil, err
		}
	}
	return nil, ctx.OmapSet(map[string][]byte{
		keySnapSeq:    u64Bytes(r.ID),
		snapKey(r.ID): cephenc.Marshal(r),
	})
}

// setOpFeatures is cls_rbd's image::set_op_features: the operation
// features in mask take their value from opFeatures, and the "operations"
// feature follows whether any is left.
func setOpFeatures(ctx objstore.MethodContext, opFeatures, mask uint64) error {
	features, err := readKey(ctx, keyFeatures, clsenc.U64)
	if err != nil {
		return err
	}
	orig, err := readKey(ctx, keyOpFeatures, clsenc.U64)
	if err != nil && !isNotFound(err) {
		return err
	}
	next := orig&^mask | opFeatures&mask
	if next == orig {
		return nil
	}
	f := features
	kv := map[string][]byte{}
	if next == 0 {
		f &^= FeatureOperations
		if err := ctx.OmapRemove(keyOpFeatures); err != nil {
			return err
		}
	} else {
		f |= FeatureOperations
		kv[keyOpFeatures] = u64Bytes(next)
	}
	if f != features {
		kv[keyFeatures] = u64Bytes(f)
	}
	if len(kv) == 0 {
		return nil
	}
	return ctx.OmapSet(kv)
}

// readSnapInput reads the record of the snapshot a method's input (u64 snap
// id) names, and its omap key: -EINVAL for an undecodable input, ENOENT if
// there is no such snapshot.
func readSnapInput(ctx objstore.MethodContext, in []byte) (string, SnapRecord, error) {
	id, err := clsenc.Input(in, clsenc.U64)
	if err != nil {
		return "", SnapRecord{}, err
	}
	key := snapKey(id)
	r, err := readKey(ctx, key, decSnapRecord)
	return key, r, err
}

// snapshotRemove deletes a snapshot record (cls_rbd's snapshot_remove).
// Input: u64 snap id. ENOENT if there is none, EBUSY if it is protected or
// has clone v2 children.
func snapshotRemove(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	key, r, err := readSnapInput(ctx, in)
	if err != nil {
		return nil, err
	}
	if r.ProtectionStatus != ProtectionUnprotected || r.ChildCount > 0 {
		return nil, objstore.ErrBusy
	}
	if err := ctx.OmapRemove(key); err != nil {
		return nil, err
	}
	trash := false
	if err := forEachSnap(ctx, func(k string, o SnapRecord) error {
		trash = trash || k != key && o.Namespace.Type == rbdnotify.SnapNamespaceTrash
		return nil
	}); err != nil {
		return nil, err
	}
	if !trash {
		if err := setOpFeatures(ctx, 0, OpFeatureSnapTrash); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

// snapshotTrashAdd moves a snapshot to the trash namespace under a random
// name (cls_rbd's snapshot_trash_add): librbd's first step of a removal.
// Input: u64 snap id. EEXIST if it is in the trash already.
func snapshotTrashAdd(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	key, r, err := readSnapInput(ctx, in)
	if err != nil {
		return nil, err
	}
	if r.ProtectionStatus != ProtectionUnprotected {
		return nil, objstore.ErrBusy
	}
	if r.Namespace.Type == rbdnotify.SnapNamespaceTrash {
		return nil, objstore.ErrExists
	}
	if err := setOpFeatures(ctx, OpFeatureSnapTrash, OpFeatureSnapTrash); err != nil {
		return nil, err
	}
	r.Namespace = SnapshotNamespace{Type: rbdnotify.SnapNamespaceTrash, OriginalName: r.Name, OriginalType: r.Namespace.Type}
	r.Name = newUUID()
	return nil, ctx.OmapSet(map[string][]byte{key: cephenc.Marshal(r)})
}

// newUUID returns a random UUID in its text form (uuid_d::to_string).
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// snapshotGet returns a snapshot's SnapshotInfo (cls_rbd's snapshot_get).
// Input: u64 snap id.
func snapshotGet(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	_, r, err := readSnapInput(ctx, in)
	if err != nil {
		return nil, err
	}
	return cephenc.Marshal(SnapshotInfo{ID: r.ID, Namespace: r.Namespace, Name: r.Name,
		ImageSize: r.ImageSize, Timestamp: r.Timestamp, ChildCount: r.ChildCount}), nil
}

// getSnapshotName returns a snapshot's name. Input: u64 snap id.
func getSnapshotName(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	id, err := clsenc.Input(in, clsenc.U64)
	if err != nil {
		return nil, err
	}
	if id == NoSnap {
		return nil, objstore.ErrInvalid
	}
	r, err := readKey(ctx, snapKey(id), decSnapRecord)
	if err != nil {
		return nil, err
	}
	return cephenc.MarshalFunc(func(e *cephenc.Encoder) { e.String(r.Name) }), nil
}

// getSnapshotTimestamp returns a snapshot's creation time. Input: u64 snap id.
func getSnapshotTimestamp(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	_, r, err := readSnapInput(ctx, in)
	if err != nil {
		return nil, err
	}
	return cephenc.Marshal(r.Timestamp), nil
}

// --- client side (cls_rbd_client.cc) ---

// SnapshotAdd adds rbd.snapshot_add to op.
func SnapshotAdd(op *objstore.WriteOp, id uint64, name string, ns SnapshotNamespace) {
	exec(op, "snapshot_add", func(e *cephenc.Encoder) {
		e.String(name)
		e.U64(id)
		ns.Encode(e)
	})
}

// SnapshotRemove adds rbd.snapshot_remove to op.
func SnapshotRemove(op *objstore.WriteOp, id uint64) {
	exec(op, "snapshot_remove", func(e *cephenc.Encoder) { e.U64(id) })
}

// SnapshotTrashAdd adds rbd.snapshot_trash_add to op.
func SnapshotTrashAdd(op *objstore.WriteOp, id uint64) {
	exec(op, "snapshot_trash_add", func(e *cephenc.Encoder) { e.U64(id) })
}

// SnapshotGet returns snapshot id's info.
func SnapshotGet(ctx context.Context, r Reader, oid string, id uint64) (SnapshotInfo, error) {
	var info SnapshotInfo
	err := call(ctx, r, oid, "snapshot_get", encU64(id), func(d *cephenc.Decoder) { _ = info.Decode(d) })
	return info, err
}

// ListSnapshots returns the image's snapshots, newest first.
func ListSnapshots(ctx context.Context, r Reader, oid string) ([]SnapshotInfo, error) {
	sc, err := GetSnapContext(ctx, r, oid)
	if err != nil {
		return nil, err
	}
	if len(sc.Snaps) == 0 {
		return nil, nil
	}
	var op objstore.ReadOp
	res := make([]objstore.ExecResult, len(sc.Snaps))
	for i, id := range sc.Snaps {
		res[i] = op.Exec(className, "snapshot_get", encU64(id))
	}
	if err := r.Read(ctx, oid, &op); err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	out := make([]SnapshotInfo, len(sc.Snaps))
	for i := range res {
		if err := cephenc.Unmarshal(res[i].Out(), &out[i]); err != nil {
			return nil, fmt.Errorf("list snapshots: %w", err)
		}
	}
	return out, nil
}

// FindSnapshot returns the snapshot with this namespace and name
// (objstore.ErrNotFound if there is none).
func FindSnapshot(ctx context.Context, r Reader, oid string, ns SnapshotNamespace, name string) (SnapshotInfo, error) {
	snaps, err := ListSnapshots(ctx, r, oid)
	if err != nil {
		return SnapshotInfo{}, err
	}
	for _, s := range snaps {
		if s.Name == name && nsEqual(s.Namespace, ns) {
			return s, nil
		}
	}
	return SnapshotInfo{}, fmt.Errorf("snapshot %s@%q: %w", ns, name, objstore.ErrNotFound)
}
