package storage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
	"k8s.io/klog/v2"
)

// Layered clones (RBD clone format 2), on both backends.
//
// A clone is a new image whose header names its parent — an image and one
// of its snapshots, in the same pool — and the overlap; the parent's
// header lists the clone under that snapshot (cls rbd.child_attach:
// "snap_children_<id>", the snapshot's child_count, the clone-parent
// operation feature; the child carries clone-child). No snapshot
// protection: a snapshot with children that is removed moves to the trash
// snapshot namespace and goes when its last child goes (librbd's
// SnapshotRemoveRequest and DetachChildRequest). On Ceph librbd does all
// of it (rbd_clone3 with clone format 2, flatten, remove); on the local
// backend this file runs the same cls calls.
//
// A parent image that must outlive its volume (its snapshots still have
// clones) is parked: renamed to ParkedName(id), so the CO can reuse the
// volume's name while librbd and the node still open it by name (clone
// sources are named on Pacific: rbd_clone3 takes the parent's name, which
// an image in the RBD trash no longer has). A parked image goes with its
// last snapshot: Reap (run after every removal of a child, a flatten and a
// snapshot removal) removes trashed snapshots without children and parked
// images without snapshots, up the chain.

// ParkedPrefix begins the name of a parked image.
const ParkedPrefix = "csi-parked-"

// ParkedName is the name image id takes while it is parked.
func ParkedName(id string) string { return ParkedPrefix + id }

// IsParked reports whether name is a parked image's.
func IsParked(name string) bool { return strings.HasPrefix(name, ParkedPrefix) }

// Errors of clones, for callers to branch on.
var (
	// ErrImageServed: the operation needs an image nobody has open (a
	// flatten of a staged clone); retry after it is unstaged.
	ErrImageServed = errors.New("the image is open on a node")
	// ErrHasSnapshots: a flatten of a clone with snapshots (they would
	// still need the parent); not done.
	ErrHasSnapshots = errors.New("the clone has snapshots")
	// ErrHasChildren: the image's snapshots have clones (park it rather
	// than remove it).
	ErrHasChildren = errors.New("the image's snapshots have clones")
)

// Cloner makes and flattens layered clones and parks parents. Both
// backends implement it.
type Cloner interface {
	// CloneImage makes image child a clone of user snapshot snap of image
	// parent, size bytes large (at least the snapshot's; the overlap is
	// the snapshot's size), with o's features (layering needed), order and
	// journal layout. All or nothing: on failure nothing of child is left
	// and the parent does not list it. image.ErrExists if child exists.
	CloneImage(ctx context.Context, pool objstore.Pool, parent, snap, child string, size int64, o image.CreateOptions) error
	// FlattenImage copies the data of clone name that still comes from its
	// parent into it and detaches it (then reaps the parent). Nothing to
	// do for an image without a parent. ErrImageServed while a node has
	// it open, ErrHasSnapshots if it has snapshots.
	FlattenImage(ctx context.Context, pool objstore.Pool, name string) error
	// ParkImage renames image name to ParkedName(its id) and returns that
	// name (the image must be unused).
	ParkImage(ctx context.Context, pool objstore.Pool, name string) (string, error)
}

// ClonerOf returns st's Cloner.
func ClonerOf(st Storage) (Cloner, error) {
	c, ok := st.(Cloner)
	if !ok {
		return nil, fmt.Errorf("backend %s: clones: %w", st.Backend(), image.ErrUnsupported)
	}
	return c, nil
}

// maxChain bounds the parent chains followed here (a loop in damaged
// headers must not hang the controller).
const maxChain = 64

// parentOf reads the parent of image id's head; ok is false without one.
func parentOf(ctx context.Context, pool objstore.Pool, id string) (clsrbd.ParentInfo, bool, error) {
	p, err := clsrbd.GetParent(ctx, pool, clsrbd.HeaderOID(id), clsrbd.NoSnap)
	if err != nil {
		return p, false, fmt.Errorf("parent of image %s: %w", id, err)
	}
	return p, p.PoolID >= 0 && p.ImageID != "", nil
}

// ImageDepth returns how many ancestors image name has (0: not a clone).
func ImageDepth(ctx context.Context, pool objstore.Pool, name string) (int, error) {
	id, _, err := headerOf(ctx, pool, name)
	if errors.Is(err, objstore.ErrNotFound) {
		return 0, fmt.Errorf("%w: %w", image.ErrNotFound, err)
	}
	if err != nil {
		return 0, err
	}
	depth := 0
	for ; depth < maxChain; depth++ {
		p, ok, err := parentOf(ctx, pool, id)
		if err != nil {
			return 0, err
		}
		if !ok {
			return depth, nil
		}
		if p.PoolID != pool.ID() {
			return 0, fmt.Errorf("image %q: a parent in pool %d: %w", name, p.PoolID, image.ErrUnsupported)
		}
		id = p.ImageID
	}
	return 0, fmt.Errorf("image %q: parent chain longer than %d: %w", name, maxChain, image.ErrInvalid)
}

