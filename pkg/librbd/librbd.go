//go:build ceph && pacific

package librbd

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/ceph/go-ceph/rbd"

	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph"
)

// Errors of this package; the management errors are pkg/image's
// (image.ErrExists, image.ErrNotFound, image.ErrBusy, image.ErrInvalid,
// image.ErrUnsupported), so callers branch the same way on both backends.
var (
	// ErrNotCeph: the pool is not a Ceph pool (objstore/ceph).
	ErrNotCeph = errors.New("not a Ceph pool")
	// ErrNotJournaled: the image lacks the journaling feature (returned
	// errors also wrap image.ErrUnsupported).
	ErrNotJournaled = errors.New("image does not have the journaling feature")
)

// Defaults of image.CreateOptions' zero fields (librbd's).
const (
	defaultOrder             = 22
	defaultJournalOrder      = 24
	defaultJournalSplayWidth = 4
)

func cephPool(pool objstore.Pool) (*ceph.Pool, error) {
	p, ok := pool.(*ceph.Pool)
	if !ok {
		return nil, fmt.Errorf("%w: %T (use pkg/image on other backends)", ErrNotCeph, pool)
	}
	return p, nil
}

// errnoOf extracts the errno of a go-ceph error (0 if it carries none).
func errnoOf(err error) syscall.Errno {
	var ce interface{ ErrorCode() int }
	if errors.As(err, &ce) {
		if c := ce.ErrorCode(); c < 0 {
			return syscall.Errno(-c)
		}
	}
	return objstore.Errno(err)
}

// mapErr wraps a librbd error with the matching image.Err* sentinel and the
// errno.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	en := errnoOf(err)
	var sentinel error
	switch en {
	case syscall.ENOENT:
		sentinel = image.ErrNotFound
	case syscall.EEXIST:
		sentinel = image.ErrExists
	case syscall.EBUSY, syscall.ENOTEMPTY:
		sentinel = image.ErrBusy
	case syscall.EINVAL, syscall.EDOM, syscall.ERANGE:
		sentinel = image.ErrInvalid
	case syscall.ENOSYS, syscall.EOPNOTSUPP:
		sentinel = image.ErrUnsupported
	}
	switch {
	case sentinel != nil:
		return fmt.Errorf("%w: %w", sentinel, en)
	case en != 0:
		return en
	}
	return err
}

// Create creates image name of size bytes in pool through librbd (format
// 2, with o's features — default layering, exclusive-lock, journaling —
// order and journal order/splay width). With journaling librbd also creates
// the journal (header journal.<id>, client "" registered, tag 0). It fails
// with image.ErrExists if the name is taken and image.ErrInvalid for
// options librbd refuses.
func Create(ctx context.Context, pool objstore.Pool, name string, size int64, o image.CreateOptions) error {
	p, err := cephPool(pool)
	if err != nil {
		return fmt.Errorf("create image %q: %w", name, err)
	}
	if name == "" {
		return fmt.Errorf("create image: empty name: %w", image.ErrInvalid)
	}
	if size < 0 {
		return fmt.Errorf("create image %q: size %d: %w", name, size, image.ErrInvalid)
	}
	if o.Order == 0 {
		o.Order = defaultOrder
	}
	if o.Features == 0 {
		o.Features = image.DefaultFeatures
	}
	if o.JournalOrder == 0 {
		o.JournalOrder = defaultJournalOrder
	}
	if o.JournalSplayWidth == 0 {
		o.JournalSplayWidth = defaultJournalSplayWidth
	}
	if o.Features&clsrbd.FeatureJournaling != 0 && (o.JournalOrder < journal.MinOrder || o.JournalOrder > journal.MaxOrder) {
		// librbd would accept it and fail only when the journal is opened.
		return fmt.Errorf("create image %q: journal order %d not in [%d, %d]: %w",
			name, o.JournalOrder, journal.MinOrder, journal.MaxOrder, image.ErrInvalid)
	}
	var rerr error
	cerr := p.Cluster().Call(ctx, func() {
		opts := rbd.NewRbdImageOptions()
		defer opts.Destroy()
		set := []struct {
			opt rbd.ImageOption
			v   uint64
		}{
			{rbd.ImageOptionFormat, 2},
			{rbd.ImageOptionFeatures, o.Features},
			{rbd.ImageOptionOrder, uint64(o.Order)},
		}
		if o.Features&clsrbd.FeatureJournaling != 0 {
			set = append(set,
				struct {
					opt rbd.ImageOption
					v   uint64
				}{rbd.ImageOptionJournalOrder, uint64(o.JournalOrder)},
				struct {
					opt rbd.ImageOption
					v   uint64
				}{rbd.ImageOptionJournalSplayWidth, uint64(o.JournalSplayWidth)})
		}
		for _, s := range set {
			if rerr = opts.SetUint64(s.opt, s.v); rerr != nil {
				rerr = fmt.Errorf("image option %d: %w", s.opt, rerr)
				return
			}
		}
		rerr = rbd.CreateImage(p.IOContext(), name, uint64(size), opts)
	})
	if cerr != nil {
		return fmt.Errorf("create image %q: %w", name, cerr)
	}
	if rerr != nil {
		return fmt.Errorf("create image %q in pool %s: %w", name, p.Name(), mapErr(rerr))
	}
	return nil
}

