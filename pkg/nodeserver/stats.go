package nodeserver

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// NodeGetVolumeStats reports the filesystem usage (or the block device's
// size) of a staged or published path, and the volume's condition: abnormal
// when the loop device stopped serving or the journaled device failed.
func (s *Server) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	id := req.GetVolumeId()
	path, err := requireIDAndPath(id, req.GetVolumePath(), "volume_path")
	if err != nil {
		return nil, err
	}
	if err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	s.mu.Lock()
	v := s.vols[id]
	var snap stagedVolume
	if v != nil {
		snap = stagedVolume{rec: v.rec, dev: v.dev, loop: v.loop, err: v.err}
	}
	s.mu.Unlock()
	if v == nil {
		return nil, status.Errorf(codes.NotFound, "volume %s is not staged on this node", id)
	}
	v = &snap
	rec := v.rec
	if _, published := rec.Publish[path]; !published && path != rec.StagingPath {
		return nil, status.Errorf(codes.NotFound, "volume %s is not staged or published at %s", id, path)
	}
	if mounted, err := isMounted(path); err != nil || !mounted {
		if err != nil {
			return nil, status.Errorf(codes.Internal, "%v", err)
		}
		if !(rec.Block && path == rec.StagingPath) {
			return nil, status.Errorf(codes.NotFound, "volume %s is not mounted at %s", id, path)
		}
	}
	cond := v.condition()
	resp := &csi.NodeGetVolumeStatsResponse{VolumeCondition: cond}
	if rec.Block {
		if v.loop != nil {
			resp.Usage = []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: v.loop.Size()}}
		}
		return resp, nil
	}
	if cond.Abnormal {
		return resp, nil // a dead filesystem answers statfs with EIO
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		resp.VolumeCondition = &csi.VolumeCondition{Abnormal: true, Message: "statfs " + path + ": " + err.Error()}
		return resp, nil
	}
	bs := int64(st.Bsize)
	resp.Usage = []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: int64(st.Blocks) * bs, Available: int64(st.Bavail) * bs, Used: int64(st.Blocks-st.Bfree) * bs},
		{Unit: csi.VolumeUsage_INODES, Total: int64(st.Files), Available: int64(st.Ffree), Used: int64(st.Files - st.Ffree)},
	}
	return resp, nil
}
