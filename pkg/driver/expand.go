package driver

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// ControllerExpandVolume grows a volume's image, online: on a volume a node
// serves, the node (the image's lock owner) performs the resize and
// journals it, as librbd's owner does for `rbd resize` (Storage.ExpandImage).
// The node then grows the loop device and the filesystem
// (NodeExpandVolume), so node expansion is always required, for Block
// volumes too.
//
// Capacity is rounded up to whole objects as in CreateVolume. A volume
// already at least as large as required_bytes is left as it is (the CSI
// spec's idempotency rule), unless limit_bytes is below its size: volumes
// never shrink (OutOfRange).
func (d *Driver) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is missing")
	}
	cr := req.GetCapacityRange()
	if cr == nil {
		return nil, status.Error(codes.InvalidArgument, "capacity_range is missing (give required_bytes: the size after expansion)")
	}
	if c := req.GetVolumeCapability(); c != nil {
		if err := volume.ValidateCapability(c); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "%v", err)
		}
	}
	vid, err := volume.ResolveVolumeID(d.o.Backend, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	ctx, done, err := d.operation(ctx, "id/"+vid.String(), "volume", vid.String())
	if err != nil {
		return nil, err
	}
	defer done()
	logger := klog.FromContext(ctx).WithValues("volumeID", vid.String())
	ctx = klog.NewContext(ctx, logger)

	st, err := volume.VolumeStorage(ctx, d.o.Backend, vid, req.GetSecrets(), volume.SecretsControllerExpand)
	if err != nil {
		return nil, err
	}
	pool, err := st.Pool(ctx, vid.Pool)
	if errors.Is(err, storage.ErrPoolNotFound) {
		return nil, status.Errorf(codes.NotFound, "volume %s does not exist (no pool %q)", vid, vid.Pool)
	}
	if err != nil {
		return nil, volume.OpStatus(err, volume.SecretsControllerExpand, codes.Unavailable, fmt.Sprintf("open pool %q", vid.Pool))
	}
	// The image, not the volume record: static (pre-provisioned) volumes
	// have no record and grow too.
	info, err := st.ImageInfo(ctx, pool, vid.Image)
	if errors.Is(err, image.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "volume %s does not exist (no image %s in pool %s)", vid, vid.Image, vid.Pool)
	}
	if err != nil {
		return nil, volume.OpStatus(err, volume.SecretsControllerExpand, codes.Internal, "inspect image of "+vid.String())
	}
	size, err := d.expandedSize(cr, info)
	if err != nil {
		return nil, err
	}
	resp := &csi.ControllerExpandVolumeResponse{CapacityBytes: size, NodeExpansionRequired: true}
	if size == info.Size {
		logger.V(2).Info("Volume already has the requested size", "size", size)
		return resp, nil
	}
	if err := st.ExpandImage(ctx, pool, vid.Image, size); err != nil {
		return nil, expandStatus(vid, info.Size, size, err)
	}
	logger.Info("Volume expanded", "from", info.Size, "to", size)
	return resp, nil
}

// expandedSize is the size a volume of info gets for capacity range cr.
func (d *Driver) expandedSize(cr *csi.CapacityRange, info storage.ImageInfo) (int64, error) {
	req, lim := cr.GetRequiredBytes(), cr.GetLimitBytes()
	switch {
	case req < 0 || lim < 0:
		return 0, status.Errorf(codes.InvalidArgument, "capacity_range has negative bytes (required %d, limit %d)", req, lim)
	case lim > 0 && req > lim:
		return 0, status.Errorf(codes.InvalidArgument, "capacity_range: required_bytes %d exceeds limit_bytes %d", req, lim)
	case lim > 0 && lim < info.Size:
		return 0, status.Errorf(codes.OutOfRange,
			"volume has %d bytes and limit_bytes %d asks for a smaller one, but volumes cannot shrink (the filesystem on them would lose data): to make it smaller, create a new volume of the size you want and copy the data over",
			info.Size, lim)
	case req <= info.Size:
		return info.Size, nil
	case req > d.o.MaxVolumeBytes:
		return 0, status.Errorf(codes.OutOfRange, "requested %d bytes, but the largest volume this driver makes is %d bytes (%d TiB); request less", req, d.o.MaxVolumeBytes, d.o.MaxVolumeBytes>>40)
	}
	obj := int64(1) << info.Order
	size := (req + obj - 1) / obj * obj
	if lim > 0 && size > lim {
		return 0, status.Errorf(codes.OutOfRange, "capacity is rounded up to whole %d-byte objects: %d bytes exceeds limit_bytes %d; raise the limit", obj, size, lim)
	}
	return size, nil
}

// expandStatus maps an ExpandImage error.
func expandStatus(vid volume.VolumeID, from, to int64, err error) error {
	what := fmt.Sprintf("expand volume %s from %d to %d bytes", vid, from, to)
	switch {
	case errors.Is(err, storage.ErrShrink):
		// The image grew meanwhile (another resize of the same volume).
		return status.Errorf(codes.OutOfRange, "%s: %v: volumes cannot shrink; request at least the current size", what, err)
	case errors.Is(err, image.ErrNotFound), errors.Is(err, objstore.ErrNotFound):
		return status.Errorf(codes.NotFound, "%s: the volume does not exist any more: %v", what, err)
	case objstore.Errno(err) == syscall.EBUSY:
		return status.Errorf(codes.FailedPrecondition, "%s: the node serving the volume refused: %v", what, err)
	case objstore.Errno(err) == syscall.EROFS:
		return status.Errorf(codes.Unavailable, "%s: the volume's lock owner did not perform the resize (%v); retry", what, err)
	}
	return volume.OpStatus(err, volume.SecretsControllerExpand, codes.Internal, what)
}
