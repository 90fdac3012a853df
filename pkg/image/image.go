// Package image is an RBD format-2 image over an object store: the image's
// metadata read through cls_rbd calls, and block I/O mapped onto its data
// objects "<object prefix>.<object number as 16 hex digits>" with the
// default striping (one object after another, each 1<<order bytes).
//
// Open and the I/O methods work on any objstore.Pool, so they serve images
// created by librbd on a real cluster as well as images on the local
// backend. Create, Remove, Resize and List manage images the way librbd does
// (same objects, same omap entries), for backends without librbd; on Ceph
// the driver manages images through librbd instead.
//
// Image I/O is not journaled here: the journaled block device layers the
// journal over an Image.
package image

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Errors callers branch on; returned errors wrap them with context.
var (
	// ErrNotFound: the image does not exist.
	ErrNotFound = errors.New("image not found")
	// ErrExists: an image with that name exists.
	ErrExists = errors.New("image already exists")
	// ErrBusy: the image is in use (its header has watchers).
	ErrBusy = errors.New("image in use")
	// ErrOutOfRange: an I/O extent reaches beyond the end of the image.
	ErrOutOfRange = errors.New("I/O out of image range")
	// ErrInvalid: an argument is invalid (a bad name, size, order or
	// feature combination).
	ErrInvalid = errors.New("invalid argument")
	// ErrUnsupported: the image uses something this package cannot serve
	// correctly (a parent, object map, fancy striping, a data pool, ...),
	// or it cannot be written (a non-primary mirror image).
	ErrUnsupported = errors.New("unsupported image")
)

// Limits of an image's order (librbd's CreateRequest::validate_order).
const (
	MinOrder = 12
	MaxOrder = 25
)

// unservedFeatures are features whose on-disk state this package does not
// maintain or whose data layout it does not implement: opening such an
// image fails rather than corrupting it.
const unservedFeatures = clsrbd.FeatureObjectMap | clsrbd.FeatureFastDiff |
	clsrbd.FeatureDataPool | clsrbd.FeatureMigrating | clsrbd.FeatureDirtyCache

// maxParallel bounds the per-object operations one I/O call runs at once.
const maxParallel = 16

// Image is an open RBD image. Its methods are safe for concurrent use.
type Image struct {
	pool         objstore.Pool
	name, id     string
	headerOID    string
	objectPrefix string
	order        uint8

	mu       sync.RWMutex
	size     int64
	features uint64
	snapc    clsrbd.SnapContext
	readOnly error       // why writes are refused, nil if they are not
	lazy     bool        // data writes may complete before they are durable
	parent   *parentLink // a clone's parent (parent.go), nil otherwise

	depth    int      // the image's place in a parent chain (0: opened)
	copiedUp sync.Map // data objects known to exist (copied up), of a clone

	writes combiner // concurrent writes to one object share an operation
}

// SetLazyWrites lets data writes (WriteAt, Discard, WriteZeroes) complete
// before they are durable (objstore.WriteOp.SetLazy): they become durable
// with the pool client's next non-lazy operation. For a journaled image the
// journal keeps every such write until the commit position moves past it,
// and that move is a non-lazy operation of the same client.
func (img *Image) SetLazyWrites(lazy bool) {
	img.mu.Lock()
	defer img.mu.Unlock()
	img.lazy = lazy
}

// SetWriteLinger makes a data write to an object with no write in flight
// wait d for later writes to the same object to join its operation (0, the
// default: send at once). Writes then complete up to d later but cost the
// store far fewer operations; for callers that do not wait on their
// writes, such as a journaled device applying what its journal holds.
func (img *Image) SetWriteLinger(d time.Duration) {
	img.writes.mu.Lock()
	defer img.writes.mu.Unlock()
	img.writes.linger = d
}

func (img *Image) newWriteOp() *objstore.WriteOp {
	img.mu.RLock()
	defer img.mu.RUnlock()
	op := &objstore.WriteOp{}
	if img.lazy {
		op.SetLazy()
	}
	// Every data write carries the image's snapshot context, so that the
	// store preserves the objects' state as of each snapshot
	// (clone-on-write), as librbd's writes do.
	if sc := img.snapc; sc.Seq != 0 || len(sc.Snaps) != 0 {
		op.SetSnapContext(objstore.SnapContext{Seq: sc.Seq, Snaps: sc.Snaps})
	}
	return op
}

// Open opens image name in pool: it looks up the id from rbd_id.<name> and
// reads the header, as librbd's open does.
func Open(ctx context.Context, pool objstore.Pool, name string) (*Image, error) {
	id, err := clsrbd.GetID(ctx, pool, clsrbd.IDOID(name))
	if err != nil {
		return nil, fmt.Errorf("open image %q: %w", name, notFound(err))
	}
	return openID(ctx, pool, name, id, 0)
}

// openID opens the image with id (named name) at depth of a parent chain.
func openID(ctx context.Context, pool objstore.Pool, name, id string, depth int) (*Image, error) {
	img := &Image{pool: pool, name: name, id: id, headerOID: clsrbd.HeaderOID(id), depth: depth}
	prefix, order, err := clsrbd.GetImmutableMetadata(ctx, pool, img.headerOID)
	if err != nil {
		return nil, fmt.Errorf("open image %q: %w", name, notFound(err))
	}
	if order < MinOrder || order > MaxOrder {
		return nil, fmt.Errorf("open image %q: order %d: %w", name, order, ErrUnsupported)
	}
	img.objectPrefix, img.order = prefix, order
	if err := img.Refresh(ctx); err != nil {
		return nil, fmt.Errorf("open image %q: %w", name, err)
	}
	return img, nil
}