// ImageName returns the name image id has now: name if it still names it,
// its parked name if it is parked; image.ErrNotFound otherwise. With id
// "" it is name (records written before ids were kept).
func ImageName(ctx context.Context, pool objstore.Pool, name, id string) (string, error) {
	if id == "" {
		return name, nil
	}
	for _, n := range []string{name, ParkedName(id)} {
		got, err := clsrbd.GetID(ctx, pool, clsrbd.IDOID(n))
		if err == nil && got == id {
			return n, nil
		}
		if err != nil && !errors.Is(err, objstore.ErrNotFound) {
			return "", fmt.Errorf("image %q id: %w", n, err)
		}
	}
	return "", fmt.Errorf("image %q (id %s): %w", name, id, image.ErrNotFound)
}

// ImageID returns the id of image name (image.ErrNotFound).
func ImageID(ctx context.Context, pool objstore.Pool, name string) (string, error) {
	id, _, err := headerOf(ctx, pool, name)
	if errors.Is(err, objstore.ErrNotFound) {
		return "", fmt.Errorf("%w: %w", image.ErrNotFound, err)
	}
	return id, err
}

// Family describes what depends on an image.
type Family struct {
	// Snapshots are the image's snapshots in every namespace (user ones
	// and trashed ones kept for their clones).
	Snapshots []SnapshotInfo
	// Children counts the clones of all its snapshots.
	Children int
}

// FamilyOf describes image name's snapshots and clones.
func FamilyOf(ctx context.Context, pool objstore.Pool, name string) (Family, error) {
	_, hdr, err := headerOf(ctx, pool, name)
	if errors.Is(err, objstore.ErrNotFound) {
		return Family{}, fmt.Errorf("%w: %w", image.ErrNotFound, err)
	}
	if err != nil {
		return Family{}, err
	}
	snaps, err := clsrbd.ListSnapshots(ctx, pool, hdr)
	if err != nil {
		return Family{}, fmt.Errorf("image %q: %w", name, err)
	}
	var f Family
	for _, s := range snaps {
		f.Snapshots = append(f.Snapshots, SnapshotInfo{ID: s.ID, Name: s.Name, Size: int64(s.ImageSize), Created: s.Timestamp.Time().UTC(), Children: s.ChildCount, Namespace: s.Namespace})
		f.Children += int(s.ChildCount)
	}
	return f, nil
}

// childSpec names image id of pool as a child.
func childSpec(pool objstore.Pool, id string) clsrbd.ChildImageSpec {
	return clsrbd.ChildImageSpec{PoolID: pool.ID(), ImageID: id}
}

// detachChild removes image id from its parent's children (no error if it
// is not listed: an earlier attempt did it).
func detachChild(ctx context.Context, pool objstore.Pool, id string, p clsrbd.ParentInfo) error {
	op := &objstore.WriteOp{}
	clsrbd.ChildDetach(op, p.SnapID, childSpec(pool, id))
	err := pool.Operate(ctx, clsrbd.HeaderOID(p.ImageID), op)
	if err != nil && !errors.Is(err, objstore.ErrNotFound) {
		return fmt.Errorf("detach image %s from its parent %s@%d: %w", id, p.ImageID, p.SnapID, err)
	}
	return nil
}

// Reap removes, after a child of p's image left (removed or flattened)
// or a snapshot of it was removed: p's snapshot if it is in the trash
// namespace without children (through the image's lock owner if a node
// serves it), then the image itself if it is parked and has no snapshot
// left (which reaps its own parent in turn). Failures are logged and
// returned; a later Reap (the next removal in the family) retries.
func Reap(ctx context.Context, st Storage, pool objstore.Pool, p clsrbd.ParentInfo) error {
	hdr := clsrbd.HeaderOID(p.ImageID)
	s, err := clsrbd.SnapshotGet(ctx, pool, hdr, p.SnapID)
	switch {
	case errors.Is(err, objstore.ErrNotFound):
	case err != nil:
		return fmt.Errorf("reap %s@%d: %w", p.ImageID, p.SnapID, err)
	case s.Namespace.Type == rbdnotify.SnapNamespaceTrash && s.ChildCount == 0:
		if err := removeTrashedSnapshot(ctx, pool, p.ImageID, s); err != nil {
			return fmt.Errorf("reap %s@%d: %w", p.ImageID, p.SnapID, err)
		}
		klog.FromContext(ctx).V(1).Info("Removed a trashed snapshot after its last clone", "imageID", p.ImageID, "snapID", p.SnapID)
	}
	return ReapParked(ctx, st, pool, p.ImageID)
}

