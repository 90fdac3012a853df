package image

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
)

// DefaultFeatures are the features of a new image when CreateOptions
// leaves them zero: what a journaled volume needs.
const DefaultFeatures = clsrbd.FeatureLayering | clsrbd.FeatureExclusiveLock | clsrbd.FeatureJournaling

// creatableFeatures are the features Create can set up. Object map and
// fast diff need an object map object kept in step with every write, the
// data pool and striping features a data layout this package does not
// implement.
const creatableFeatures = clsrbd.FeatureLayering | clsrbd.FeatureExclusiveLock |
	clsrbd.FeatureDeepFlatten | clsrbd.FeatureJournaling

// CreateOptions describe a new image. Zero fields take librbd's defaults.
type CreateOptions struct {
	// Order is log2 of the object size (default 22: 4 MiB objects).
	Order uint8
	// Features are clsrbd.Feature* bits (default DefaultFeatures).
	// Journaling requires exclusive-lock, as in librbd.
	Features uint64
	// JournalOrder is log2 of the journal object size (default 24).
	JournalOrder uint8
	// JournalSplayWidth is the number of journal objects written in
	// parallel (default 4).
	JournalSplayWidth uint8
}

func (o CreateOptions) withDefaults() CreateOptions {
	if o.Order == 0 {
		o.Order = 22
	}
	if o.Features == 0 {
		o.Features = DefaultFeatures
	}
	if o.JournalOrder == 0 {
		o.JournalOrder = 24
	}
	if o.JournalSplayWidth == 0 {
		o.JournalSplayWidth = 4
	}
	return o
}

func (o CreateOptions) validate() error {
	f := o.Features
	switch {
	case o.Order < MinOrder || o.Order > MaxOrder:
		return fmt.Errorf("order %d not in [%d, %d]: %w", o.Order, MinOrder, MaxOrder, ErrInvalid)
	case f&^clsrbd.FeaturesAll != 0:
		return fmt.Errorf("unknown features 0x%x: %w", f&^clsrbd.FeaturesAll, ErrInvalid)
	case f&clsrbd.FeaturesInternal != 0:
		return fmt.Errorf("internal features %v: %w", clsrbd.FeatureNames(f&clsrbd.FeaturesInternal), ErrInvalid)
	case f&clsrbd.FeatureFastDiff != 0 && f&clsrbd.FeatureObjectMap == 0:
		return fmt.Errorf("fast-diff without object-map: %w", ErrInvalid)
	case f&clsrbd.FeatureObjectMap != 0 && f&clsrbd.FeatureExclusiveLock == 0:
		return fmt.Errorf("object-map without exclusive-lock: %w", ErrInvalid)
	case f&clsrbd.FeatureJournaling != 0 && f&clsrbd.FeatureExclusiveLock == 0:
		return fmt.Errorf("journaling without exclusive-lock: %w", ErrInvalid)
	case f&^creatableFeatures != 0:
		return fmt.Errorf("features %v: %w", clsrbd.FeatureNames(f&^creatableFeatures), ErrUnsupported)
	case f&clsrbd.FeatureJournaling != 0 && (o.JournalOrder < journal.MinOrder || o.JournalOrder > journal.MaxOrder):
		return fmt.Errorf("journal order %d not in [%d, %d]: %w", o.JournalOrder, journal.MinOrder, journal.MaxOrder, ErrInvalid)
	}
	return nil
}

// cleanupTimeout bounds the rollback of a failed Create, which runs even
// when the caller's context is done.
const cleanupTimeout = 30 * time.Second

// errIDInUse reports that a generated id collides with an existing image's
// objects; Create retries with another id.
var errIDInUse = errors.New("image id in use")

// maxIDAttempts bounds the ids Create tries.
const maxIDAttempts = 8

