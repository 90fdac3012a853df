package driver

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// Restores (CreateVolume from a snapshot) and clones (from a volume).
//
// The new volume is a layered clone (RBD clone format 2, no protection:
// storage.Cloner) of the snapshot, or, for a clone of a volume, of a
// temporary snapshot of it ("csi-clone-<new image>"), made through the
// volume's lock owner when a node serves it, so the clone holds every
// write acknowledged before CreateVolume. The temporary snapshot is removed
// at once: it moves to the trash snapshot namespace and stays there until
// its clone is deleted or flattened (storage.Reap). Data the clone lacks is
// read from the parent; the node copies it up before a write.
//
// Chains are bounded (StorageClass cloneDepthSoftLimit / HardLimit,
// ceph-csi's 4 and 8): a clone deeper than the soft limit is flattened by
// the controller in the background (flatten.go: FlattenPending in its
// record, retried while a node serves it); one that would be deeper than
// the hard limit is made as a full, independent copy instead — flattened at
// birth — as is any restore or clone whose StorageClass leaves out the
// layering feature. A copy reads the snapshot's objects and writes the new
// image, skipping zeros (storage.CopySnapshot), records its progress
// (CopiedBytes) and continues on the next call if the call's time runs out.
//
// The new volume carries its source's format state: a copy of a volume that
// was never formatted may be formatted by the node, a copy of anything else
// never is (storage.MetaFormatBlank). The volume record holds the source id
// (the same name with another source is AlreadyExists), Layered, and
// CopyPending until the volume is complete: a retry finishes it. A failure
// removes the new image, its record and the temporary snapshot.

// copyProgressEvery is how often a copy records how far it got.
const copyProgressEvery = 5 * time.Second

// contentSource is a resolved volume_content_source.
type contentSource struct {
	id       string          // the snapshot or volume id requested
	vid      volume.VolumeID // the source image
	snap     string          // the snapshot to copy
	temp     bool            // snap is a temporary snapshot of a volume
	size     int64           // the source's size
	blank    bool            // the source may be formatted (never was)
	snapshot bool            // the source is a snapshot
	parent   string          // the image holding snap now (a parked image's name after its volume was deleted)
}

// ID is the source id ("" without a source).
func (s *contentSource) ID() string {
	if s == nil {
		return ""
	}
	return s.id
}

// formatAllowed reports whether the new volume may be marked "new, may be
// formatted": without a source always, with one only if the source was.
func (s *contentSource) formatAllowed() bool { return s == nil || s.blank }

// fitSize returns the size of the new volume: at least the source's. A
// request without required_bytes gets the source's size.
func (s *contentSource) fitSize(size int64, cr *csi.CapacityRange, order uint8) (int64, error) {
	if s == nil {
		return size, nil
	}
	obj := int64(1) << order
	if cr.GetRequiredBytes() == 0 {
		size = (s.size + obj - 1) / obj * obj
		if lim := cr.GetLimitBytes(); lim > 0 && size > lim {
			return 0, status.Errorf(codes.OutOfRange, "the source %s has %d bytes (%d rounded up to whole objects), more than limit_bytes %d", s.id, s.size, size, lim)
		}
	}
	if size < s.size {
		return 0, status.Errorf(codes.OutOfRange, "the source %s has %d bytes, more than the %d requested: a copy cannot be smaller than its source; request at least %d bytes", s.id, s.size, size, s.size)
	}
	return size, nil
}

// checkSourcePlace refuses, before anything is opened or created, a
// content source in another cluster or pool than the new volume (the
// checks of resolveSource, without the storage).
func (d *Driver) checkSourcePlace(req *csi.CreateVolumeRequest, cluster, pool string) error {
	cs := req.GetVolumeContentSource()
	var vid volume.VolumeID
	switch {
	case cs == nil:
		return nil
	case cs.GetSnapshot() != nil:
		sid, err := volume.ResolveSnapshotID(d.o.Backend, cs.GetSnapshot().GetSnapshotId())
		if err != nil {
			return err
		}
		vid = sid.VolumeID
	case cs.GetVolume() != nil:
		v, err := volume.ResolveVolumeID(d.o.Backend, cs.GetVolume().GetVolumeId())
		if err != nil {
			return err
		}
		vid = v
	default:
		return status.Error(codes.InvalidArgument, "volume_content_source names neither a snapshot nor a volume")
	}
	if vid.Cluster != cluster || vid.Pool != pool {
		return status.Errorf(codes.InvalidArgument, "the source is in cluster %q, pool %q; the new volume would be in cluster %q, pool %q: restores and clones are RBD clones within one cluster and pool (a parent in another pool is not served); use a StorageClass of cluster %q and pool %q",
			vid.Cluster, vid.Pool, cluster, pool, vid.Cluster, vid.Pool)
	}
	return nil
}

