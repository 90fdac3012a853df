package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clslock "github.com/csi-rbdj/csi-rbdj/pkg/cls/lock"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
	"k8s.io/klog/v2"
)

// Snapshots of images (the CSI snapshot RPCs), on both backends.
//
// A snapshot of an image a node serves must hold every write acknowledged
// before it was requested, so it is made by the image's lock owner: the
// request goes over the header's watch/notify as librbd's snap_create
// proxies it (the owner — pkg/blockdev — journals SnapCreate, drains the
// acknowledged writes, adds the snapshot, journals OpFinish). On Ceph
// librbd does exactly that (and, when nobody holds the lock, takes it,
// replays the journal and snapshots itself). On the local backend an
// exclusivelock.Requester sends the request; when no owner answers and
// nobody holds the lock the snapshot is added here directly, under the
// image's exclusive lock taken for the operation, as librbd does (the
// image is not served: its journal was committed when the last owner
// released the lock). When the lock is held but its owner does not answer (a dead or
// frozen node) nothing is made: ErrOwnerUnresponsive names the holder.

// SnapshotInfo describes a snapshot of an image.
type SnapshotInfo struct {
	ID      uint64
	Name    string
	Size    int64 // the image's size when the snapshot was taken
	Created time.Time
	// Children counts the clones of the snapshot (clone v2).
	Children uint32
	// Namespace is the snapshot's (user, or trash for a removed snapshot
	// kept for its clones).
	Namespace clsrbd.SnapshotNamespace
}

// Errors of snapshots, for callers to branch on.
var (
	// ErrSnapshotNotFound: the image has no such snapshot.
	ErrSnapshotNotFound = image.ErrSnapshotNotFound
	// ErrOwnerUnresponsive: a client holds the image's exclusive lock but
	// did not answer a request (a dead or frozen node): the operation
	// needs the owner (or the lock broken by a NodeStage takeover).
	ErrOwnerUnresponsive = errors.New("the image's lock owner does not answer")
)

// Snapshotter makes, reads and removes snapshots of images, and copies an
// image's snapshot into a new image. Both backends implement it.
type Snapshotter interface {
	// CreateSnapshot makes user snapshot snap of image name (through its
	// lock owner if a node serves it) and describes it; an existing
	// snapshot of that name is returned as it is.
	CreateSnapshot(ctx context.Context, pool objstore.Pool, name, snap string) (SnapshotInfo, error)
	// RemoveSnapshot removes user snapshot snap of image name (through its
	// lock owner if a node serves it); ErrSnapshotNotFound if it is gone.
	RemoveSnapshot(ctx context.Context, pool objstore.Pool, name, snap string) error
	// Snapshot describes user snapshot snap of image name
	// (ErrSnapshotNotFound, image.ErrNotFound).
	Snapshot(ctx context.Context, pool objstore.Pool, name, snap string) (SnapshotInfo, error)
}

// SnapshotterOf returns st's Snapshotter.
func SnapshotterOf(st Storage) (Snapshotter, error) {
	s, ok := st.(Snapshotter)
	if !ok {
		return nil, fmt.Errorf("backend %s: snapshots: %w", st.Backend(), image.ErrUnsupported)
	}
	return s, nil
}

var userNS = clsrbd.SnapshotNamespace{Type: rbdnotify.SnapNamespaceUser}

// snapshotOf reads user snapshot snap of image name from its header (cls
// calls: the same on both backends).
func snapshotOf(ctx context.Context, pool objstore.Pool, name, snap string) (SnapshotInfo, error) {
	_, hdr, err := headerOf(ctx, pool, name)
	if errors.Is(err, objstore.ErrNotFound) {
		return SnapshotInfo{}, fmt.Errorf("image %q: %w", name, image.ErrNotFound)
	}
	if err != nil {
		return SnapshotInfo{}, err
	}
	s, err := clsrbd.FindSnapshot(ctx, pool, hdr, userNS, snap)
	if errors.Is(err, objstore.ErrNotFound) {
		return SnapshotInfo{}, fmt.Errorf("image %q: snapshot %q: %w", name, snap, ErrSnapshotNotFound)
	}
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("image %q: snapshot %q: %w", name, snap, err)
	}
	return SnapshotInfo{ID: s.ID, Name: s.Name, Size: int64(s.ImageSize), Created: s.Timestamp.Time().UTC(), Children: s.ChildCount, Namespace: s.Namespace}, nil
}