// Create creates image name of size bytes in pool, as librbd's
// CreateRequest does: a directory entry, the id object rbd_id.<name> holding
// a new id, the header rbd_header.<id> initialised by rbd.create, and with
// the journaling feature the journal (id = image id, data in the pool)
// with the image's client "" registered on a new tag class and that
// class's first tag allocated. It fails with ErrExists if the name is taken.
//
// Create is all or nothing: on failure it removes what it created (also if
// ctx is done). A crash mid-way can leave a partial image behind, which
// Remove clears.
//
// Unlike librbd it does not enable mirroring (the local backend has none).
func Create(ctx context.Context, pool objstore.Pool, name string, size int64, o CreateOptions) error {
	o = o.withDefaults()
	if name == "" {
		return fmt.Errorf("create image: empty name: %w", ErrInvalid)
	}
	if size < 0 {
		return fmt.Errorf("create image %q: size %d: %w", name, size, ErrInvalid)
	}
	if err := o.validate(); err != nil {
		return fmt.Errorf("create image %q: %w", name, err)
	}
	var err error
	for range maxIDAttempts {
		id := newImageID(pool.Client().ID)
		err = create(ctx, pool, name, id, uint64(size), o)
		if !errors.Is(err, errIDInUse) {
			break
		}
		klog.FromContext(ctx).V(2).Info("Image id in use, trying another", "image", name, "id", id, "err", err)
	}
	if err != nil {
		return fmt.Errorf("create image %q: %w", name, err)
	}
	return nil
}

// newImageID returns an id shaped as librbd's util::generate_image_id: the
// client's instance id and a random u32 in hex, at most 14 characters.
func newImageID(clientID uint64) string {
	var r [4]byte
	_, _ = rand.Read(r[:]) // never fails on Linux
	id := strconv.FormatUint(clientID, 16) + strconv.FormatUint(uint64(binary.LittleEndian.Uint32(r[:])), 16)
	const maxLen = 14 // RBD_MAX_IMAGE_ID_LENGTH
	if len(id) > maxLen {
		id = id[len(id)-maxLen:]
	}
	return id
}

// undoStack collects the steps that reverse a partial Create.
type undoStack []func(ctx context.Context) error

