package clsrbd

import (
	"context"
	"errors"
	"sort"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/cls/clsenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
)

// Clone format 2 (librbd's CloneRequest without snapshot protection), as
// cls_rbd keeps it:
//
//   - the parent's header lists the children of a snapshot under
//     "snap_children_<snap id in 16 hex digits>" (a set of ChildImageSpec)
//     and counts them in the snapshot record (child_count); a parent with
//     children carries the clone-parent operation feature, a child the
//     clone-child one (op_features, with the "operations" feature bit).

const snapChildrenKeyPrefix = "snap_children_"

func snapChildrenKey(id uint64) string { return cephenc.HexKey(snapChildrenKeyPrefix, id) }

// ChildImageSpec names a clone (cls::rbd::ChildImageSpec).
type ChildImageSpec struct {
	PoolID        int64
	PoolNamespace string
	ImageID       string
}

// Encode writes s as Nautilus and later do (version 2).
func (s ChildImageSpec) Encode(e *cephenc.Encoder) {
	m := e.Start(2, 1)
	e.S64(s.PoolID)
	e.String(s.ImageID)
	e.String(s.PoolNamespace)
	e.Finish(m)
}

// Decode reads version 1 or 2.
func (s *ChildImageSpec) Decode(d *cephenc.Decoder) error {
	st := d.Start(2)
	*s = ChildImageSpec{PoolID: d.S64(), ImageID: d.Str()}
	if st.Version >= 2 {
		s.PoolNamespace = d.Str()
	}
	d.Finish(st)
	return d.Err()
}

// less orders specs as std::set<ChildImageSpec> does.
func (s ChildImageSpec) less(o ChildImageSpec) bool {
	if s.PoolID != o.PoolID {
		return s.PoolID < o.PoolID
	}
	if s.PoolNamespace != o.PoolNamespace {
		return s.PoolNamespace < o.PoolNamespace
	}
	return s.ImageID < o.ImageID
}

func encodeChildren(e *cephenc.Encoder, l []ChildImageSpec) {
	sort.Slice(l, func(i, j int) bool { return l[i].less(l[j]) })
	cephenc.EncodeList(e, l)
}

func decChildren(d *cephenc.Decoder) ([]ChildImageSpec, error) {
	return cephenc.DecodeList[ChildImageSpec](d, 18)
}

// readChildInput decodes u64 snap id, ChildImageSpec and reads the
// snapshot's record and children.
func readChildInput(ctx objstore.MethodContext, in []byte) (string, SnapRecord, ChildImageSpec, []ChildImageSpec, error) {
	d := cephenc.NewDecoder(in)
	id := d.U64()
	var c ChildImageSpec
	_ = c.Decode(d)
	if err := clsenc.BadInput(d.Err()); err != nil {
		return "", SnapRecord{}, c, nil, err
	}
	key := snapKey(id)
	r, err := readKey(ctx, key, decSnapRecord)
	if err != nil {
		return "", r, c, nil, err
	}
	children, err := readKey(ctx, snapChildrenKey(id), decChildren)
	if err != nil && !isNotFound(err) {
		return "", r, c, nil, err
	}
	return key, r, c, children, nil
}

// childAttach is cls_rbd's child_attach: the clone is recorded under the
// snapshot, its child_count raised, and the image becomes a clone parent.
// ENOENT for a snapshot in the trash, EEXIST for a child already attached.
func childAttach(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	key, r, c, children, err := readChildInput(ctx, in)
	if err != nil {
		return nil, err
	}
	if r.Namespace.Type == rbdnotify.SnapNamespaceTrash {
		return nil, objstore.ErrNotFound
	}
	for _, o := range children {
		if o == c {
			return nil, objstore.ErrExists
		}
	}
	children = append(children, c)
	r.ChildCount++
	if err := ctx.OmapSet(map[string][]byte{
		snapChildrenKey(r.ID): cephenc.MarshalFunc(func(e *cephenc.Encoder) { encodeChildren(e, children) }),
		key:                   cephenc.Marshal(r),
	}); err != nil {
		return nil, err
	}
	return nil, setOpFeatures(ctx, OpFeatureCloneParent, OpFeatureCloneParent)
}

// childDetach is cls_rbd's child_detach: the reverse of childAttach; the
// clone-parent feature goes with the image's last child. ENOENT for a
// child that is not attached, EINVAL if the count and the list disagree.
func childDetach(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	key, r, c, children, err := readChildInput(ctx, in)
	if err != nil {
		return nil, err
	}
	if int(r.ChildCount) != len(children) {
		return nil, objstore.ErrInvalid
	}
	i := -1
	for j, o := range children {
		if o == c {
			i = j
		}
	}
	if i < 0 {
		return nil, objstore.ErrNotFound
	}
	children = append(children[:i], children[i+1:]...)
	if len(children) == 0 {
		if err := ctx.OmapRemove(snapChildrenKey(r.ID)); err != nil {
			return nil, err
		}
	} else if err := ctx.OmapSet(map[string][]byte{snapChildrenKey(r.ID): cephenc.MarshalFunc(func(e *cephenc.Encoder) { encodeChildren(e, children) })}); err != nil {
		return nil, err
	}
	r.ChildCount--
	if err := ctx.OmapSet(map[string][]byte{key: cephenc.Marshal(r)}); err != nil {
		return nil, err
	}
	if r.ChildCount > 0 {
		return nil, nil
	}
	inUse := false
	if err := forEachSnap(ctx, func(_ string, o SnapRecord) error {
		inUse = inUse || o.ID != r.ID && o.ChildCount > 0
		return nil
	}); err != nil {
		return nil, err
	}
	if inUse {
		return nil, nil
	}
	return nil, setOpFeatures(ctx, 0, OpFeatureCloneParent)
}

