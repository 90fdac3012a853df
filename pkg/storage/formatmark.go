package storage

import (
	"context"
	"errors"
	"fmt"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// MetaFormatBlank is the image metadata key (`rbd image-meta`) that allows
// the node to make a filesystem on the volume when it reads as blank.
//
// A device that reads as blank is not proof that a volume never held data:
// a mirror replica that never synced, a promoted copy of a lost site or a
// data pool that lost its objects read as zeros too, and formatting them
// destroys what recovery could still find (and hides that it is missing).
// So the node formats only a volume that is known to be new:
//
//   - CreateVolume sets the key to the image's id (FormatBlankNew) right
//     after creating the image, for volumes that may be mounted;
//   - NodeStageVolume formats a blank device only if the key holds that
//     image's own id, or "true" (an operator's deliberate override), and
//     removes the key once the device holds a filesystem (whenever it finds
//     one: a crash between mkfs and the removal leaves a device that is no
//     longer blank, so the marker can no longer cause a format);
//   - anything else that reads as blank is refused (FailedPrecondition).
//
// The value is the image id, not just "true", because rbd-mirror copies
// image metadata to the replica when it bootstraps it: a replica created
// while its primary was still unformatted carries the key, but under
// another image id, so a never-synced replica is still refused after a
// forced promotion. Pre-provisioned (static) images carry no key: they are
// never formatted unless the operator sets it.
//
// Clones and snapshot restores (not yet implemented) must carry their
// source's state: a copy of a formatted volume has no key, a copy of a
// never-formatted one may get a new key for its own id.
const MetaFormatBlank = "csi-rbdj.format-blank"

// FormatBlankOverride is the MetaFormatBlank value an operator sets to
// allow formatting a blank volume deliberately.
const FormatBlankOverride = "true"

// FormatBlank is what MetaFormatBlank says about an image.
type FormatBlank int

const (
	// FormatBlankUnset: no key; a blank device must not be formatted.
	FormatBlankUnset FormatBlank = iota
	// FormatBlankNew: the key holds the image's own id (CreateVolume).
	FormatBlankNew
	// FormatBlankOverridden: the key is FormatBlankOverride.
	FormatBlankOverridden
	// FormatBlankForeign: the key holds another image's id (a copy of a
	// new image's metadata, e.g. a mirror replica); not an allowance.
	FormatBlankForeign
)

// Allowed reports whether a blank device may be formatted.
func (f FormatBlank) Allowed() bool { return f == FormatBlankNew || f == FormatBlankOverridden }

func (f FormatBlank) String() string {
	switch f {
	case FormatBlankUnset:
		return "unset"
	case FormatBlankNew:
		return "new volume"
	case FormatBlankOverridden:
		return "override"
	case FormatBlankForeign:
		return "copied from another image"
	}
	return fmt.Sprintf("FormatBlank(%d)", int(f))
}

// headerOf returns the id and header object of image name.
func headerOf(ctx context.Context, pool objstore.Pool, name string) (id, oid string, err error) {
	id, err = clsrbd.GetID(ctx, pool, clsrbd.IDOID(name))
	if err != nil {
		return "", "", fmt.Errorf("image %q id: %w", name, err)
	}
	return id, clsrbd.HeaderOID(id), nil
}

// MarkFormatBlank records that image name is new and may be formatted
// when it reads as blank (MetaFormatBlank = its id).
func MarkFormatBlank(ctx context.Context, pool objstore.Pool, name string) error {
	id, oid, err := headerOf(ctx, pool, name)
	if err != nil {
		return err
	}
	var op objstore.WriteOp
	op.AssertExists()
	clsrbd.MetadataSet(&op, map[string]string{MetaFormatBlank: id})
	if err := pool.Operate(ctx, oid, &op); err != nil {
		return fmt.Errorf("image %q: set metadata %s: %w", name, MetaFormatBlank, err)
	}
	return nil
}

// GetFormatBlank reads MetaFormatBlank of image name.
func GetFormatBlank(ctx context.Context, pool objstore.Pool, name string) (FormatBlank, error) {
	id, oid, err := headerOf(ctx, pool, name)
	if err != nil {
		return FormatBlankUnset, err
	}
	v, err := clsrbd.MetadataGet(ctx, pool, oid, MetaFormatBlank)
	switch {
	case errors.Is(err, objstore.ErrNotFound):
		return FormatBlankUnset, nil
	case err != nil:
		return FormatBlankUnset, fmt.Errorf("image %q: %w", name, err)
	case v == id:
		return FormatBlankNew, nil
	case v == FormatBlankOverride:
		return FormatBlankOverridden, nil
	}
	return FormatBlankForeign, nil
}

// ClearFormatBlank removes MetaFormatBlank of image name (no error if it
// is not set).
func ClearFormatBlank(ctx context.Context, pool objstore.Pool, name string) error {
	_, oid, err := headerOf(ctx, pool, name)
	if err != nil {
		return err
	}
	var op objstore.WriteOp
	clsrbd.MetadataRemove(&op, MetaFormatBlank)
	if err := pool.Operate(ctx, oid, &op); err != nil {
		return fmt.Errorf("image %q: remove metadata %s: %w", name, MetaFormatBlank, err)
	}
	return nil
}

// FormatBlankOverrideCommand is the command an operator runs to allow
// formatting the blank image pool/name deliberately.
func FormatBlankOverrideCommand(pool, name string) string {
	return fmt.Sprintf("rbd image-meta set %s/%s %s %s", pool, name, MetaFormatBlank, FormatBlankOverride)
}