func (u undoStack) run(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	var errs []error
	for i := len(u) - 1; i >= 0; i-- {
		if err := u[i](ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func create(ctx context.Context, pool objstore.Pool, name, id string, size uint64, o CreateOptions) (err error) {
	var undo undoStack
	defer func() {
		if err == nil {
			return
		}
		if uerr := undo.run(ctx); uerr != nil {
			klog.FromContext(ctx).Error(uerr, "Rolling back a failed image create left objects behind; remove the image to clear them", "image", name, "id", id)
			err = fmt.Errorf("%w (roll back: %v)", err, uerr)
		}
	}()

	op := &objstore.WriteOp{}
	clsrbd.DirAddImage(op, name, id)
	if err := pool.Operate(ctx, clsrbd.DirectoryOID, op); err != nil {
		switch {
		case errors.Is(err, objstore.ErrExists):
			return fmt.Errorf("%w: %w", ErrExists, err)
		case errors.Is(err, syscall.EBADF):
			return fmt.Errorf("%w: directory: %w", errIDInUse, err)
		}
		return fmt.Errorf("add to directory: %w", err)
	}
	undo = append(undo, func(ctx context.Context) error {
		op := &objstore.WriteOp{}
		clsrbd.DirRemoveImage(op, name, id)
		return ignoreNotFound(pool.Operate(ctx, clsrbd.DirectoryOID, op))
	})

	idOID := clsrbd.IDOID(name)
	op = &objstore.WriteOp{}
	op.Create(true)
	clsrbd.SetID(op, id)
	if err := pool.Operate(ctx, idOID, op); err != nil {
		if errors.Is(err, objstore.ErrExists) {
			// Not ours: leave it (librbd does the same).
			return fmt.Errorf("%w: %w", ErrExists, err)
		}
		return fmt.Errorf("create id object: %w", err)
	}
	undo = append(undo, removeStep(pool, idOID))

	hdr := clsrbd.HeaderOID(id)
	op = &objstore.WriteOp{}
	op.Create(true)
	clsrbd.Create(op, size, o.Order, o.Features, clsrbd.DataPrefix+id, -1)
	if err := pool.Operate(ctx, hdr, op); err != nil {
		if errors.Is(err, objstore.ErrExists) {
			return fmt.Errorf("%w: header: %w", errIDInUse, err)
		}
		return fmt.Errorf("create header: %w", err)
	}
	undo = append(undo, removeStep(pool, hdr))

	if o.Features&clsrbd.FeatureJournaling != 0 {
		err := journal.Create(ctx, pool, id, journal.CreateOptions{Order: o.JournalOrder, SplayWidth: o.JournalSplayWidth, DataPoolID: -1})
		if errors.Is(err, objstore.ErrExists) {
			return fmt.Errorf("%w: journal: %w", errIDInUse, err)
		}
		if err != nil {
			return err
		}
		undo = append(undo, func(ctx context.Context) error { return journal.Remove(ctx, pool, nil, id) })
		if err := InitJournal(ctx, pool, id, journal.Naming{}); err != nil {
			return err
		}
	}
	return nil
}

// imageClientID is the journal client id of the image itself
// (librbd::Journal::IMAGE_CLIENT_ID).
const imageClientID = ""

// InitJournal sets up a new journal of image id, with objects named by
// naming (zero: librbd's image journal), as librbd's journal::CreateRequest
// does: a tag of a new class owned by the local image (TagData with an
// empty mirror uuid), then the image's client "" registered with that tag
// class. extentlog's metadata journal is set up the same way, so that the
// device's epoch logic is the same in both modes.
func InitJournal(ctx context.Context, pool objstore.Pool, id string, naming journal.Naming) (err error) {
	j, err := journal.Open(ctx, pool, id, imageClientID, journal.Options{Naming: naming})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := j.Close(ctx); cerr != nil && err == nil {
			err = cerr
		}
	}()
	tag, err := j.AllocateTag(ctx, clsjournal.TagClassNew, cephenc.Marshal(rbdjournal.TagData{MirrorUUID: rbdjournal.LocalMirrorUUID}))
	if err != nil {
		return err
	}
	return j.RegisterClient(ctx, cephenc.Marshal(rbdjournal.ClientData{Meta: rbdjournal.ImageClientMeta{TagClass: tag.TagClass}}))
}

func removeStep(pool objstore.Pool, oid string) func(ctx context.Context) error {
	return func(ctx context.Context) error { return removeObject(ctx, pool, oid) }
}

// removeObject removes oid; a missing object is not an error.
func removeObject(ctx context.Context, pool objstore.Pool, oid string) error {
	op := &objstore.WriteOp{}
	op.Remove()
	if err := ignoreNotFound(pool.Operate(ctx, oid, op)); err != nil {
		return fmt.Errorf("remove %s: %w", oid, err)
	}
	return nil
}

func ignoreNotFound(err error) error {
	if errors.Is(err, objstore.ErrNotFound) {
		return nil
	}
	return err
}

// lookupID finds the id of image name as librbd's remove does: from the id
// object, else from the directory (after a crash part-way through a
// remove, one may be gone).
func lookupID(ctx context.Context, pool objstore.Pool, name string) (string, error) {
	id, err := clsrbd.GetID(ctx, pool, clsrbd.IDOID(name))
	if err == nil {
		return id, nil
	}
	if !errors.Is(err, objstore.ErrNotFound) {
		return "", err
	}
	id, err = clsrbd.DirGetID(ctx, pool, clsrbd.DirectoryOID, name)
	if errors.Is(err, objstore.ErrNotFound) {
		return "", fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return id, err
}

// Remove deletes image name from pool in librbd's order: its data
// objects, journal, header, id object and finally its directory entry, so
// that a Remove interrupted by a crash can be run again to finish. It fails
// with ErrBusy while the image's header has watchers (an open user) and
// with ErrNotFound if nothing of the image is left.
func Remove(ctx context.Context, pool objstore.Pool, name string) error {
	id, err := lookupID(ctx, pool, name)
	if err != nil {
		return fmt.Errorf("remove image %q: %w", name, err)
	}
	hdr := clsrbd.HeaderOID(id)
	if err := checkUnwatched(ctx, pool, hdr); err != nil {
		return fmt.Errorf("remove image %q: %w", name, err)
	}
	prefix, err := clsrbd.GetObjectPrefix(ctx, pool, hdr)
	if errors.Is(err, objstore.ErrNotFound) {
		prefix, err = clsrbd.DataPrefix+id, nil
	}
	if err != nil {
		return fmt.Errorf("remove image %q: %w", name, err)
	}
	if err := removeDataObjects(ctx, pool, prefix, 0); err != nil {
		return fmt.Errorf("remove image %q: %w", name, err)
	}
	if err := journal.Remove(ctx, pool, nil, id); err != nil {
		return fmt.Errorf("remove image %q: %w", name, err)
	}
	for _, oid := range []string{hdr, clsrbd.IDOID(name)} {
		if err := removeObject(ctx, pool, oid); err != nil {
			return fmt.Errorf("remove image %q: %w", name, err)
		}
	}
	op := &objstore.WriteOp{}
	clsrbd.DirRemoveImage(op, name, id)
	if err := ignoreNotFound(pool.Operate(ctx, clsrbd.DirectoryOID, op)); err != nil {
		return fmt.Errorf("remove image %q: directory: %w", name, err)
	}
	return nil
}

// checkUnwatched fails with ErrBusy if oid has watchers.
func checkUnwatched(ctx context.Context, pool objstore.Pool, oid string) error {
	ws, err := pool.ListWatchers(ctx, oid)
	if errors.Is(err, objstore.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list watchers of %s: %w", oid, err)
	}
	if len(ws) > 0 {
		return fmt.Errorf("%w: %d watchers on %s (first %s)", ErrBusy, len(ws), oid, ws[0].Client.Name())
	}
	return nil
}

// removeDataObjects removes the data objects named prefix.<n> with n >=
// from, found by listing the pool: that finds every object whatever the
// image's size says, which a crashed shrink or remove may have left wrong.
func removeDataObjects(ctx context.Context, pool objstore.Pool, prefix string, from uint64) error {
	oids, err := pool.List(ctx, prefix+".")
	if err != nil {
		return fmt.Errorf("list data objects: %w", err)
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	sem := make(chan struct{}, maxParallel)
	for _, oid := range oids {
		if n, ok := objectNumber(prefix, oid); !ok || n < from {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := removeObject(ctx, pool, oid); err != nil {
				mu.Lock()
				firstErr = cmpErr(firstErr, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return firstErr
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// Resize sets the size of image name. Shrinking first removes the data
// objects past the new end and truncates the one it falls in, then updates
// the header (librbd's order: an interrupted shrink leaves the old size,
// never stale data inside the new one); it fails with ErrBusy while the
// image is open (a writer could still write past the new end). Growing
// only updates the header, and is allowed while the image is open: the
// header's watchers are notified (an empty payload, librbd's legacy header
// update) so that they Refresh.
func Resize(ctx context.Context, pool objstore.Pool, name string, newSize int64) error {
	if newSize < 0 {
		return fmt.Errorf("resize image %q: size %d: %w", name, newSize, ErrInvalid)
	}
	img, err := Open(ctx, pool, name)
	if err != nil {
		return fmt.Errorf("resize image %q: %w", name, err)
	}
	if err := img.checkWritable("resize"); err != nil {
		return err // names the image already
	}
	if newSize < img.Size() {
		if err := checkUnwatched(ctx, pool, img.headerOID); err != nil {
			return fmt.Errorf("shrink image %q: %w", name, err)
		}
		objSize := img.ObjectSize()
		keep := uint64((newSize + objSize - 1) / objSize)
		if err := removeDataObjects(ctx, pool, img.objectPrefix, keep); err != nil {
			return fmt.Errorf("shrink image %q: %w", name, err)
		}
		if tail := newSize % objSize; tail != 0 {
			op := &objstore.WriteOp{}
			op.AssertExists()
			op.Truncate(uint64(tail))
			if err := img.operateIfExists(ctx, "truncate", uint64(newSize/objSize), op); err != nil {
				return fmt.Errorf("shrink image %q: %w", name, err)
			}
		}
	}
	op := &objstore.WriteOp{}
	clsrbd.SetSize(op, uint64(newSize))
	if err := pool.Operate(ctx, img.headerOID, op); err != nil {
		return fmt.Errorf("resize image %q: %w", name, notFound(err))
	}
	if _, err := pool.Notify(ctx, img.headerOID, nil, notifyTimeout); err != nil {
		klog.FromContext(ctx).V(2).Info("Header update notify failed; watchers refresh on their own", "image", name, "err", err)
	}
	return nil
}

// notifyTimeout is how long a header update notification waits for the
// watchers' acks (librbd's NOTIFY_TIMEOUT).
const notifyTimeout = 5 * time.Second

// ListEntry names one image of a pool.
type ListEntry struct {
	Name string
	ID   string
}

// listPage is the page size of directory listings (librbd lists 1024
// entries at a time).
const listPage = 1024

// List returns the images of pool in name order, from the directory.
func List(ctx context.Context, pool objstore.Pool) ([]ListEntry, error) {
	var out []ListEntry
	start := ""
	for {
		page, err := clsrbd.DirList(ctx, pool, clsrbd.DirectoryOID, start, listPage)
		if errors.Is(err, objstore.ErrNotFound) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("list images of pool %s: %w", pool.Name(), err)
		}
		for _, e := range page {
			out = append(out, ListEntry{Name: e.Name, ID: e.ID})
		}
		if len(page) < listPage {
			return out, nil
		}
		start = page[len(page)-1].Name
	}
}
