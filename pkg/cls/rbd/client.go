package clsrbd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/cls/clsenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// className is the object class's name in Ceph.
const className = "rbd"

// Reader runs a compound read on one object; objstore.Pool is one.
type Reader = clsenc.Reader

func exec(op *objstore.WriteOp, method string, enc func(e *cephenc.Encoder)) {
	op.Exec(className, method, cephenc.MarshalFunc(enc))
}

// Create adds rbd.create to op (cls_client::create_image): it initialises
// an image header of size bytes in objects of 1<<order bytes named
// objectPrefix.<number>, with data in pool dataPoolID (-1: the header's
// pool; anything else needs FeatureDataPool). It fails with
// objstore.ErrExists if the header is initialised, ENOSYS for unknown
// features and objstore.ErrInvalid for a bad prefix, pool or feature set.
func Create(op *objstore.WriteOp, size uint64, order uint8, features uint64, objectPrefix string, dataPoolID int64) {
	exec(op, "create", func(e *cephenc.Encoder) {
		e.U64(size)
		e.U8(order)
		e.U64(features)
		e.String(objectPrefix)
		e.S64(dataPoolID)
	})
}

// SetSize adds rbd.set_size to op.
func SetSize(op *objstore.WriteOp, size uint64) {
	exec(op, "set_size", func(e *cephenc.Encoder) { e.U64(size) })
}

// SetFeatures adds rbd.set_features to op: the features in mask take their
// value from features. Only mutable features can change
// (objstore.ErrInvalid otherwise).
func SetFeatures(op *objstore.WriteOp, features, mask uint64) {
	exec(op, "set_features", func(e *cephenc.Encoder) {
		e.U64(features)
		e.U64(mask)
	})
}

// SetAccessTimestamp adds rbd.set_access_timestamp to op.
func SetAccessTimestamp(op *objstore.WriteOp) { exec(op, "set_access_timestamp", nil) }

// SetModifyTimestamp adds rbd.set_modify_timestamp to op.
func SetModifyTimestamp(op *objstore.WriteOp) { exec(op, "set_modify_timestamp", nil) }

// SetID adds rbd.set_id to op: it stores id in an existing, empty rbd_id
// object (objstore.ErrExists if it holds an id already). librbd precedes it
// with an exclusive create.
func SetID(op *objstore.WriteOp, id string) {
	exec(op, "set_id", func(e *cephenc.Encoder) { e.String(id) })
}

// DirAddImage adds rbd.dir_add_image to op, for the directory object. It
// fails with objstore.ErrExists if name is listed and with EBADF if id is.
func DirAddImage(op *objstore.WriteOp, name, id string) {
	exec(op, "dir_add_image", func(e *cephenc.Encoder) {
		e.String(name)
		e.String(id)
	})
}

// DirRemoveImage adds rbd.dir_remove_image to op. It fails with
// objstore.ErrNotFound if name or id is not listed and objstore.ErrStale if
// they do not map to each other.
func DirRemoveImage(op *objstore.WriteOp, name, id string) {
	exec(op, "dir_remove_image", func(e *cephenc.Encoder) {
		e.String(name)
		e.String(id)
	})
}

// DirRenameImage adds rbd.dir_rename_image to op.
func DirRenameImage(op *objstore.WriteOp, src, dest, id string) {
	exec(op, "dir_rename_image", func(e *cephenc.Encoder) {
		e.String(src)
		e.String(dest)
		e.String(id)
	})
}

// call runs one read-only method and decodes its output with dec.
func call(ctx context.Context, r Reader, oid, method string, in []byte, dec func(d *cephenc.Decoder)) error {
	d, err := clsenc.Call(ctx, r, oid, className, method, in)
	if err != nil {
		return err
	}
	dec(d)
	return d.Err()
}

func encU64(v uint64) []byte { return u64Bytes(v) }

func encString(s string) []byte {
	return cephenc.MarshalFunc(func(e *cephenc.Encoder) { e.String(s) })
}

// GetSize returns the size and order of the image head (snapID NoSnap) or of
// a snapshot.
func GetSize(ctx context.Context, r Reader, oid string, snapID uint64) (size uint64, order uint8, err error) {
	err = call(ctx, r, oid, "get_size", encU64(snapID), func(d *cephenc.Decoder) {
		order, size = decodeSize(d)
	})
	if err != nil {
		return 0, 0, fmt.Errorf("get image size: %w", err)
	}
	return size, order, nil
}

func decodeSize(d *cephenc.Decoder) (order uint8, size uint64) {
	order = d.U8()
	size = d.U64()
	return order, size
}

// GetFeatures returns the image's features and those of them a client must
// understand to open it (read-only if readOnly, else read-write).
func GetFeatures(ctx context.Context, r Reader, oid string, readOnly bool) (features, incompatible uint64, err error) {
	err = call(ctx, r, oid, "get_features", encodeGetFeatures(readOnly), func(d *cephenc.Decoder) {
		features, incompatible = d.U64(), d.U64()
	})
	if err != nil {
		return 0, 0, fmt.Errorf("get image features: %w", err)
	}
	return features, incompatible, nil
}