// ReapParked removes image id if it is parked and has no snapshots (after
// the removal of a snapshot of a parked image).
func ReapParked(ctx context.Context, st Storage, pool objstore.Pool, id string) error {
	name, err := clsrbd.DirGetName(ctx, pool, clsrbd.DirectoryOID, id)
	if errors.Is(err, objstore.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("name of image %s: %w", id, err)
	}
	if !IsParked(name) {
		return nil
	}
	snaps, err := clsrbd.ListSnapshots(ctx, pool, clsrbd.HeaderOID(id))
	if err != nil || len(snaps) > 0 {
		return err
	}
	if err := st.RemoveImage(ctx, pool, name); err != nil && !errors.Is(err, image.ErrNotFound) {
		return fmt.Errorf("remove parked image %s: %w", name, err)
	}
	klog.FromContext(ctx).Info("Removed a parked image after its last snapshot", "image", name)
	return nil
}

// removeTrashedSnapshot removes snapshot s (trash namespace, no children)
// of image id: through the lock owner if a node serves the image (it
// journals the removal), else directly under the image's lock.
func removeTrashedSnapshot(ctx context.Context, pool objstore.Pool, id string, s clsrbd.SnapshotInfo) error {
	hdr := clsrbd.HeaderOID(id)
	served, err := ownerRequest(ctx, pool, id, hdr, func(r *exclusivelock.Requester) error {
		return r.SnapRemove(ctx, s.Namespace, s.Name)
	})
	if served && errors.Is(err, objstore.ErrNotFound) {
		return nil
	}
	if err != nil || served {
		return err
	}
	return underLock(ctx, pool, hdr, func(l *exclusivelock.Lock) error { return removeSnapshotDirect(ctx, pool, hdr, s.ID, l) })
}

// reapAfter reaps p (if ok) and logs a failure: the removal that called it
// succeeded, and the next removal in the family retries.
func reapAfter(ctx context.Context, st Storage, pool objstore.Pool, p clsrbd.ParentInfo, ok bool) {
	if !ok {
		return
	}
	if err := Reap(context.WithoutCancel(ctx), st, pool, p); err != nil {
		klog.FromContext(ctx).Error(err, "Could not remove what a removed clone's parent kept for it; the next removal in its family retries", "parentID", p.ImageID, "snapID", p.SnapID)
	}
}

// checkNoChildren fails with ErrHasChildren if a snapshot of image id has
// clones.
func checkNoChildren(ctx context.Context, pool objstore.Pool, name, id string) error {
	snaps, err := clsrbd.ListSnapshots(ctx, pool, clsrbd.HeaderOID(id))
	if errors.Is(err, objstore.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("image %q: %w", name, err)
	}
	for _, s := range snaps {
		if s.ChildCount > 0 {
			return fmt.Errorf("image %q: snapshot %q has %d clones: %w: %w", name, s.Name, s.ChildCount, ErrHasChildren, image.ErrBusy)
		}
	}
	return nil
}

// --- local backend ---