// resolveSource checks the request's content source: it must exist (else
// NotFound) and live in the new volume's cluster and pool (else
// InvalidArgument). nil without a source.
func (d *Driver) resolveSource(ctx context.Context, st storage.Storage, pool objstore.Pool, params volume.VolumeParams, req *csi.CreateVolumeRequest) (*contentSource, error) {
	cs := req.GetVolumeContentSource()
	if cs == nil {
		return nil, nil
	}
	src := &contentSource{}
	switch {
	case cs.GetSnapshot() != nil:
		sid, err := volume.ResolveSnapshotID(d.o.Backend, cs.GetSnapshot().GetSnapshotId())
		if err != nil {
			return nil, err
		}
		src.id, src.vid, src.snap, src.snapshot = sid.String(), sid.VolumeID, sid.Snap, true
	case cs.GetVolume() != nil:
		vid, err := volume.ResolveVolumeID(d.o.Backend, cs.GetVolume().GetVolumeId())
		if err != nil {
			return nil, err
		}
		src.id, src.vid, src.temp = vid.String(), vid, true
		src.snap = "csi-clone-" + volume.ImageNameFor(req.GetName())
	default:
		return nil, status.Error(codes.InvalidArgument, "volume_content_source names neither a snapshot nor a volume")
	}
	if src.vid.Cluster != st.ClusterID() {
		return nil, status.Errorf(codes.InvalidArgument, "the source %s is in cluster %q, the new volume would be in cluster %q: restores and clones are RBD clones within one cluster and pool (a parent in another pool is not served); use a StorageClass of cluster %q and pool %q",
			src.id, src.vid.Cluster, st.ClusterID(), src.vid.Cluster, src.vid.Pool)
	}
	if src.vid.Pool != params.Pool {
		return nil, status.Errorf(codes.InvalidArgument, "the source %s is in pool %q, the new volume would be in pool %q: restores and clones are RBD clones within one pool; use a StorageClass with pool %q",
			src.id, src.vid.Pool, params.Pool, src.vid.Pool)
	}
	if src.snapshot {
		rec, err := readSnapRecord(ctx, pool, src.snap)
		if errors.Is(err, objstore.ErrNotFound) || err == nil && rec.Source != src.vid.String() {
			return nil, status.Errorf(codes.NotFound, "source snapshot %s does not exist", src.id)
		}
		if err != nil {
			return nil, volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "read snapshot record of "+src.id)
		}
		sn, err := storage.SnapshotterOf(st)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "%v", err)
		}
		if src.parent, err = storage.ImageName(ctx, pool, src.vid.Image, rec.ImageID); errors.Is(err, image.ErrNotFound) {
			return nil, status.Errorf(codes.NotFound, "source snapshot %s does not exist (its image is gone)", src.id)
		} else if err != nil {
			return nil, volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "look up the image of source snapshot "+src.id)
		}
		info, err := sn.Snapshot(ctx, pool, src.parent, src.snap)
		if errors.Is(err, storage.ErrSnapshotNotFound) || errors.Is(err, image.ErrNotFound) {
			return nil, status.Errorf(codes.NotFound, "source snapshot %s does not exist", src.id)
		}
		if err != nil {
			return nil, volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "inspect source snapshot "+src.id)
		}
		src.size, src.blank = info.Size, rec.FormatBlank
		return src, nil
	}
	info, err := st.ImageInfo(ctx, pool, src.vid.Image)
	if errors.Is(err, image.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "source volume %s does not exist", src.id)
	}
	if err != nil {
		return nil, volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "inspect source volume "+src.id)
	}
	fb, err := storage.GetFormatBlank(ctx, pool, src.vid.Image)
	if err != nil {
		return nil, volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "read the format state of "+src.id)
	}
	src.size, src.blank, src.parent = info.Size, fb == storage.FormatBlankNew, src.vid.Image
	return src, nil
}