// Remove deletes image name and its journal through librbd. It fails with
// image.ErrBusy while the image has watchers (it is open somewhere;
// librbd also counts a dead client's watch until the OSD times it out, 30 s)
// and image.ErrNotFound if there is no such image.
func Remove(ctx context.Context, pool objstore.Pool, name string) error {
	p, err := cephPool(pool)
	if err != nil {
		return fmt.Errorf("remove image %q: %w", name, err)
	}
	var rerr error
	if cerr := p.Cluster().Call(ctx, func() { rerr = rbd.RemoveImage(p.IOContext(), name) }); cerr != nil {
		return fmt.Errorf("remove image %q: %w", name, cerr)
	}
	if rerr != nil {
		return fmt.Errorf("remove image %q from pool %s: %w", name, p.Name(), mapErr(rerr))
	}
	return nil
}

// withImage opens image name (read-only unless write), runs fn on it and
// closes it, all in one blocking call.
func withImage(ctx context.Context, p *ceph.Pool, name string, write bool, fn func(img *rbd.Image) error) error {
	var rerr error
	cerr := p.Cluster().Call(ctx, func() {
		var img *rbd.Image
		if write {
			img, rerr = rbd.OpenImage(p.IOContext(), name, rbd.NoSnapshot)
		} else {
			img, rerr = rbd.OpenImageReadOnly(p.IOContext(), name, rbd.NoSnapshot)
		}
		if rerr != nil {
			rerr = mapErr(rerr)
			return
		}
		rerr = fn(img)
		if err := img.Close(); err != nil && rerr == nil {
			rerr = fmt.Errorf("close: %w", mapErr(err))
		}
	})
	if cerr != nil {
		return cerr
	}
	return rerr
}

// Resize sets the size of image name through librbd (which shrinks by
// removing the data objects past the new end). If another client holds the
// image's exclusive lock, librbd asks that owner to resize.
func Resize(ctx context.Context, pool objstore.Pool, name string, newSize int64) error {
	p, err := cephPool(pool)
	if err != nil {
		return fmt.Errorf("resize image %q: %w", name, err)
	}
	if newSize < 0 {
		return fmt.Errorf("resize image %q: size %d: %w", name, newSize, image.ErrInvalid)
	}
	err = withImage(ctx, p, name, true, func(img *rbd.Image) error {
		return mapErr(img.Resize(uint64(newSize)))
	})
	if err != nil {
		return fmt.Errorf("resize image %q in pool %s: %w", name, p.Name(), err)
	}
	return nil
}

// Info describes an image.
type Info struct {
	ID           string
	Size         int64
	Order        uint8
	Features     uint64
	ObjectPrefix string
	// JournalOrder and JournalSplayWidth are the journal's (0 without
	// journaling).
	JournalOrder      uint8
	JournalSplayWidth uint8
}

// Journaled reports whether the image has the journaling feature.
func (i Info) Journaled() bool { return i.Features&clsrbd.FeatureJournaling != 0 }

// GetInfo describes image name: size, order and features through librbd,
// the journal's order and splay width from its header. It fails with
// image.ErrNotFound if there is no such image.
func GetInfo(ctx context.Context, pool objstore.Pool, name string) (Info, error) {
	p, err := cephPool(pool)
	if err != nil {
		return Info{}, fmt.Errorf("image %q: %w", name, err)
	}
	var info Info
	err = withImage(ctx, p, name, false, func(img *rbd.Image) error {
		st, err := img.Stat()
		if err != nil {
			return fmt.Errorf("stat: %w", mapErr(err))
		}
		if info.Features, err = img.GetFeatures(); err != nil {
			return fmt.Errorf("features: %w", mapErr(err))
		}
		if info.ID, err = img.GetId(); err != nil {
			return fmt.Errorf("id: %w", mapErr(err))
		}
		info.Size, info.Order, info.ObjectPrefix = int64(st.Size), uint8(st.Order), st.Block_name_prefix
		return nil
	})
	if err != nil {
		return Info{}, fmt.Errorf("image %q in pool %s: %w", name, p.Name(), err)
	}
	if info.Journaled() {
		order, splay, _, err := clsjournal.GetImmutableMetadata(ctx, pool, journal.HeaderOID(info.ID))
		if err != nil {
			return Info{}, fmt.Errorf("image %q in pool %s: journal: %w", name, p.Name(), err)
		}
		info.JournalOrder, info.JournalSplayWidth = order, splay
	}
	return info, nil
}

// CheckJournaled describes image name and fails with an error wrapping
// ErrNotJournaled (and image.ErrUnsupported) if it lacks the journaling
// feature: what a pre-provisioned (static) volume must have.
func CheckJournaled(ctx context.Context, pool objstore.Pool, name string) (Info, error) {
	info, err := GetInfo(ctx, pool, name)
	if err != nil {
		return Info{}, err
	}
	if !info.Journaled() {
		return info, fmt.Errorf("image %q in pool %s (features %v): %w (enable it with `rbd feature enable %s/%s journaling`): %w",
			name, pool.Name(), clsrbd.FeatureNames(info.Features), ErrNotJournaled, pool.Name(), name, image.ErrUnsupported)
	}
	return info, nil
}

// List returns the images of pool in name order, with their ids, from the
// pool's rbd_directory (what librbd's list reads): image.List, for a Ceph
// pool only, as the rest of this package.
func List(ctx context.Context, pool objstore.Pool) ([]image.ListEntry, error) {
	if _, err := cephPool(pool); err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	return image.List(ctx, pool)
}