// notFound maps a missing object to ErrNotFound, keeping the cause.
func notFound(err error) error {
	if errors.Is(err, objstore.ErrNotFound) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}

// Refresh re-reads what can change while the image is open (size,
// features, snapshots), as librbd does after a header update notification.
func (img *Image) Refresh(ctx context.Context) error {
	m, err := clsrbd.GetMutableMetadata(ctx, img.pool, img.headerOID, false)
	if err != nil {
		return fmt.Errorf("refresh image %q: %w", img.name, notFound(err))
	}
	readOnly, err := img.checkServable(ctx, m)
	if err != nil {
		return fmt.Errorf("refresh image %q: %w", img.name, err)
	}
	parent, err := img.refreshParent(ctx, m.Parent)
	if err != nil {
		return fmt.Errorf("refresh image %q: %w", img.name, err)
	}
	img.mu.Lock()
	img.parent = parent
	img.size = int64(m.Size)
	img.features = m.Features
	img.snapc = m.SnapContext
	img.readOnly = readOnly
	img.mu.Unlock()
	return nil
}

// checkServable fails for images this package cannot read correctly and
// returns why writes must be refused for images it can only read.
func (img *Image) checkServable(ctx context.Context, m clsrbd.MutableMetadata) (readOnly, err error) {
	// librbd refuses only unknown incompatible features; an unknown
	// feature the server does not flag may still change the layout for
	// all this package knows, so refuse those too.
	if unknown := (m.Features | m.Incompatible) &^ clsrbd.FeaturesAll; unknown != 0 {
		return nil, fmt.Errorf("unknown features 0x%x: %w", unknown, ErrUnsupported)
	}
	if f := m.Features & unservedFeatures; f != 0 {
		return nil, fmt.Errorf("features %v: %w", clsrbd.FeatureNames(f), ErrUnsupported)
	}
	if m.Size > math.MaxInt64 {
		return nil, fmt.Errorf("size %d: %w", m.Size, ErrUnsupported)
	}
	// Clones are served: unwritten extents read from the parent, which
	// writes copy up first (parent.go).
	if m.Features&clsrbd.FeatureStripingV2 != 0 {
		unit, count, err := clsrbd.GetStripeUnitCount(ctx, img.pool, img.headerOID)
		if err != nil {
			return nil, err
		}
		if unit != 1<<img.order || count != 1 {
			return nil, fmt.Errorf("striping %d x %d: %w", unit, count, ErrUnsupported)
		}
	}
	// Snapshots are served: data writes carry the snapshot context (see
	// newWriteOp).
	if m.Features&clsrbd.FeatureNonPrimary != 0 {
		return fmt.Errorf("non-primary mirror image: %w", ErrUnsupported), nil
	}
	return nil, nil
}

// Name returns the image's name.
func (img *Image) Name() string { return img.name }

// ID returns the image's id (also its journal's id).
func (img *Image) ID() string { return img.id }

// Order returns log2 of the object size.
func (img *Image) Order() uint8 { return img.order }

// ObjectSize returns the size of the image's data objects.
func (img *Image) ObjectSize() int64 { return 1 << img.order }

// ObjectPrefix returns the common prefix of the data object names.
func (img *Image) ObjectPrefix() string { return img.objectPrefix }

// Size returns the image size in bytes as of the last Open or Refresh.
func (img *Image) Size() int64 {
	img.mu.RLock()
	defer img.mu.RUnlock()
	return img.size
}

// Features returns the image's feature bits (clsrbd.Feature*).
func (img *Image) Features() uint64 {
	img.mu.RLock()
	defer img.mu.RUnlock()
	return img.features
}

// SnapContext returns the image's snapshot context.
func (img *Image) SnapContext() clsrbd.SnapContext {
	img.mu.RLock()
	defer img.mu.RUnlock()
	return img.snapc
}

// DataOID returns the name of data object n.
func (img *Image) DataOID(n uint64) string { return dataOID(img.objectPrefix, n) }

// dataOID is librbd's util::data_object_name for format 2:
// "<prefix>.<n as %016x>".
func dataOID(prefix string, n uint64) string {
	b := make([]byte, 0, len(prefix)+17)
	b = append(b, prefix...)
	b = append(b, '.')
	var hex [16]byte
	s := strconv.AppendUint(hex[:0], n, 16)
	for range 16 - len(s) {
		b = append(b, '0')
	}
	return string(append(b, s...))
}

// objectNumber parses the number of a data object named prefix.<16 hex
// digits>.
func objectNumber(prefix, oid string) (uint64, bool) {
	if len(oid) != len(prefix)+17 || oid[:len(prefix)] != prefix || oid[len(prefix)] != '.' {
		return 0, false
	}
	digits := oid[len(prefix)+1:]
	for _, c := range []byte(digits) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(digits, 16, 64)
	return n, err == nil
}