// populate copies the source into the new image dst (created, unused),
// from where an interrupted copy stopped (rec.CopiedBytes, recorded as the
// copy goes), and clears rec.CopyPending. A volume source is copied from
// a temporary snapshot, which stays while the copy is pending (a retry
// resumes from the same point in time) and is removed when it is done.
func (d *Driver) populate(ctx context.Context, st storage.Storage, pool objstore.Pool, src *contentSource, dst string, rec *volumeRecord) error {
	logger := klog.FromContext(ctx)
	sn, err := storage.SnapshotterOf(st)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "%v", err)
	}
	var info storage.SnapshotInfo
	if src.temp {
		if info, err = sn.CreateSnapshot(ctx, pool, src.vid.Image, src.snap); err != nil {
			return snapStatus(err, "snapshot the source volume "+src.id)
		}
	} else if info, err = sn.Snapshot(ctx, pool, src.parent, src.snap); err != nil {
		if errors.Is(err, storage.ErrSnapshotNotFound) || errors.Is(err, image.ErrNotFound) {
			return status.Errorf(codes.NotFound, "source snapshot %s does not exist", src.id)
		}
		return volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "inspect source snapshot "+src.id)
	}
	last := time.Now()
	progress := func(done int64) error {
		if done < info.Size && time.Since(last) < copyProgressEvery {
			return nil
		}
		last = time.Now()
		r := *rec
		r.CopiedBytes = done
		if done >= info.Size {
			r.CopyPending, r.CopiedBytes = false, 0
		}
		if err := updateRecord(ctx, pool, dst, r); err != nil {
			return fmt.Errorf("record the copy's progress: %w", err)
		}
		*rec = r
		return nil
	}
	if err := storage.CopySnapshot(ctx, pool, src.parent, info.ID, info.Size, dst, rec.CopiedBytes, progress); err != nil {
		return volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, fmt.Sprintf("copy %s", src.id))
	}
	d.removeTempSnapshot(ctx, sn, pool, src)
	logger.Info("Volume copied from its source", "source", src.id, "bytes", info.Size)
	return nil
}

// removeTempSnapshot removes a clone's temporary snapshot of its source.
func (d *Driver) removeTempSnapshot(ctx context.Context, sn storage.Snapshotter, pool objstore.Pool, src *contentSource) {
	if !src.temp {
		return
	}
	if err := sn.RemoveSnapshot(context.WithoutCancel(ctx), pool, src.vid.Image, src.snap); err != nil && !errors.Is(err, storage.ErrSnapshotNotFound) {
		klog.FromContext(ctx).Error(err, "Could not remove the temporary snapshot of a clone's source", "source", src.id, "snapshot", src.snap)
	}
}

// finishCopy runs populate. A copy cut short by the request's deadline
// (a large volume) keeps what it copied and answers DeadlineExceeded: the
// CO calls CreateVolume again, which continues. Any other failure removes
// the image, its record and the temporary snapshot: nothing is left.
func (d *Driver) finishCopy(ctx context.Context, st storage.Storage, pool objstore.Pool, src *contentSource, dst string, rec *volumeRecord) error {
	err := d.populate(ctx, st, pool, src, dst, rec)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return status.Errorf(codes.DeadlineExceeded, "copying %s into the new volume: %d of %d bytes copied when the call's time ran out; the next CreateVolume call continues the copy: %v",
			src.id, rec.CopiedBytes, src.size, err)
	}
	logger := klog.FromContext(ctx)
	cctx := context.WithoutCancel(ctx)
	if sn, serr := storage.SnapshotterOf(st); serr == nil {
		d.removeTempSnapshot(cctx, sn, pool, src)
	}
	if rerr := st.RemoveImage(cctx, pool, dst); rerr != nil && !errors.Is(rerr, image.ErrNotFound) {
		logger.Error(rerr, "Could not remove the image of a failed copy", "image", dst)
	} else if rerr := removeRecord(cctx, pool, dst); rerr != nil {
		logger.Error(rerr, "Could not remove the record of a failed copy", "image", dst)
	}
	return err
}

// planLayered decides how a new volume with source src is made: as a
// layered clone, unless its StorageClass leaves out the layering feature
// or asks for mirroring, or the new image would be more than the hard
// limit of images away from its oldest ancestor (then a full copy:
// flattened at birth). depth is the new image's.
func planLayered(ctx context.Context, pool objstore.Pool, src *contentSource, params volume.VolumeParams) (layered bool, depth int, err error) {
	if params.Features&clsrbd.FeatureLayering == 0 {
		return false, 0, nil
	}
	if params.Mirroring != "" {
		// rbd-mirror replicates a clone only once its parent and the
		// parent's snapshot are on the peer: a mirrored volume is
		// independent of its source.
		return false, 0, nil
	}
	pd, err := storage.ImageDepth(ctx, pool, src.parent)
	switch {
	case errors.Is(err, image.ErrUnsupported):
		return false, 0, nil // a parent chain this driver does not follow: copy
	case errors.Is(err, image.ErrNotFound):
		return false, 0, status.Errorf(codes.NotFound, "source %s does not exist", src.id)
	case err != nil:
		return false, 0, volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "inspect the parent chain of "+src.id)
	}
	depth = pd + 1
	return depth <= params.WithCloneDefaults().CloneDepthHardLimit, depth, nil
}