// childrenList is cls_rbd's children_list: the snapshot's children (ENOENT
// if it has none).
func childrenList(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	id, err := clsenc.Input(in, clsenc.U64)
	if err != nil {
		return nil, err
	}
	if _, err := readKey(ctx, snapKey(id), decSnapRecord); err != nil {
		return nil, err
	}
	children, err := readKey(ctx, snapChildrenKey(id), decChildren)
	if err != nil {
		return nil, err
	}
	return cephenc.MarshalFunc(func(e *cephenc.Encoder) { encodeChildren(e, children) }), nil
}

// opFeaturesGet is cls_rbd's op_features_get (0 without the key).
func opFeaturesGet(ctx objstore.MethodContext, _ []byte) ([]byte, error) {
	v, err := readKey(ctx, keyOpFeatures, clsenc.U64)
	if isNotFound(err) {
		v, err = 0, nil
	}
	if err != nil {
		return nil, err
	}
	return u64Bytes(v), nil
}

// opFeaturesSet is cls_rbd's op_features_set: u64 op features, u64 mask
// (EINVAL for unknown bits).
func opFeaturesSet(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	d := cephenc.NewDecoder(in)
	f, mask := d.U64(), d.U64()
	if err := clsenc.BadInput(d.Err()); err != nil {
		return nil, err
	}
	const all = OpFeatureCloneParent | OpFeatureCloneChild | OpFeatureGroup | OpFeatureSnapTrash
	if mask&^all != 0 {
		return nil, objstore.ErrInvalid
	}
	return nil, setOpFeatures(ctx, f, mask)
}

// removeParent is cls_rbd's remove_parent (what librbd's flatten runs):
// the image's parent link goes. ENOENT without a parent, ENOEXEC without
// layering. While snapshots of the image still map onto the parent the
// link stays for them and only the head's overlap goes (cls_rbd's
// parent_detach).
func removeParent(ctx objstore.MethodContext, _ []byte) ([]byte, error) {
	if err := checkExists(ctx); err != nil {
		return nil, err
	}
	if err := requireFeature(ctx, FeatureLayering); err != nil {
		return nil, err
	}
	p, err := readKey(ctx, keyParent, decParent)
	if err != nil {
		return nil, err
	}
	snapsUseParent := false
	if err := forEachSnap(ctx, func(_ string, r SnapRecord) error {
		snapsUseParent = snapsUseParent || r.ParentOverlap != nil
		return nil
	}); err != nil {
		return nil, err
	}
	if snapsUseParent {
		p.headOverlap = nil
		if err := clsenc.WriteKey(ctx, keyParent, p.encode); err != nil {
			return nil, err
		}
	} else {
		if err := ctx.OmapRemove(keyParent); err != nil {
			return nil, err
		}
		if err := setOpFeatures(ctx, 0, OpFeatureCloneChild); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

// --- client side ---

func encChild(snapID uint64, c ChildImageSpec) func(e *cephenc.Encoder) {
	return func(e *cephenc.Encoder) {
		e.U64(snapID)
		c.Encode(e)
	}
}

// ChildAttach adds rbd.child_attach to op (on the parent's header).
func ChildAttach(op *objstore.WriteOp, snapID uint64, c ChildImageSpec) {
	exec(op, "child_attach", encChild(snapID, c))
}

// ChildDetach adds rbd.child_detach to op (on the parent's header).
func ChildDetach(op *objstore.WriteOp, snapID uint64, c ChildImageSpec) {
	exec(op, "child_detach", encChild(snapID, c))
}

// ChildrenList returns the clones of snapshot snapID (none: an empty list).
func ChildrenList(ctx context.Context, r Reader, oid string, snapID uint64) ([]ChildImageSpec, error) {
	var out []ChildImageSpec
	err := call(ctx, r, oid, "children_list", encU64(snapID), func(d *cephenc.Decoder) { out, _ = decChildren(d) })
	if errors.Is(err, objstore.ErrNotFound) {
		if _, serr := SnapshotGet(ctx, r, oid, snapID); serr == nil {
			return nil, nil
		}
	}
	return out, err
}

// OpFeaturesSet adds rbd.op_features_set to op.
func OpFeaturesSet(op *objstore.WriteOp, features, mask uint64) {
	exec(op, "op_features_set", func(e *cephenc.Encoder) {
		e.U64(features)
		e.U64(mask)
	})
}

// OpFeaturesGet returns the image's operation features.
func OpFeaturesGet(ctx context.Context, r Reader, oid string) (uint64, error) {
	var v uint64
	err := call(ctx, r, oid, "op_features_get", nil, func(d *cephenc.Decoder) { v = d.U64() })
	return v, err
}

// RemoveParent adds rbd.remove_parent to op (on a clone's header).
func RemoveParent(op *objstore.WriteOp) { exec(op, "remove_parent", nil) }