// encodeGetFeatures is get_features_start's input: the (deprecated) snap id
// is always NoSnap.
func encodeGetFeatures(readOnly bool) []byte {
	return cephenc.MarshalFunc(func(e *cephenc.Encoder) {
		e.U64(NoSnap)
		e.Bool(readOnly)
	})
}

// GetObjectPrefix returns the prefix of the image's data object names.
func GetObjectPrefix(ctx context.Context, r Reader, oid string) (string, error) {
	var p string
	if err := call(ctx, r, oid, "get_object_prefix", nil, func(d *cephenc.Decoder) { p = d.Str() }); err != nil {
		return "", fmt.Errorf("get image object prefix: %w", err)
	}
	return p, nil
}

// GetDataPool returns the id of the image's data pool, -1 if its data is in
// the header's pool.
func GetDataPool(ctx context.Context, r Reader, oid string) (int64, error) {
	var id int64
	if err := call(ctx, r, oid, "get_data_pool", nil, func(d *cephenc.Decoder) { id = d.S64() }); err != nil {
		return 0, fmt.Errorf("get image data pool: %w", err)
	}
	return id, nil
}

// errBadSnapContext is returned for a snapshot context that decodes but is
// not valid, which librbd rejects with EBADMSG.
var errBadSnapContext = errors.New("invalid snapshot context")

// GetSnapContext returns the image's snapshot context.
func GetSnapContext(ctx context.Context, r Reader, oid string) (SnapContext, error) {
	var c SnapContext
	if err := call(ctx, r, oid, "get_snapcontext", nil, func(d *cephenc.Decoder) { _ = c.Decode(d) }); err != nil {
		return SnapContext{}, fmt.Errorf("get image snap context: %w", err)
	}
	if !c.Valid() {
		return SnapContext{}, fmt.Errorf("get image snap context: %w: %+v", errBadSnapContext, c)
	}
	return c, nil
}

// GetParent returns the parent of the image head (snapID NoSnap) or of a
// snapshot (legacy get_parent; Ceph refuses it with EXDEV for a parent in
// another pool namespace).
func GetParent(ctx context.Context, r Reader, oid string, snapID uint64) (ParentInfo, error) {
	var p ParentInfo
	if err := call(ctx, r, oid, "get_parent", encU64(snapID), func(d *cephenc.Decoder) { p = decodeParentInfo(d) }); err != nil {
		return ParentInfo{}, fmt.Errorf("get image parent: %w", err)
	}
	return p, nil
}

func decodeParentInfo(d *cephenc.Decoder) ParentInfo {
	return ParentInfo{PoolID: d.S64(), ImageID: d.Str(), SnapID: d.U64(), Overlap: d.U64()}
}

// GetStripeUnitCount returns the striping of an image with FeatureStripingV2
// (ENOEXEC without it).
func GetStripeUnitCount(ctx context.Context, r Reader, oid string) (unit, count uint64, err error) {
	err = call(ctx, r, oid, "get_stripe_unit_count", nil, func(d *cephenc.Decoder) { unit, count = d.U64(), d.U64() })
	if err != nil {
		return 0, 0, fmt.Errorf("get image striping: %w", err)
	}
	return unit, count, nil
}

func getTime(ctx context.Context, r Reader, oid, method string) (time.Time, error) {
	var u UTime
	if err := call(ctx, r, oid, method, nil, func(d *cephenc.Decoder) { _ = u.Decode(d) }); err != nil {
		return time.Time{}, fmt.Errorf("%s: %w", method, err)
	}
	return u.Time(), nil
}

// GetCreateTimestamp returns when the image was created (the epoch for
// images older than the key).
func GetCreateTimestamp(ctx context.Context, r Reader, oid string) (time.Time, error) {
	return getTime(ctx, r, oid, "get_create_timestamp")
}

// GetAccessTimestamp returns the image's last recorded access time.
func GetAccessTimestamp(ctx context.Context, r Reader, oid string) (time.Time, error) {
	return getTime(ctx, r, oid, "get_access_timestamp")
}

// GetModifyTimestamp returns the image's last recorded modification time.
func GetModifyTimestamp(ctx context.Context, r Reader, oid string) (time.Time, error) {
	return getTime(ctx, r, oid, "get_modify_timestamp")
}

// GetAllFeatures returns every feature the class supports (librbd asks the
// directory object before creating an image, to drop default features an
// old OSD lacks).
func GetAllFeatures(ctx context.Context, r Reader, oid string) (uint64, error) {
	var f uint64
	if err := call(ctx, r, oid, "get_all_features", nil, func(d *cephenc.Decoder) { f = d.U64() }); err != nil {
		return 0, fmt.Errorf("get all image features: %w", err)
	}
	return f, nil
}

// GetID returns the id stored in an rbd_id object.
func GetID(ctx context.Context, r Reader, oid string) (string, error) {
	var id string
	if err := call(ctx, r, oid, "get_id", nil, func(d *cephenc.Decoder) { id = d.Str() }); err != nil {
		return "", fmt.Errorf("get image id: %w", err)
	}
	return id, nil
}

