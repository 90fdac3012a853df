package image

import (
	"context"
	"errors"
	"fmt"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
)

// Clones (RBD layering), as librbd serves them: a clone's header names its
// parent (an image and one of its snapshots, in the same pool here) and
// the overlap, the bytes of the clone that map onto the parent.
//
//   - A read of a data object the clone lacks reads the parent at the
//     parent snapshot for the part within the overlap (zeros beyond), as
//     librbd's ObjectReadRequest does; the parent may be a clone itself.
//   - Before the first write to such an object (within the overlap) the
//     parent's data for the whole object is copied up with cls rbd.copyup,
//     which writes it only if the object still does not exist (librbd's
//     CopyupRequest); then the write runs. An object whose parent data is
//     all zeros needs no copy-up: reading it from the parent or from a
//     missing object gives the same zeros. Writes coming from journal
//     replay take the same path, and a crash between the copy-up and the
//     write leaves the object with the parent's data (the write was not
//     acknowledged; replay writes it again).
//   - A discard within the overlap never removes an object (that would
//     expose the parent's data): the object is copied up and truncated or
//     zeroed instead.
//
// Limits: the parent must be in the clone's pool (no pool namespaces);
// reads at a snapshot of the clone use the head's parent and overlap;
// chains are followed up to maxParentDepth images.

// maxParentDepth bounds the parent chain an image may have (librbd has no
// limit; ceph-csi's hard limit for its own chains is 8).
const maxParentDepth = 16

// parentLink is an open clone's parent.
type parentLink struct {
	img     *Image
	snapID  uint64
	overlap int64
}

// ErrParentElsewhere: a clone's parent is in another pool, which this
// package does not serve.
var ErrParentElsewhere = errors.New("parent image in another pool")

// refreshParent opens (or keeps) the parent m names and records the overlap.
func (img *Image) refreshParent(ctx context.Context, p clsrbd.ParentInfo) (*parentLink, error) {
	if !p.HasParent() {
		return nil, nil
	}
	if p.PoolID != img.pool.ID() {
		return nil, fmt.Errorf("clone of image %s in pool %d: %w: %w", p.ImageID, p.PoolID, ErrParentElsewhere, ErrUnsupported)
	}
	img.mu.RLock()
	cur := img.parent
	img.mu.RUnlock()
	if cur != nil && cur.img.id == p.ImageID && cur.snapID == p.SnapID {
		return &parentLink{img: cur.img, snapID: p.SnapID, overlap: int64(p.Overlap)}, nil
	}
	if img.depth >= maxParentDepth {
		return nil, fmt.Errorf("clone chain deeper than %d images: %w", maxParentDepth, ErrUnsupported)
	}
	name, err := clsrbd.DirGetName(ctx, img.pool, clsrbd.DirectoryOID, p.ImageID)
	if err != nil {
		name = p.ImageID // a parent in the trash has no directory entry
	}
	parent, err := openID(ctx, img.pool, name, p.ImageID, img.depth+1)
	if err != nil {
		return nil, fmt.Errorf("open parent image %s: %w", p.ImageID, err)
	}
	parent.readOnly = errors.New("parent image (read-only)")
	return &parentLink{img: parent, snapID: p.SnapID, overlap: int64(p.Overlap)}, nil
}

// parentOf returns the image's parent link (nil if it is not a clone).
func (img *Image) parentOf() *parentLink {
	img.mu.RLock()
	defer img.mu.RUnlock()
	return img.parent
}

// Parent describes the image's parent: its id, snapshot id and the
// overlap; ok is false if the image is not a clone.
func (img *Image) Parent() (imageID string, snapID uint64, overlap int64, ok bool) {
	p := img.parentOf()
	if p == nil {
		return "", 0, 0, false
	}
	return p.img.id, p.snapID, p.overlap, true
}

// readParent fills buf, the image bytes at off of an object the image
// lacks, from the parent within the overlap (zeros beyond).
func (img *Image) readParent(ctx context.Context, p *parentLink, buf []byte, off int64) error {
	n := int64(len(buf))
	if off >= p.overlap {
		clear(buf)
		return nil
	}
	in := min(n, p.overlap-off)
	if _, err := p.img.readAt(ctx, buf[:in], off, p.snapID); err != nil {
		return fmt.Errorf("read parent %s@%d: %w", p.img.name, p.snapID, err)
	}
	clear(buf[in:])
	return nil
}

// copyupObject copies the parent's data for object objNo up into the
// image unless the object is known to exist, or lies beyond the overlap.
func (img *Image) copyupObject(ctx context.Context, objNo uint64) error {
	p := img.parentOf()
	if p == nil {
		return nil
	}
	start := int64(objNo) << img.order
	if start >= p.overlap {
		return nil
	}
	if _, ok := img.copiedUp.Load(objNo); ok {
		return nil
	}
	buf := make([]byte, min(int64(1)<<img.order, p.overlap-start))
	if err := img.readParent(ctx, p, buf, start); err != nil {
		return err
	}
	if !isZero(buf) {
		op := img.newWriteOp()
		clsrbd.Copyup(op, buf)
		oid := img.DataOID(objNo)
		if err := img.pool.Operate(ctx, oid, op); err != nil {
			return fmt.Errorf("copy-up %s: %w", oid, err)
		}
	}
	img.copiedUp.Store(objNo, true)
	return nil
}

// inOverlap reports whether object-relative [objOff, objOff+n) of object
// objNo maps onto the parent.
func (img *Image) inOverlap(objNo, objOff uint64) bool {
	p := img.parentOf()
	return p != nil && int64(objNo<<img.order+objOff) < p.overlap
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