func (s *localStorage) Snapshot(ctx context.Context, pool objstore.Pool, name, snap string) (SnapshotInfo, error) {
	return snapshotOf(ctx, pool, name, snap)
}

// lockHolder returns the holder of the image's exclusive lock ("" if the
// lock is free).
func lockHolder(ctx context.Context, pool objstore.Pool, hdr string) (string, error) {
	info, err := clslock.GetLockInfo(ctx, pool, hdr, exclusivelock.LockName)
	if errors.Is(err, objstore.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("lock of %s: %w", hdr, err)
	}
	for id, li := range info.Lockers {
		return fmt.Sprintf("%s at %s", id.Locker, li.Addr.ClientAddr()), nil
	}
	return "", nil
}

// ownerRequest runs fn with a Requester on the image's header. It returns
// (false, nil) when no owner answered and the lock is free (the caller
// acts directly), ErrOwnerUnresponsive when the lock is held by a client
// that did not answer.
func ownerRequest(ctx context.Context, pool objstore.Pool, name, hdr string, fn func(r *exclusivelock.Requester) error) (bool, error) {
	r, err := exclusivelock.NewRequester(ctx, pool, hdr)
	if err != nil {
		return false, err
	}
	defer func() { _ = r.Close(context.WithoutCancel(ctx)) }()
	err = fn(r)
	if !errors.Is(err, exclusivelock.ErrNoOwner) {
		return true, err
	}
	holder, herr := lockHolder(ctx, pool, hdr)
	if herr != nil {
		return false, herr
	}
	if holder != "" {
		return false, fmt.Errorf("image %q: its exclusive lock is held by %s, which did not answer the request (waited up to %v): %w (if that node is gone, staging the volume elsewhere fences it and takes the lock over)",
			name, holder, exclusivelock.DefaultNotifyTimeout, ErrOwnerUnresponsive)
	}
	return false, nil
}

func (s *localStorage) CreateSnapshot(ctx context.Context, pool objstore.Pool, name, snap string) (SnapshotInfo, error) {
	if info, err := snapshotOf(ctx, pool, name, snap); !errors.Is(err, ErrSnapshotNotFound) {
		return info, err
	}
	_, hdr, err := headerOf(ctx, pool, name)
	if err != nil {
		return SnapshotInfo{}, err
	}
	for attempt := 0; ; attempt++ {
		served, err := ownerRequest(ctx, pool, name, hdr, func(r *exclusivelock.Requester) error {
			return r.SnapCreate(ctx, userNS, snap)
		})
		if served && errors.Is(err, objstore.ErrExists) {
			err = nil // made by an earlier attempt
		}
		if err == nil && !served {
			err = underLock(ctx, pool, hdr, func(l *exclusivelock.Lock) error { return addSnapshotDirect(ctx, pool, hdr, snap, l) })
			if errors.Is(err, exclusivelock.ErrLocked) && attempt < 2 {
				continue // a node took the lock meanwhile: ask it
			}
		}
		if err != nil {
			return SnapshotInfo{}, fmt.Errorf("snapshot %s@%s: %w", name, snap, err)
		}
		return snapshotOf(ctx, pool, name, snap)
	}
}

