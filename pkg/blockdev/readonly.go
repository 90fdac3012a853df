package blockdev

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
	"k8s.io/klog/v2"
)

// ErrReadOnly: a write to a device opened with OpenReadOnly. It wraps
// EROFS, which is what a write to it should fail with.
var ErrReadOnly = fmt.Errorf("device opened read-only, without owning the image: %w", syscall.EROFS)

// ErrNotPrimary: Open found, once it owned the image, that the newest tag
// of its journal belongs to another site (a mirror peer: the image is a
// non-primary replica) or to nobody (demoted). Starting an epoch would
// make this site primary again behind the mirroring's back: a split brain.
var ErrNotPrimary = errors.New("image is not primary: its journal belongs to another site")

// OpenReadOnly opens image name for reading only, without owning it: no
// exclusive lock is taken, the journal is neither replayed nor tagged, no
// header watch is registered, nothing is written to the pool. It is how a
// non-primary mirror image is served read-only on its replica site, where
// rbd-mirror owns the image (its lock and journal) and keeps writing the
// primary's changes into it: reads see the image's data objects as they
// are at the time of each read (what rbd-mirror has applied so far).
//
// Writes, discards and write-zeroes fail with ErrReadOnly; a flush has
// nothing to make durable and succeeds. Only
// o.JournalMode is used (for JournalMode); Tag is 0, Owner the zero
// holder. The device does not follow a resize of the image.
func OpenReadOnly(ctx context.Context, pool objstore.Pool, name string, o Options) (*Device, error) {
	img, err := image.Open(ctx, pool, name)
	if err != nil {
		return nil, fmt.Errorf("open device %s read-only: %w", name, err)
	}
	d := &Device{img: img, pool: pool, o: o, readOnly: true, log: klog.FromContext(ctx), bg: context.WithoutCancel(ctx), inflight: newWeighted(defaultMaxPendingBytes)}
	d.size.Store(img.Size())
	d.log.Info("Device opened read-only, without the image's lock or journal", "image", name, "size", img.Size())
	return d, nil
}

// ReadOnly reports whether the device was opened with OpenReadOnly.
func (d *Device) ReadOnly() bool { return d.readOnly }

// checkWritable is check's refusal of any change to a read-only device.
func (d *Device) checkWritable(op string) error {
	if d.readOnly && op != "read" && op != "flush" {
		return fmt.Errorf("%s on %s: %w", op, d.img.Name(), ErrReadOnly)
	}
	return nil
}

// checkTagOwner is Open's check, under the image's lock and before the
// journal is replayed or tagged, that this site may write the image: the
// newest tag of the image's tag class must be local. The node checks the
// same before it opens the image (to serve a non-primary image read-only
// instead); this check closes the window between that check and the lock,
// in which a demotion (librbd takes the lock to demote) may have run.
func (d *Device) checkTagOwner(ctx context.Context, tagClass uint64) error {
	tags, err := d.j.Tags(ctx, &tagClass)
	if err != nil || len(tags) == 0 {
		return err // no tag yet: a journal never opened is local
	}
	last := tags[0]
	for _, t := range tags[1:] {
		if t.Tid > last.Tid {
			last = t
		}
	}
	var td rbdjournal.TagData
	if err := cephenc.Unmarshal(last.Data, &td); err != nil {
		return fmt.Errorf("journal tag %d data: %w", last.Tid, err)
	}
	if td.MirrorUUID != rbdjournal.LocalMirrorUUID {
		return fmt.Errorf("%w (newest tag %d owned by mirror uuid %q)", ErrNotPrimary, last.Tid, td.MirrorUUID)
	}
	return nil
}
