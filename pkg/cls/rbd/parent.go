package clsrbd

import (
	"fmt"
	"syscall"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/cls/clsenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Layering (clones): the child's header records its parent (the "parent"
// key: pool, image id, snapshot, overlap); data objects the child lacks
// read from the parent at that snapshot within the overlap, and the first
// write to such an object copies the parent's data up first (copyup).

// copyup is cls_rbd's copyup, run on a data object: if the object does not
// exist, write the input (the parent's data for the object); if it exists
// (a copy-up or write won the race), do nothing.
func copyup(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	if len(in) == 0 {
		return nil, nil
	}
	_, err := ctx.Stat()
	switch {
	case err == nil:
		return nil, nil
	case !isNotFound(err):
		return nil, err
	}
	return nil, ctx.Write(0, in)
}

// setParent is cls_rbd's legacy set_parent: s64 pool id, string image id,
// u64 snap id, u64 size (the overlap). EEXIST if the image has a parent,
// ENOEXEC without the layering feature, EINVAL for a bad spec.
func setParent(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	d := cephenc.NewDecoder(in)
	p := parentRecord{poolID: d.S64(), imageID: d.Str(), snapID: d.U64()}
	size := d.U64()
	if err := clsenc.BadInput(d.Err()); err != nil {
		return nil, err
	}
	if err := checkExists(ctx); err != nil {
		return nil, err
	}
	if err := requireFeature(ctx, FeatureLayering); err != nil {
		return nil, err
	}
	if p.poolID < 0 || p.imageID == "" || p.snapID == NoSnap {
		return nil, fmt.Errorf("set_parent: invalid parent spec: %w", syscall.EINVAL)
	}
	if _, err := readKey(ctx, keyParent, decParent); err == nil {
		return nil, fmt.Errorf("set_parent: image has a parent: %w", syscall.EEXIST)
	} else if !isNotFound(err) {
		return nil, err
	}
	p.headOverlap = &size
	return nil, ctx.OmapSet(map[string][]byte{keyParent: cephenc.MarshalFunc(p.encode)})
}

// Copyup adds cls rbd.copyup to op (on a data object): data is written
// only if the object does not exist.
func Copyup(op *objstore.WriteOp, data []byte) { op.Exec(className, "copyup", data) }

// SetParent adds the legacy set_parent to op (on an image header): the
// image becomes a clone of poolID/imageID@snapID with overlap bytes.
func SetParent(op *objstore.WriteOp, poolID int64, imageID string, snapID, overlap uint64) {
	exec(op, "set_parent", func(e *cephenc.Encoder) {
		e.S64(poolID)
		e.String(imageID)
		e.U64(snapID)
		e.U64(overlap)
	})
}
