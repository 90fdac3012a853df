package storage

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"syscall"

	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/classes"

	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
	"k8s.io/klog/v2"
)

// Backend names.
const (
	BackendLocal = "local"
	BackendCeph  = "ceph"
)

// Storage is the storage layer under the CSI servers: pools of a cluster
// and the management of RBD images in them. The CSI servers hold no storage
// logic of their own beyond what they express through this interface, so a
// backend plugs in by implementing it (local: the embedded object store
// with pkg/image; ceph: librados and librbd). A Backend hands out the
// Storage of a cluster for a request's credentials and owns it: callers
// never close a Storage.
type Storage interface {
	// Backend is BackendLocal or BackendCeph.
	Backend() string
	// ClusterID names the cluster in volume ids.
	ClusterID() string
	// Pool opens an existing pool; ErrPoolNotFound if there is none.
	Pool(ctx context.Context, name string) (objstore.Pool, error)
	// EnsurePool opens a pool, creating it where the backend allows
	// (local); ceph returns ErrPoolNotFound for a missing pool.
	EnsurePool(ctx context.Context, name string) (objstore.Pool, error)
	// ListPools returns the pool names in name order.
	ListPools(ctx context.Context) ([]string, error)
	// CreateImage creates an image (with its journal); image.ErrExists if
	// the name is taken.
	CreateImage(ctx context.Context, pool objstore.Pool, name string, size int64, o image.CreateOptions) error
	// RemoveImage removes an image; image.ErrBusy while it is open
	// somewhere or its snapshots have clones (ErrHasChildren),
	// image.ErrNotFound when nothing of it is left. A clone is detached
	// from its parent, and what the parent kept only for it goes too
	// (Reap).
	RemoveImage(ctx context.Context, pool objstore.Pool, name string) error
	// ImageInfo describes an image; image.ErrNotFound if it does not exist.
	ImageInfo(ctx context.Context, pool objstore.Pool, name string) (ImageInfo, error)
	// ImageUsers returns the watchers of the image's header and of its
	// journal's header: the clients that have the image open.
	ImageUsers(ctx context.Context, pool objstore.Pool, name string) ([]objstore.WatcherInfo, error)
	// ExpandImage grows an image to size bytes (nothing to do if it has
	// that size). If a client holds the image's exclusive lock (a node
	// serves it), that owner performs the resize and journals it, as
	// librbd proxies `rbd resize`; otherwise the image is resized here.
	// It fails with ErrShrink (and image.ErrInvalid) if size is smaller
	// than the image, image.ErrNotFound if there is no such image, and with
	// the owner's errno if the owner refuses.
	ExpandImage(ctx context.Context, pool objstore.Pool, name string, size int64) error
	// Available returns the bytes new volumes can still use.
	Available(ctx context.Context) (int64, error)
	// Health returns nil while the backend answers.
	Health(ctx context.Context) error
	// Fencer blocklists clients so that a dead image owner's lock can be
	// broken safely.
	Fencer() exclusivelock.Fencer
}

// ImageInfo describes an existing image.
type ImageInfo struct {
	ID                string
	Size              int64
	Order             uint8
	Features          uint64
	JournalOrder      uint8
	JournalSplayWidth uint8
}

// ErrPoolNotFound: the pool does not exist.
var ErrPoolNotFound = errors.New("pool not found")

// ErrShrink: ExpandImage was asked for a size smaller than the image's
// (volumes only grow: the filesystem on them would lose data).
var ErrShrink = errors.New("shrinking an image is not supported")

// LocalOptions configure the local backend.
type LocalOptions struct {
	// Dir is the cluster directory (created if missing).
	Dir string
	// ClusterID names the cluster in volume ids (default "default").
	ClusterID string
	// NoSync skips fsync (tests only).
	NoSync bool
	// Logger logs the cluster client's own events (recovery, commits);
	// default klog.Background().
	Logger klog.Logger
}

// localStorage is the embedded backend: a local.Cluster directory.
type localStorage struct {
	c         *local.Cluster
	clusterID string
}

// ObjectClasses are the object classes the driver's clients run on a local
// cluster: what the image layer and the journal call.
func ObjectClasses() map[string]objstore.Class {
	return classes.Standard()
}

// openLocalStorage opens the local cluster in o.Dir.
func openLocalStorage(o LocalOptions) (*localStorage, error) {
	if o.Dir == "" {
		return nil, errors.New("local backend: no directory (set --local-dir)")
	}
	if o.ClusterID == "" {
		o.ClusterID = "default"
	}
	if err := ValidateName("cluster id", o.ClusterID); err != nil {
		return nil, fmt.Errorf("local backend: %w", err)
	}
	c, err := local.Open(o.Dir, local.Options{Classes: ObjectClasses(), NoSync: o.NoSync, Logger: o.Logger})
	if err != nil {
		return nil, fmt.Errorf("local backend: open %s: %w", o.Dir, err)
	}
	return &localStorage{c: c, clusterID: o.ClusterID}, nil
}

func (s *localStorage) Backend() string   { return BackendLocal }
func (s *localStorage) ClusterID() string { return s.clusterID }

func (s *localStorage) Pool(ctx context.Context, name string) (objstore.Pool, error) {
	pools, err := s.c.ListPools(ctx)
	if err != nil {
		return nil, fmt.Errorf("list pools: %w", err)
	}
	for _, p := range pools {
		if p.Name == name {
			return s.c.PoolByID(ctx, p.ID)
		}
	}
	return nil, fmt.Errorf("pool %q: %w", name, ErrPoolNotFound)
}

