package nodeserver

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// growTimeout bounds one resize2fs / xfs_growfs run.
const growTimeout = 5 * time.Minute

// NodeExpandVolume makes a grown image's new size reach the kernel and the
// filesystem, online: the journaled device re-reads the image header (the
// controller's ControllerExpandVolume grew it, through this node as lock
// owner), the FUSE file and the loop device follow (fuseloop's Resize:
// LOOP_SET_CAPACITY, as `losetup -c` does), then the filesystem mounted at
// the staging path grows (resize2fs for ext4, xfs_growfs for xfs). Block
// volumes: the device only. Nothing is recorded: a restarted plugin serves
// the device at the image's size anyway.
//
// volume_path is the staging path or a publish target of the volume on
// this node; staging_target_path, if given, must be where it is staged.
func (s *Server) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	id := req.GetVolumeId()
	path, err := requireIDAndPath(id, req.GetVolumePath(), "volume_path")
	if err != nil {
		return nil, err
	}
	cr := req.GetCapacityRange()
	if cr.GetRequiredBytes() < 0 || cr.GetLimitBytes() < 0 || (cr.GetLimitBytes() > 0 && cr.GetRequiredBytes() > cr.GetLimitBytes()) {
		return nil, status.Errorf(codes.InvalidArgument, "capacity_range is invalid (required %d, limit %d)", cr.GetRequiredBytes(), cr.GetLimitBytes())
	}
	ctx, done, err := s.operation(ctx, id, "volumePath", path)
	if err != nil {
		return nil, err
	}
	defer done()
	logger := klog.FromContext(ctx)

	v := s.get(id)
	if v == nil {
		return nil, status.Errorf(codes.NotFound, "volume %s is not staged on this node", id)
	}
	rec := v.rec
	if sp := req.GetStagingTargetPath(); sp != "" && filepath.Clean(sp) != rec.StagingPath {
		return nil, status.Errorf(codes.InvalidArgument, "volume %s is staged at %s, not at staging_target_path %s", id, rec.StagingPath, sp)
	}
	if _, published := rec.Publish[path]; !published && path != rec.StagingPath {
		return nil, status.Errorf(codes.NotFound, "volume %s is not staged or published at %s", id, path)
	}
	if c := req.GetVolumeCapability(); c != nil && (c.GetBlock() != nil) != rec.Block {
		return nil, status.Errorf(codes.InvalidArgument, "volume_capability says block=%v, but volume %s is staged with block=%v", c.GetBlock() != nil, id, rec.Block)
	}
	if v.dev == nil || v.loop == nil {
		why := "its device is not attached"
		if v.err != nil {
			why = v.err.Error()
		}
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is staged but not served (%s): stage it again before expanding it", id, why)
	}
	if err := v.loop.Err(); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "loop device %s of volume %s stopped serving (%v): stage it again before expanding it", rec.Device, id, err)
	}
	if err := v.dev.Err(); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "journaled device of volume %s failed (%v): stage it again before expanding it", id, err)
	}

	// The header update that announced the new size is handled in the
	// background; read the header now so that this call sees it.
	if err := v.dev.Refresh(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "re-read the image header of %s: %v", id, err)
	}
	size := v.dev.Size() &^ 511 // the loop device counts 512-byte sectors
	if req := cr.GetRequiredBytes(); size < req {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s has %d bytes, fewer than the %d required: grow it with ControllerExpandVolume first", id, size, req)
	}
	from := v.loop.Size()
	start := time.Now()
	if size > from {
		if err := v.loop.Resize(ctx, size); err != nil {
			return nil, status.Errorf(codes.Internal, "grow loop device %s of volume %s to %d bytes: %v", rec.Device, id, size, err)
		}
		s.putHolder(ctx, v.loop, rec.AckPolicy) // the successor must know the new size (holder.go)
	}
	switch {
	case rec.Block:
	case rec.ReadOnly:
		logger.Info("Read-only volume: the device grew, its filesystem is left as it is", "device", rec.Device)
	default:
		if err := s.growFilesystem(ctx, rec.FsType, rec.Device, rec.StagingPath); err != nil {
			return nil, err
		}
	}
	logger.Info("Volume expanded on the node", "device", rec.Device, "from", from, "to", size, "block", rec.Block, "fsType", rec.FsType,
		"duration", time.Since(start).Round(time.Millisecond))
	return &csi.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}