// createLayered makes image dst a layered clone of src (its snapshot, or a
// temporary snapshot of its volume made now) of size bytes, then finishes
// it. A failure removes the temporary snapshot and the record: nothing is
// left (CloneImage is all or nothing).
func (d *Driver) createLayered(ctx context.Context, st storage.Storage, pool objstore.Pool, src *contentSource, dst string, size int64, params volume.VolumeParams, rec *volumeRecord) error {
	sn, err := storage.SnapshotterOf(st)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "%v", err)
	}
	cl, err := storage.ClonerOf(st)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "%v", err)
	}
	if src.temp {
		if _, err := sn.CreateSnapshot(ctx, pool, src.vid.Image, src.snap); err != nil {
			d.abortLayered(ctx, st, pool, src, dst)
			return snapStatus(err, "snapshot the source volume "+src.id)
		}
	}
	if err := cl.CloneImage(ctx, pool, src.parent, src.snap, dst, size, params.CreateOptions()); err != nil {
		d.abortLayered(ctx, st, pool, src, dst)
		switch {
		case errors.Is(err, storage.ErrSnapshotNotFound), errors.Is(err, image.ErrNotFound):
			return status.Errorf(codes.NotFound, "source %s does not exist: %v", src.id, err)
		case errors.Is(err, image.ErrInvalid):
			return status.Errorf(codes.InvalidArgument, "clone %s: %v", src.id, err)
		}
		return volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "clone "+src.id)
	}
	klog.FromContext(ctx).Info("Volume cloned from its source (layered)", "source", src.id, "parent", src.parent, "snapshot", src.snap)
	return d.finishLayered(ctx, st, pool, src, dst, rec)
}

// abortLayered removes what a failed layered clone left: the clone image
// (detached from its parent), the temporary snapshot and the record.
func (d *Driver) abortLayered(ctx context.Context, st storage.Storage, pool objstore.Pool, src *contentSource, dst string) {
	logger := klog.FromContext(ctx)
	cctx := context.WithoutCancel(ctx)
	if err := st.RemoveImage(cctx, pool, dst); err != nil && !errors.Is(err, image.ErrNotFound) {
		logger.Error(err, "Could not remove the image of a failed clone", "image", dst)
		return // the record stays: a retry or DeleteVolume finds the image
	}
	if sn, err := storage.SnapshotterOf(st); err == nil {
		d.removeTempSnapshot(cctx, sn, pool, src)
	}
	if err := removeRecord(cctx, pool, dst); err != nil {
		logger.Error(err, "Could not remove the record of a failed clone", "image", dst)
	}
}

// finishLayered completes a layered clone dst: the temporary snapshot of a
// volume source is removed (it moves to the trash namespace while the
// clone uses it) and the record says whether the clone waits for a
// background flatten (deeper than the soft limit). A retry after a crash
// runs it again. If it fails, the clone, the temporary snapshot and the
// record are removed (the CO's retry starts over).
func (d *Driver) finishLayered(ctx context.Context, st storage.Storage, pool objstore.Pool, src *contentSource, dst string, rec *volumeRecord) error {
	err := d.completeLayered(ctx, st, pool, src, dst, rec)
	if err != nil {
		d.abortLayered(ctx, st, pool, src, dst)
	}
	return err
}

func (d *Driver) completeLayered(ctx context.Context, st storage.Storage, pool objstore.Pool, src *contentSource, dst string, rec *volumeRecord) error {
	if src.temp {
		sn, err := storage.SnapshotterOf(st)
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "%v", err)
		}
		if err := sn.RemoveSnapshot(ctx, pool, src.vid.Image, src.snap); err != nil && !errors.Is(err, storage.ErrSnapshotNotFound) {
			return snapStatus(err, fmt.Sprintf("remove the temporary snapshot %s of %s (the clone holds it in the trash namespace)", src.snap, src.id))
		}
	}
	depth, err := storage.ImageDepth(ctx, pool, dst)
	if err != nil {
		return volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "inspect the new clone "+dst)
	}
	r := *rec
	r.CopyPending = false
	r.FlattenPending = depth > rec.Params.WithCloneDefaults().CloneDepthSoftLimit
	if err := updateRecord(ctx, pool, dst, r); err != nil {
		return volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "record the new clone "+dst)
	}
	*rec = r
	if r.FlattenPending {
		klog.FromContext(ctx).Info("Clone deeper than the soft limit: flattened in the background", "image", dst, "depth", depth, "softLimit", rec.Params.WithCloneDefaults().CloneDepthSoftLimit)
		d.kickFlattener()
	}
	return nil
}
