package nodeserver

import (
	"context"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// NodePublishVolume bind-mounts the staged volume at the target: the
// staging mount for Filesystem volumes, the loop device node (onto a file)
// for Block volumes.
func (s *Server) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, target, staging := req.GetVolumeId(), req.GetTargetPath(), req.GetStagingTargetPath()
	switch {
	case id == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is missing")
	case target == "":
		return nil, status.Error(codes.InvalidArgument, "target_path is missing")
	case req.GetVolumeCapability() == nil:
		return nil, status.Error(codes.InvalidArgument, "volume_capability is missing")
	case staging == "":
		return nil, status.Error(codes.InvalidArgument, "staging_target_path is missing (this driver stages volumes: call NodeStageVolume first)")
	}
	if err := volume.ValidateNodeCapability(req.GetVolumeCapability()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	if _, err := volume.ResolveVolumeID(s.o.Backend, id); err != nil {
		return nil, err
	}
	target, staging = filepath.Clean(target), filepath.Clean(staging)
	unlock, err := s.readyAndLocked(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	logger := klog.FromContext(ctx).WithValues("volumeID", id, "targetPath", target)

	v := s.get(id)
	if v == nil || v.rec.StagingPath != staging {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged at %s on this node; call NodeStageVolume first", id, staging)
	}
	c := req.GetVolumeCapability()
	if (c.GetBlock() != nil) != v.rec.Block {
		return nil, status.Errorf(codes.InvalidArgument, "volume %s was staged as a %s volume; publish it with the same access type", id, accessType(v.rec.Block))
	}
	if v.dev == nil {
		return nil, status.Errorf(codes.Unavailable, "volume %s is not served on this node (%v); retry after NodeStageVolume", id, v.err)
	}
	readOnly := req.GetReadonly() || v.rec.ReadOnly
	if p, ok := v.rec.Publish[target]; ok {
		if p.ReadOnly != readOnly {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s is already published at %s with read-only %v", id, target, p.ReadOnly)
		}
		mounted, err := isMounted(target)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "%v", err)
		}
		if mounted {
			return &csi.NodePublishVolumeResponse{}, nil
		}
		logger.Info("Publish mount is gone; mounting it again")
	} else if c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER && !readOnly {
		for t, p := range v.rec.Publish {
			if !p.ReadOnly {
				return nil, status.Errorf(codes.FailedPrecondition, "volume %s has access mode SINGLE_NODE_SINGLE_WRITER and is already published for writing at %s", id, t)
			}
		}
	}

	// Record the target before mounting: a restart then knows about every
	// mount that may exist.
	rec := v.rec.clone()
	rec.Publish[target] = publication{ReadOnly: readOnly}
	if err := s.store.save(rec); err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	s.update(func() { v.rec = rec })
	if err := s.bindTarget(v.rec, target, readOnly); err != nil {
		rec := v.rec.clone()
		delete(rec.Publish, target)
		if serr := s.store.save(rec); serr == nil {
			s.update(func() { v.rec = rec })
		}
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	logger.Info("Volume published", "readOnly", readOnly)
	return &csi.NodePublishVolumeResponse{}, nil
}

func accessType(block bool) string {
	if block {
		return "Block"
	}
	return "Filesystem"
}

// bindTarget creates the target and bind-mounts the volume on it.
func (s *Server) bindTarget(r *record, target string, readOnly bool) error {
	if r.Block {
		if err := ensureFile(target); err != nil {
			return err
		}
		if err := bindMount(r.Device, target, readOnly); err != nil {
			_ = os.Remove(target)
			return err
		}
		return nil
	}
	if err := os.MkdirAll(target, 0o750); err != nil {
		return err
	}
	if err := bindMount(r.StagingPath, target, readOnly); err != nil {
		_ = os.Remove(target)
		return err
	}
	return nil
}

// NodeUnpublishVolume unmounts the target and removes it.
func (s *Server) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id := req.GetVolumeId()
	target, err := requireIDAndPath(id, req.GetTargetPath(), "target_path")
	if err != nil {
		return nil, err
	}
	unlock, err := s.readyAndLocked(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()

	v := s.get(id)
	// A dead device's mounts may be busy forever: detach them lazily.
	lazy := v == nil || v.dev == nil || v.loop == nil || v.loop.Err() != nil
	if ms, err := mountsAt(target); err == nil && len(ms) > 1 {
		// A re-serve stacked the new bind mount over the dead one
		// (recover.go): the dead one may be busy forever.
		lazy = true
	}
	if err := unmountAll(target, lazy); err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	if err := removeTarget(target); err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	if v != nil {
		if _, ok := v.rec.Publish[target]; ok {
			rec := v.rec.clone()
			delete(rec.Publish, target)
			if err := s.store.save(rec); err != nil {
				return nil, status.Errorf(codes.Internal, "%v", err)
			}
			s.update(func() { v.rec = rec })
		}
	}
	klog.FromContext(ctx).Info("Volume unpublished", "volumeID", id, "targetPath", target)
	return &csi.NodeUnpublishVolumeResponse{}, nil
}