// underLock runs fn holding the image's exclusive lock, as librbd takes it
// for a maintenance operation on an image nobody serves: a node that
// stages the image meanwhile waits for it (and then reads the header fn
// changed) instead of writing without the new snapshot context. A live
// holder is never fenced here: ErrLocked.
func underLock(ctx context.Context, pool objstore.Pool, hdr string, fn func(l *exclusivelock.Lock) error) error {
	l, err := exclusivelock.Acquire(ctx, pool, hdr, exclusivelock.Options{OwnerTimeout: -1, Description: "csi-rbdj controller (snapshot)"})
	if err != nil {
		return err
	}
	err = fn(l)
	if nerr := l.NotifyHeaderUpdate(ctx); nerr != nil && err == nil {
		klog.FromContext(ctx).V(1).Info("Header update notification after a snapshot failed", "object", hdr, "err", nerr)
	}
	return errors.Join(err, l.Release(context.WithoutCancel(ctx)))
}

// addSnapshotDirect adds a snapshot to an image nobody serves:
// allocate a self-managed snapshot id, rbd.snapshot_add (librbd's
// SnapshotCreateRequest without the journal: there is no owner to journal
// it, and the next owner reads the snapshot from the header).
func addSnapshotDirect(ctx context.Context, pool objstore.Pool, hdr, snap string, l *exclusivelock.Lock) error {
	sn, err := objstore.Snapper(pool)
	if err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		id, err := sn.SelfManagedSnapCreate(ctx)
		if err != nil {
			return fmt.Errorf("allocate a snapshot id: %w", err)
		}
		var op objstore.WriteOp
		l.Guard(&op)
		clsrbd.SnapshotAdd(&op, id, snap, userNS)
		err = pool.Operate(ctx, hdr, &op)
		if err == nil {
			return nil
		}
		// Release the unused id, as librbd does.
		if rerr := sn.SelfManagedSnapRemove(context.WithoutCancel(ctx), id); rerr != nil && err == nil {
			err = rerr
		}
		if errors.Is(err, objstore.ErrStale) && attempt < 10 {
			continue // a newer snapshot id was recorded meanwhile
		}
		return fmt.Errorf("add snapshot %q: %w", snap, err)
	}
}

func (s *localStorage) RemoveSnapshot(ctx context.Context, pool objstore.Pool, name, snap string) error {
	info, err := snapshotOf(ctx, pool, name, snap)
	if err != nil {
		return err
	}
	_, hdr, err := headerOf(ctx, pool, name)
	if err != nil {
		return err
	}
	served, err := ownerRequest(ctx, pool, name, hdr, func(r *exclusivelock.Requester) error {
		return r.SnapRemove(ctx, userNS, snap)
	})
	if served && errors.Is(err, objstore.ErrNotFound) {
		return fmt.Errorf("remove snapshot %s@%s: %w", name, snap, ErrSnapshotNotFound)
	}
	if err != nil {
		return fmt.Errorf("remove snapshot %s@%s: %w", name, snap, err)
	}
	if served {
		return nil
	}
	if err := underLock(ctx, pool, hdr, func(l *exclusivelock.Lock) error { return removeSnapshotDirect(ctx, pool, hdr, info.ID, l) }); err != nil {
		return fmt.Errorf("remove snapshot %s@%s: %w", name, snap, err)
	}
	return nil
}

// removeSnapshotDirect is librbd's SnapshotRemoveRequest on an image nobody
// serves: move it to the trash namespace, keep it there while clones use
// it, else release its id (the store trims its clones) and remove its
// record.
func removeSnapshotDirect(ctx context.Context, pool objstore.Pool, hdr string, id uint64, l *exclusivelock.Lock) error {
	var op objstore.WriteOp
	l.Guard(&op)
	clsrbd.SnapshotTrashAdd(&op, id)
	trashed := true
	switch err := pool.Operate(ctx, hdr, &op); {
	case err == nil, errors.Is(err, objstore.ErrExists):
	case errors.Is(err, objstore.ErrNotSupp):
		trashed = false
	default:
		return fmt.Errorf("move the snapshot to the trash: %w", err)
	}
	cur, err := clsrbd.SnapshotGet(ctx, pool, hdr, id)
	if err != nil {
		return fmt.Errorf("get the snapshot: %w", err)
	}
	if cur.ChildCount > 0 {
		if trashed {
			return nil // removed with its last child
		}
		return fmt.Errorf("snapshot has %d clone children: %w", cur.ChildCount, objstore.ErrBusy)
	}
	sn, err := objstore.Snapper(pool)
	if err != nil {
		return err
	}
	if err := sn.SelfManagedSnapRemove(ctx, id); err != nil && !errors.Is(err, objstore.ErrNotFound) {
		return fmt.Errorf("release snapshot id %d: %w", id, err)
	}
	op = objstore.WriteOp{}
	l.Guard(&op)
	clsrbd.SnapshotRemove(&op, id)
	if err := pool.Operate(ctx, hdr, &op); err != nil && !errors.Is(err, objstore.ErrNotFound) {
		return fmt.Errorf("remove the snapshot record: %w", err)
	}
	return nil
}