// followTimeout bounds one followResize.
const followTimeout = time.Minute

// followResize has a volume's loop device follow its image when the image
// grew without a NodeExpandVolume (`rbd resize` by hand, performed by this
// node as lock owner), as krbd's devices follow their image; the
// filesystem grows only with NodeExpandVolume. It is the journaled
// device's OnResize, which may run inside an I/O or a proxied resize: the
// work is done on a goroutine owned by the server (the devices, whose
// OnResize starts it, are closed before Stop waits), after the volume's
// other operations.
func (s *Server) followResize(id string) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), followTimeout)
		defer cancel()
		logger := klog.FromContext(ctx).WithValues("volumeID", id)
		unlock, err := s.lock(ctx, id)
		if err != nil {
			logger.V(1).Info("The image grew; its loop device follows at the next NodeExpandVolume", "err", err)
			return
		}
		defer unlock()
		v := s.get(id)
		if v == nil || v.dev == nil || v.loop == nil || v.loop.Err() != nil || v.dev.Err() != nil {
			return // not served (any more): a new stage serves the new size
		}
		size := v.dev.Size() &^ 511
		if size <= v.loop.Size() {
			return // NodeExpandVolume was first
		}
		from := v.loop.Size()
		if err := v.loop.Resize(ctx, size); err != nil {
			logger.Error(err, "The image grew, but its loop device could not follow; NodeExpandVolume tries again", "device", v.rec.Device, "size", size)
			return
		}
		logger.Info("Loop device followed its image", "device", v.rec.Device, "from", from, "to", size)
		s.putHolder(ctx, v.loop, v.rec.AckPolicy) // holder.go
	}()
}

// growFilesystem grows the filesystem mounted at mountPath (on device) to
// the device's size, online. Growing a filesystem that already fills the
// device does nothing.
func (s *Server) growFilesystem(ctx context.Context, fsType, device, mountPath string) error {
	var name string
	var args []string
	switch fsType {
	case "ext4", "ext3", "ext2":
		name, args = "resize2fs", []string{device}
	case "xfs":
		name, args = "xfs_growfs", []string{"-d", mountPath}
	default:
		return status.Errorf(codes.InvalidArgument, "growing a %s filesystem is not supported (ext4, xfs)", fsType)
	}
	ctx, cancel := context.WithTimeout(ctx, growTimeout)
	defer cancel()
	out, err := s.mounter.Exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err == nil {
		klog.FromContext(ctx).V(2).Info("Filesystem grown", "command", name, "args", args, "output", strings.TrimSpace(string(out)))
		return nil
	}
	msg := fmt.Sprintf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	if name == "resize2fs" && !hasCapability(unix.CAP_SYS_RESOURCE) {
		// ext4's online resize ioctl (EXT4_IOC_RESIZE_FS) demands
		// CAP_SYS_RESOURCE; without it resize2fs fails with EPERM.
		return status.Errorf(codes.FailedPrecondition,
			"the device of the volume grew, but growing its mounted ext4 filesystem needs the capability CAP_SYS_RESOURCE, which this node plugin lacks (add SYS_RESOURCE to the node plugin container's securityContext.capabilities; the chart does, but a runtime or machine may drop it from the bounding set): %s", msg)
	}
	return status.Errorf(codes.Internal, "grow the %s filesystem at %s: %s", fsType, mountPath, msg)
}

// warnMissingCapabilities says at start what this node plugin will not be
// able to do for lack of a capability, before a NodeExpandVolume fails.
func warnMissingCapabilities(logger klog.Logger) {
	if !hasCapability(unix.CAP_SYS_RESOURCE) {
		logger.Info("This node plugin lacks CAP_SYS_RESOURCE: mounted ext4 volumes cannot grow (NodeExpandVolume fails; XFS and Block volumes grow); give its container the capability SYS_RESOURCE")
	}
}

// hasCapability reports whether this process has capability c in its
// effective set (/proc/self/status CapEff).
func hasCapability(c int) bool {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return true // unknown: do not blame the capability
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return true
			}
			return mask&(1<<uint(c)) != 0
		}
	}
	return true
}
