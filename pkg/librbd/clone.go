//go:build ceph && pacific

package librbd

import (
	"context"
	"fmt"

	"github.com/ceph/go-ceph/rbd"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Clone creates image child as a clone of user snapshot snap of image
// parent through librbd with clone format 2 (no protection: the parent's
// header records the child; librbd's CloneRequest). The child gets o's
// features (layering is required), order and journal layout; librbd
// creates its journal and copies the parent's image metadata. It fails
// with image.ErrExists if child exists.
func Clone(ctx context.Context, pool objstore.Pool, parent, snap, child string, o image.CreateOptions) error {
	p, err := cephPool(pool)
	if err != nil {
		return fmt.Errorf("clone %s@%s: %w", parent, snap, err)
	}
	if o.Features == 0 {
		o.Features = image.DefaultFeatures
	}
	if o.Features&clsrbd.FeatureLayering == 0 {
		return fmt.Errorf("clone %s@%s to %s: features %v lack layering: %w", parent, snap, child, clsrbd.FeatureNames(o.Features), image.ErrInvalid)
	}
	if o.JournalOrder == 0 {
		o.JournalOrder = defaultJournalOrder
	}
	if o.JournalSplayWidth == 0 {
		o.JournalSplayWidth = defaultJournalSplayWidth
	}
	var rerr error
	cerr := p.Cluster().Call(ctx, func() {
		opts := rbd.NewRbdImageOptions()
		defer opts.Destroy()
		set := map[rbd.ImageOption]uint64{
			rbd.ImageOptionFormat:      2,
			rbd.ImageOptionCloneFormat: 2,
			rbd.ImageOptionFeatures:    o.Features,
		}
		if o.Order != 0 {
			set[rbd.ImageOptionOrder] = uint64(o.Order)
		}
		if o.Features&clsrbd.FeatureJournaling != 0 {
			set[rbd.ImageOptionJournalOrder] = uint64(o.JournalOrder)
			set[rbd.ImageOptionJournalSplayWidth] = uint64(o.JournalSplayWidth)
		}
		for k, v := range set {
			if rerr = opts.SetUint64(k, v); rerr != nil {
				rerr = fmt.Errorf("image option %d: %w", k, rerr)
				return
			}
		}
		rerr = mapErr(rbd.CloneImage(p.IOContext(), parent, snap, p.IOContext(), child, opts))
	})
	if cerr != nil {
		return fmt.Errorf("clone %s@%s to %s: %w", parent, snap, child, cerr)
	}
	if rerr != nil {
		return fmt.Errorf("clone %s/%s@%s to %s: %w", p.Name(), parent, snap, child, rerr)
	}
	return nil
}

// Flatten copies every object clone name lacks from its parent and
// detaches it (librbd's flatten; if another client holds the lock librbd
// asks it, and csi-rbdj's node refuses: flatten only images nobody serves).
func Flatten(ctx context.Context, pool objstore.Pool, name string) error {
	p, err := cephPool(pool)
	if err != nil {
		return fmt.Errorf("flatten %q: %w", name, err)
	}
	err = withImage(ctx, p, name, true, func(img *rbd.Image) error { return mapErr(img.Flatten()) })
	if err != nil {
		return fmt.Errorf("flatten %s/%s: %w", p.Name(), name, err)
	}
	return nil
}

// Rename renames image name to newName (`rbd rename`).
func Rename(ctx context.Context, pool objstore.Pool, name, newName string) error {
	p, err := cephPool(pool)
	if err != nil {
		return fmt.Errorf("rename %q: %w", name, err)
	}
	err = withImage(ctx, p, name, true, func(img *rbd.Image) error { return mapErr(img.Rename(newName)) })
	if err != nil {
		return fmt.Errorf("rename %s/%s to %s: %w", p.Name(), name, newName, err)
	}
	return nil
}