func (s *localStorage) EnsurePool(ctx context.Context, name string) (objstore.Pool, error) {
	p, err := s.c.Pool(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("pool %q: %w", name, err)
	}
	return p, nil
}

func (s *localStorage) ListPools(ctx context.Context) ([]string, error) {
	pools, err := s.c.ListPools(ctx)
	if err != nil {
		return nil, fmt.Errorf("list pools: %w", err)
	}
	names := make([]string, 0, len(pools))
	for _, p := range pools {
		names = append(names, p.Name)
	}
	sort.Strings(names)
	return names, nil
}

func (s *localStorage) CreateImage(ctx context.Context, pool objstore.Pool, name string, size int64, o image.CreateOptions) error {
	return image.Create(ctx, pool, name, size, o)
}

func (s *localStorage) RemoveImage(ctx context.Context, pool objstore.Pool, name string) error {
	return s.removeImage(ctx, pool, name) // clone.go
}

func (s *localStorage) ImageInfo(ctx context.Context, pool objstore.Pool, name string) (ImageInfo, error) {
	return imageInfo(ctx, pool, name)
}

// imageInfo reads an image's layout through cls calls (works on any backend).
func imageInfo(ctx context.Context, pool objstore.Pool, name string) (ImageInfo, error) {
	img, err := image.Open(ctx, pool, name)
	if err != nil {
		return ImageInfo{}, err
	}
	// Internal bits (operations: a clone or a clone parent) are not
	// features a volume was created with.
	info := ImageInfo{ID: img.ID(), Size: img.Size(), Order: img.Order(), Features: img.Features() &^ clsrbd.FeaturesInternal}
	if info.Features&clsrbd.FeatureJournaling != 0 {
		order, splay, _, err := clsjournal.GetImmutableMetadata(ctx, pool, journal.HeaderOID(img.ID()))
		if err != nil {
			return ImageInfo{}, fmt.Errorf("image %q: journal metadata: %w", name, err)
		}
		info.JournalOrder, info.JournalSplayWidth = order, splay
	}
	return info, nil
}

func (s *localStorage) ImageUsers(ctx context.Context, pool objstore.Pool, name string) ([]objstore.WatcherInfo, error) {
	return imageUsers(ctx, pool, name)
}

// imageUsers lists the watchers of the image header and journal header.
func imageUsers(ctx context.Context, pool objstore.Pool, name string) ([]objstore.WatcherInfo, error) {
	return imageWatchers(ctx, pool, name, true)
}

// imageWatchers lists the watchers of the image's header and, with
// withJournal, of its journal header. An image that does not exist has none.
func imageWatchers(ctx context.Context, pool objstore.Pool, name string, withJournal bool) ([]objstore.WatcherInfo, error) {
	id, err := clsrbd.GetID(ctx, pool, clsrbd.IDOID(name))
	if err != nil {
		if errors.Is(err, objstore.ErrNotFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("image %q id: %w", name, err)
	}
	oids := []string{clsrbd.HeaderOID(id)}
	if withJournal {
		oids = append(oids, journal.HeaderOID(id))
	}
	var users []objstore.WatcherInfo
	for _, oid := range oids {
		ws, err := pool.ListWatchers(ctx, oid)
		if err != nil && !errors.Is(err, objstore.ErrNotFound) {
			return nil, fmt.Errorf("watchers of %s: %w", oid, err)
		}
		users = append(users, ws...)
	}
	return users, nil
}

// ExpandImage grows the image through its lock owner if one answers
// (exclusivelock.ProxyResize: the owner journals the resize, as librbd's
// owner does), else by updating the header here (image.Resize, which
// notifies the watchers). An owner that is dead or frozen does not answer
// within exclusivelock.DefaultNotifyTimeout; growing the header without it is safe
// (the next owner reads the new size when it refreshes), but the resize is
// then not in the journal.
func (s *localStorage) ExpandImage(ctx context.Context, pool objstore.Pool, name string, size int64) error {
	img, err := image.Open(ctx, pool, name)
	if err != nil {
		return fmt.Errorf("expand image %q: %w", name, err)
	}
	if err := checkGrow(name, img.Size(), size); err != nil || size == img.Size() {
		return err
	}
	err = exclusivelock.ProxyResize(ctx, pool, clsrbd.HeaderOID(img.ID()), uint64(size))
	switch {
	case err == nil:
		return nil
	case errors.Is(err, exclusivelock.ErrNoOwner):
		return image.Resize(ctx, pool, name, size)
	case errors.Is(err, objstore.ErrNotFound):
		return fmt.Errorf("expand image %q: %w: %w", name, image.ErrNotFound, err)
	}
	return fmt.Errorf("expand image %q to %d bytes: %w", name, size, err)
}

// checkGrow refuses a size below the current one.
func checkGrow(name string, cur, size int64) error {
	if size < cur {
		return fmt.Errorf("image %q has %d bytes, %d requested: %w: %w", name, cur, size, ErrShrink, image.ErrInvalid)
	}
	return nil
}

func (s *localStorage) Available(ctx context.Context) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.c.Dir(), &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", s.c.Dir(), err)
	}
	return int64(st.Bavail) * st.Bsize, nil
}

func (s *localStorage) Health(ctx context.Context) error {
	if _, err := s.c.ListPools(ctx); err != nil {
		return fmt.Errorf("local backend %s: %w", s.c.Dir(), err)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.c.Dir(), &st); err != nil {
		return fmt.Errorf("local backend %s: %w", s.c.Dir(), err)
	}
	return nil
}

func (s *localStorage) Fencer() exclusivelock.Fencer { return s.c }