func (s *localStorage) CloneImage(ctx context.Context, pool objstore.Pool, parent, snap, child string, size int64, o image.CreateOptions) (err error) {
	pid, phdr, err := headerOf(ctx, pool, parent)
	if errors.Is(err, objstore.ErrNotFound) {
		return fmt.Errorf("clone %s@%s: %w: %w", parent, snap, image.ErrNotFound, err)
	}
	if err != nil {
		return fmt.Errorf("clone %s@%s: %w", parent, snap, err)
	}
	info, err := clsrbd.FindSnapshot(ctx, pool, phdr, userNS, snap)
	if errors.Is(err, objstore.ErrNotFound) {
		return fmt.Errorf("clone %s@%s: %w", parent, snap, ErrSnapshotNotFound)
	}
	if err != nil {
		return fmt.Errorf("clone %s@%s: %w", parent, snap, err)
	}
	if size < int64(info.ImageSize) {
		return fmt.Errorf("clone %s@%s (%d bytes) into %d bytes: %w", parent, snap, info.ImageSize, size, image.ErrInvalid)
	}
	if o.Features == 0 {
		o.Features = image.DefaultFeatures
	}
	if o.Features&clsrbd.FeatureLayering == 0 {
		return fmt.Errorf("clone %s@%s to %s: features %v lack layering: %w", parent, snap, child, clsrbd.FeatureNames(o.Features), image.ErrInvalid)
	}
	// librbd's CloneRequest: create the child, record its parent, list it
	// in the parent's header.
	if err := image.Create(ctx, pool, child, int64(info.ImageSize), o); err != nil {
		return fmt.Errorf("clone %s@%s: %w", parent, snap, err)
	}
	cid, chdr, err := headerOf(ctx, pool, child)
	defer func() {
		if err == nil {
			return
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if cid != "" {
			if derr := detachChild(cctx, pool, cid, clsrbd.ParentInfo{PoolID: pool.ID(), ImageID: pid, SnapID: info.ID}); derr != nil {
				klog.FromContext(ctx).Error(derr, "Could not detach a failed clone from its parent", "image", child)
			}
		}
		// Detached above (or never attached): remove the image itself.
		if rerr := removeWithExtentLog(cctx, pool, child, func() error { return image.Remove(cctx, pool, child) }); rerr != nil && !errors.Is(rerr, image.ErrNotFound) {
			klog.FromContext(ctx).Error(rerr, "Could not remove a failed clone", "image", child)
		}
	}()
	if err != nil {
		return fmt.Errorf("clone %s@%s: %w", parent, snap, err)
	}
	op := &objstore.WriteOp{}
	clsrbd.SetParent(op, pool.ID(), pid, info.ID, info.ImageSize)
	clsrbd.OpFeaturesSet(op, clsrbd.OpFeatureCloneChild, clsrbd.OpFeatureCloneChild)
	if err := pool.Operate(ctx, chdr, op); err != nil {
		return fmt.Errorf("clone %s@%s: record the parent of %s: %w", parent, snap, child, err)
	}
	op = &objstore.WriteOp{}
	clsrbd.ChildAttach(op, info.ID, childSpec(pool, cid))
	if err := pool.Operate(ctx, phdr, op); err != nil {
		if errors.Is(err, objstore.ErrNotFound) {
			err = fmt.Errorf("%w: %w", ErrSnapshotNotFound, err) // removed meanwhile
		}
		return fmt.Errorf("clone %s@%s: list %s in the parent: %w", parent, snap, child, err)
	}
	if size > int64(info.ImageSize) {
		if err := image.Resize(ctx, pool, child, size); err != nil {
			return fmt.Errorf("clone %s@%s: grow %s to %d bytes: %w", parent, snap, child, size, err)
		}
	}
	return nil
}

// removeImage is the local image removal: a clone is detached from its
// parent first (librbd's RemoveRequest order), then the parent reaped.
func (s *localStorage) removeImage(ctx context.Context, pool objstore.Pool, name string) error {
	id, _, err := headerOf(ctx, pool, name)
	if err != nil {
		// Nothing to detach: clear whatever is left.
		return removeWithExtentLog(ctx, pool, name, func() error { return image.Remove(ctx, pool, name) })
	}
	if err := checkUnused(ctx, pool, name); err != nil {
		return err
	}
	if err := checkNoChildren(ctx, pool, name, id); err != nil {
		return err
	}
	p, isClone, err := parentOf(ctx, pool, id)
	if err != nil && !errors.Is(err, objstore.ErrNotFound) {
		return fmt.Errorf("remove image %q: %w", name, err)
	}
	if isClone {
		if err := detachChild(ctx, pool, id, p); err != nil {
			return fmt.Errorf("remove image %q: %w", name, err)
		}
	}
	if err := removeWithExtentLog(ctx, pool, name, func() error { return image.Remove(ctx, pool, name) }); err != nil {
		return err
	}
	reapAfter(ctx, s, pool, p, isClone)
	return nil
}

// checkUnused fails with image.ErrBusy if the image has watchers.
func checkUnused(ctx context.Context, pool objstore.Pool, name string) error {
	users, err := imageUsers(ctx, pool, name)
	if err != nil {
		return err
	}
	if len(users) > 0 {
		return fmt.Errorf("image %q: %w: %d watchers (first %s)", name, image.ErrBusy, len(users), users[0].Client.Name())
	}
	return nil
}

// copyupChunk is how many objects a flatten reads at once.
const copyupChunk = 8

func (s *localStorage) FlattenImage(ctx context.Context, pool objstore.Pool, name string) error {
	id, hdr, err := headerOf(ctx, pool, name)
	if errors.Is(err, objstore.ErrNotFound) {
		return fmt.Errorf("flatten %q: %w: %w", name, image.ErrNotFound, err)
	}
	if err != nil {
		return err
	}
	p, isClone, err := parentOf(ctx, pool, id)
	if err != nil || !isClone {
		return err
	}
	if err := checkFlattenable(ctx, pool, name, hdr); err != nil {
		return err
	}
	err = underLock(ctx, pool, hdr, func(l *exclusivelock.Lock) error {
		img, err := image.Open(ctx, pool, name)
		if err != nil {
			return err
		}
		// librbd's FlattenRequest: every object within the overlap is
		// copied up (rbd.copyup writes only where the clone has no object
		// yet), then the parent link goes.
		obj := img.ObjectSize()
		overlap := int64(p.Overlap)
		buf := make([]byte, copyupChunk*obj)
		for off := int64(0); off < overlap; off += int64(len(buf)) {
			q := buf[:min(int64(len(buf)), overlap-off)]
			if _, err := img.ReadAt(ctx, q, off); err != nil {
				return fmt.Errorf("read %d bytes at %d: %w", len(q), off, err)
			}
			for o := int64(0); o < int64(len(q)); o += obj {
				d := q[o:min(o+obj, int64(len(q)))]
				if allZero(d) {
					continue // reads as zeros without the parent too
				}
				op := &objstore.WriteOp{}
				clsrbd.Copyup(op, d)
				if err := pool.Operate(ctx, img.DataOID(uint64((off+o)/obj)), op); err != nil {
					return fmt.Errorf("copy up object %d: %w", (off+o)/obj, err)
				}
			}
		}
		op := &objstore.WriteOp{}
		l.Guard(op)
		clsrbd.RemoveParent(op)
		if err := pool.Operate(ctx, hdr, op); err != nil && !errors.Is(err, objstore.ErrNotFound) {
			return fmt.Errorf("remove the parent link: %w", err)
		}
		return detachChild(ctx, pool, id, p)
	})
	if err != nil {
		return fmt.Errorf("flatten %q: %w", name, err)
	}
	reapAfter(ctx, s, pool, p, true)
	return nil
}

// checkFlattenable refuses a flatten of a served clone or one with
// snapshots.
func checkFlattenable(ctx context.Context, pool objstore.Pool, name, hdr string) error {
	users, err := imageUsers(ctx, pool, name)
	if err != nil {
		return err
	}
	if len(users) > 0 {
		return fmt.Errorf("flatten %q: %w (%s); it is flattened once no node serves it", name, ErrImageServed, users[0].Client.Name())
	}
	snaps, err := clsrbd.ListSnapshots(ctx, pool, hdr)
	if err != nil {
		return fmt.Errorf("flatten %q: %w", name, err)
	}
	if len(snaps) > 0 {
		return fmt.Errorf("flatten %q: %w (%d): they would still need the parent", name, ErrHasSnapshots, len(snaps))
	}
	return nil
}

// parkableID returns the id of image name if it may be parked: it exists
// (else image.ErrNotFound) and nothing watches it (else image.ErrBusy).
// opErr wraps the backend's other errors.
func parkableID(ctx context.Context, pool objstore.Pool, name string, opErr func(error) error) (string, error) {
	id, _, err := headerOf(ctx, pool, name)
	if errors.Is(err, objstore.ErrNotFound) {
		return "", fmt.Errorf("park %q: %w: %w", name, image.ErrNotFound, err)
	}
	if err != nil {
		return "", opErr(err)
	}
	if err := checkUnused(ctx, pool, name); err != nil {
		return "", err
	}
	return id, nil
}

func (s *localStorage) ParkImage(ctx context.Context, pool objstore.Pool, name string) (string, error) {
	id, err := parkableID(ctx, pool, name, func(err error) error { return err })
	if err != nil {
		return "", err
	}
	to := ParkedName(id)
	// librbd's RenameRequest for format 2: the new id object, the
	// directory entry, then the old id object goes.
	op := &objstore.WriteOp{}
	op.Create(false)
	clsrbd.SetID(op, id)
	if err := pool.Operate(ctx, clsrbd.IDOID(to), op); err != nil && !errors.Is(err, objstore.ErrExists) {
		return "", fmt.Errorf("park %q: id object: %w", name, err)
	}
	op = &objstore.WriteOp{}
	clsrbd.DirRenameImage(op, name, to, id)
	if err := pool.Operate(ctx, clsrbd.DirectoryOID, op); err != nil {
		return "", fmt.Errorf("park %q: directory: %w", name, err)
	}
	op = &objstore.WriteOp{}
	op.Remove()
	if err := pool.Operate(ctx, clsrbd.IDOID(name), op); err != nil && !errors.Is(err, objstore.ErrNotFound) {
		return "", fmt.Errorf("park %q: old id object: %w", name, err)
	}
	return to, nil
}