// CopySnapshot copies snapshot snapID of image src (of size srcSize as of
// the snapshot) into image dst, which must exist, be unused and be at
// least as large: every object range of the snapshot that holds data is
// written to dst (ranges that read as zeros are skipped: dst is thin).
// It starts at byte from (a whole number of src's objects: where an
// interrupted copy stopped) and calls progress (if not nil) with the bytes
// copied so far after every chunk of copyChunkObjects objects (durable by
// then) and at the end; an error from progress stops the copy. It works on both backends through the object
// store.
func CopySnapshot(ctx context.Context, pool objstore.Pool, src string, snapID uint64, srcSize int64, dst string, from int64, progress func(done int64) error) error {
	s, err := image.Open(ctx, pool, src)
	if err != nil {
		return fmt.Errorf("copy %s@%d: open source: %w", src, snapID, err)
	}
	d, err := image.Open(ctx, pool, dst)
	if err != nil {
		return fmt.Errorf("copy %s@%d to %s: open target: %w", src, snapID, dst, err)
	}
	if d.Size() < srcSize {
		return fmt.Errorf("copy %s@%d (%d bytes) to %s (%d bytes): %w", src, snapID, srcSize, dst, d.Size(), image.ErrOutOfRange)
	}
	obj := s.ObjectSize()
	from = from / obj * obj
	// Reads of copyChunkObjects objects run in parallel (image.ReadAtSnap
	// splits them), and so do the writes of those that hold data.
	buf := make([]byte, copyChunkObjects*obj)
	for off := max(from, 0); off < srcSize; off += int64(len(buf)) {
		p := buf[:min(int64(len(buf)), srcSize-off)]
		if _, err := s.ReadAtSnap(ctx, p, off, snapID); err != nil {
			return fmt.Errorf("copy %s@%d to %s: %w", src, snapID, dst, err)
		}
		// The chunk's objects that hold data are written in parallel; the
		// chunk counts as copied once all are durable.
		var wg sync.WaitGroup
		errs := make([]error, 0, copyChunkObjects)
		var mu sync.Mutex
		for o := int64(0); o < int64(len(p)); o += obj {
			q := p[o:min(o+obj, int64(len(p)))]
			if allZero(q) {
				continue
			}
			wg.Add(1)
			go func(q []byte, at int64) { // owned by this loop: waited for below
				defer wg.Done()
				if _, err := d.WriteAt(ctx, q, at); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}(q, off+o)
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("copy %s@%d to %s: %w", src, snapID, dst, err)
		}
		if progress != nil && off+int64(len(p)) < srcSize {
			if err := progress(off + int64(len(p))); err != nil {
				return err
			}
		}
	}
	if err := d.Flush(ctx); err != nil {
		return fmt.Errorf("copy %s@%d to %s: %w", src, snapID, dst, err)
	}
	if progress != nil {
		return progress(srcSize)
	}
	return nil
}

// copyChunkObjects is how many objects a copy reads at once.
const copyChunkObjects = 8

var zeros = make([]byte, 64<<10)

func allZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeros))
		if !bytes.Equal(p[:n], zeros[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}