// DirGetID returns the id of image name from the directory object oid.
func DirGetID(ctx context.Context, r Reader, oid, name string) (string, error) {
	var id string
	if err := call(ctx, r, oid, "dir_get_id", encString(name), func(d *cephenc.Decoder) { id = d.Str() }); err != nil {
		return "", fmt.Errorf("look up id of image %q: %w", name, err)
	}
	return id, nil
}

// DirGetName returns the name of image id from the directory object oid.
func DirGetName(ctx context.Context, r Reader, oid, id string) (string, error) {
	var name string
	if err := call(ctx, r, oid, "dir_get_name", encString(id), func(d *cephenc.Decoder) { name = d.Str() }); err != nil {
		return "", fmt.Errorf("look up name of image %s: %w", id, err)
	}
	return name, nil
}

// DirEntry is one image of a directory listing.
type DirEntry struct {
	Name string
	ID   string
}

// DirList returns up to max images listed after startAfter in the directory
// object oid, in name order. A missing directory fails with
// objstore.ErrNotFound (librbd treats that as an empty pool).
func DirList(ctx context.Context, r Reader, oid, startAfter string, max uint64) ([]DirEntry, error) {
	in := cephenc.MarshalFunc(func(e *cephenc.Encoder) {
		e.String(startAfter)
		e.U64(max)
	})
	var images []DirEntry
	if err := call(ctx, r, oid, "dir_list", in, func(d *cephenc.Decoder) { images = decodeDirEntries(d) }); err != nil {
		return nil, fmt.Errorf("list image directory: %w", err)
	}
	return images, nil
}

// decodeDirEntries decodes a map<string, string>.
func decodeDirEntries(d *cephenc.Decoder) []DirEntry {
	n := d.Count(8)
	if n == 0 {
		return nil
	}
	images := make([]DirEntry, 0, n)
	for range n {
		name, id := d.Str(), d.Str()
		if d.Err() != nil {
			return nil
		}
		images = append(images, DirEntry{Name: name, ID: id})
	}
	return images
}

// GetImmutableMetadata reads the image's object prefix and order in one
// operation (get_size and get_object_prefix, as librbd's
// get_immutable_metadata did).
func GetImmutableMetadata(ctx context.Context, r Reader, oid string) (objectPrefix string, order uint8, err error) {
	var op objstore.ReadOp
	sz := op.Exec(className, "get_size", encU64(NoSnap))
	pr := op.Exec(className, "get_object_prefix", nil)
	if err := r.Read(ctx, oid, &op); err != nil {
		return "", 0, fmt.Errorf("get immutable image metadata: %w", err)
	}
	ds, dp := cephenc.NewDecoder(sz.Out()), cephenc.NewDecoder(pr.Out())
	order, _ = decodeSize(ds)
	objectPrefix = dp.Str()
	if err := errors.Join(ds.Err(), dp.Err()); err != nil {
		return "", 0, fmt.Errorf("get immutable image metadata: %w", err)
	}
	return objectPrefix, order, nil
}

// MutableMetadata is what can change while an image is open.
type MutableMetadata struct {
	Size         uint64
	Features     uint64
	Incompatible uint64 // features a client must understand (see GetFeatures)
	SnapContext  SnapContext
	Parent       ParentInfo
}

// GetMutableMetadata reads the image's size, features, snapshot context
// and parent in one operation, as librbd's refresh does (minus the lock
// state and flags, which this package does not cover).
func GetMutableMetadata(ctx context.Context, r Reader, oid string, readOnly bool) (MutableMetadata, error) {
	var op objstore.ReadOp
	sz := op.Exec(className, "get_size", encU64(NoSnap))
	ft := op.Exec(className, "get_features", encodeGetFeatures(readOnly))
	sc := op.Exec(className, "get_snapcontext", nil)
	pa := op.Exec(className, "get_parent", encU64(NoSnap))
	if err := r.Read(ctx, oid, &op); err != nil {
		return MutableMetadata{}, fmt.Errorf("get mutable image metadata: %w", err)
	}
	var m MutableMetadata
	ds, df, dc, dpa := cephenc.NewDecoder(sz.Out()), cephenc.NewDecoder(ft.Out()), cephenc.NewDecoder(sc.Out()), cephenc.NewDecoder(pa.Out())
	_, m.Size = decodeSize(ds)
	m.Features, m.Incompatible = df.U64(), df.U64()
	_ = m.SnapContext.Decode(dc)
	m.Parent = decodeParentInfo(dpa)
	if err := errors.Join(ds.Err(), df.Err(), dc.Err(), dpa.Err()); err != nil {
		return MutableMetadata{}, fmt.Errorf("get mutable image metadata: %w", err)
	}
	if !m.SnapContext.Valid() {
		return MutableMetadata{}, fmt.Errorf("get mutable image metadata: %w: %+v", errBadSnapContext, m.SnapContext)
	}
	return m, nil
}
