package nodeserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// NodeStageVolume serves the image on this node and, for Filesystem
// volumes, formats (when blank) and mounts it at the staging path.
func (s *Server) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is missing")
	}
	if req.GetStagingTargetPath() == "" {
		return nil, status.Error(codes.InvalidArgument, "staging_target_path is missing")
	}
	if req.GetVolumeCapability() == nil {
		return nil, status.Error(codes.InvalidArgument, "volume_capability is missing")
	}
	if err := volume.ValidateNodeCapability(req.GetVolumeCapability()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	want, err := s.stagingRecord(req)
	if err != nil {
		return nil, err
	}
	vid, err := volume.ResolveVolumeID(s.o.Backend, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	ctx, done, err := s.operation(ctx, want.VolumeID, "stagingPath", want.StagingPath)
	if err != nil {
		return nil, err
	}
	defer done()
	logger := klog.FromContext(ctx)

	if v := s.get(want.VolumeID); v != nil {
		if v.rec.StagingPath != want.StagingPath {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s is already staged at %s on this node; unstage it there first", want.VolumeID, v.rec.StagingPath)
		}
		if diff := compatible(v.rec, want); diff != "" {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s is already staged at %s with a different capability (%s)", want.VolumeID, want.StagingPath, diff)
		}
		if v.dev == nil {
			// Re-serving it at start failed: try again now, with this
			// request's secrets.
			if err := s.reserve(ctx, v, req.GetSecrets(), volume.SecretsNodeStage); err != nil {
				if _, ok := status.FromError(err); ok {
					return nil, err
				}
				return nil, status.Errorf(codes.Internal, "serve volume %s again: %v", want.VolumeID, err)
			}
			return &csi.NodeStageVolumeResponse{}, nil
		}
		if !v.rec.Block {
			mounted, err := isMounted(v.rec.StagingPath)
			if err != nil {
				return nil, status.Errorf(codes.Internal, "%v", err)
			}
			if !mounted {
				logger.Info("Staging mount is gone; mounting it again")
				if err := s.mountServed(ctx, v); err != nil {
					return nil, err
				}
			}
		}
		return &csi.NodeStageVolumeResponse{}, nil
	}

	if fi, err := os.Stat(want.StagingPath); err != nil || !fi.IsDir() {
		return nil, status.Errorf(codes.InvalidArgument, "staging_target_path %s must be an existing directory (kubelet creates it)", want.StagingPath)
	}

	st, err := volume.VolumeStorage(ctx, s.o.Backend, vid, req.GetSecrets(), volume.SecretsNodeStage)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	v := &stagedVolume{rec: want}
	if err := s.serveOn(ctx, v, vid, st, req.GetSecrets(), volume.SecretsNodeStage, nil); err != nil {
		return nil, err
	}
	// From here on a failure must undo everything: no half-staged volume.
	if err := s.store.save(v.rec); err != nil {
		s.teardown(ctx, v)
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	if !v.rec.Block {
		if err := s.mountServed(ctx, v); err != nil {
			s.teardown(ctx, v)
			if rerr := s.store.remove(v.rec.Key); rerr != nil {
				logger.Error(rerr, "Could not remove the staging record of a volume whose staging failed")
			}
			return nil, err
		}
	}
	s.set(want.VolumeID, v)
	s.startMonitor(ctx, v)
	logger.Info("Volume staged", "device", v.rec.Device, "block", v.rec.Block, "fsType", v.rec.FsType,
		"ackPolicy", v.rec.AckPolicy, "tag", v.dev.Tag(), "duration", time.Since(start).Round(time.Millisecond))
	return &csi.NodeStageVolumeResponse{}, nil
}

// stagingRecord builds the record a NodeStage request asks for.
func (s *Server) stagingRecord(req *csi.NodeStageVolumeRequest) (*record, error) {
	c := req.GetVolumeCapability()
	vc := req.GetVolumeContext()
	r := &record{
		VolumeID:    req.GetVolumeId(),
		Key:         volumeKey(req.GetVolumeId()),
		StagingPath: filepath.Clean(req.GetStagingTargetPath()),
		AccessMode:  c.GetAccessMode().GetMode().String(),
		ReadOnly:    volume.IsReadOnlyMode(c),
		AckPolicy:   vc[volume.CtxAckPolicy],
		PVName:      vc[volume.CtxPVName],
		Publish:     map[string]publication{},
		StagedAt:    time.Now().UTC(),
	}
	if r.AckPolicy == "" {
		r.AckPolicy = volume.DefaultAckPolicy
	}
	if _, err := blockdev.ParseAckPolicy(r.AckPolicy); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "volume_context %s: %v", volume.CtxAckPolicy, err)
	}
	if m := vc[volume.CtxJournalMode]; m != "" {
		if _, err := blockdev.ParseJournalMode(m); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "volume_context %s: %v", volume.CtxJournalMode, err)
		}
		r.JournalMode = m
	}
	if v := vc[volume.CtxJournalMaxObjectSets]; v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return nil, status.Errorf(codes.InvalidArgument, "volume_context %s: %q is not a non-negative integer", volume.CtxJournalMaxObjectSets, v)
		}
		r.JournalMaxObjectSets = n
	}
	if m := c.GetMount(); m != nil {
		r.FsType = m.GetFsType()
		if r.FsType == "" {
			r.FsType = vc[volume.CtxFsType]
		}
		if r.FsType == "" {
			r.FsType = volume.DefaultFsType
		}
		if !volume.IsSupportedFsType(r.FsType) {
			return nil, status.Errorf(codes.InvalidArgument, "filesystem %q is not supported (use ext4 or xfs)", r.FsType)
		}
		r.MountFlags = append([]string(nil), m.GetMountFlags()...)
	} else {
		r.Block = true
	}
	return r, nil
}

// compatible says how an existing staging differs from a request ("" if it
// does not).
func compatible(have, want *record) string {
	switch {
	case have.Block != want.Block:
		return fmt.Sprintf("block %v vs %v", have.Block, want.Block)
	case have.FsType != want.FsType:
		return fmt.Sprintf("fsType %s vs %s", have.FsType, want.FsType)
	case !slices.Equal(have.MountFlags, want.MountFlags):
		return fmt.Sprintf("mount flags %v vs %v", have.MountFlags, want.MountFlags)
	case have.ReadOnly != want.ReadOnly:
		return fmt.Sprintf("read-only %v vs %v", have.ReadOnly, want.ReadOnly)
	}
	return ""
}

// fencedError is serve's error when the cluster fenced the connection it
// used (which is then forgotten): a new one may work.
type fencedError struct {
	vid volume.VolumeID
	err error
}

func (e *fencedError) Error() string {
	return fmt.Sprintf("open journaled device of %s: this node's Ceph client was fenced (blocklisted by a node that took a volume over): %v", e.vid, e.err)
}

func (e *fencedError) Unwrap() error { return e.err }

// GRPCStatus makes it Unavailable: a retry connects anew.
func (e *fencedError) GRPCStatus() *status.Status {
	return status.New(codes.Unavailable, e.Error()+"; retry")
}

// serveOn is serve on st, and once more on a new connection if the cluster
// had fenced st (the backend forgot it).
func (s *Server) serveOn(ctx context.Context, v *stagedVolume, vid volume.VolumeID, st storage.Storage, secrets map[string]string, of volume.SecretsOf, prepare func(context.Context)) error {
	err := s.serve(ctx, v, vid, st, prepare)
	var fe *fencedError
	if !errors.As(err, &fe) {
		return err
	}
	klog.FromContext(ctx).Info("The cached Ceph connection was fenced; serving on a new one", "err", fe.err)
	st, err = volume.VolumeStorage(ctx, s.o.Backend, vid, secrets, of)
	if err != nil {
		return err
	}
	return s.serve(ctx, v, vid, st, prepare)
}

// lockRefusedWait is how long staging keeps asking a librbd client that
// refuses to give up the image's lock. After a failover (`rbd mirror
// image promote --force`), the rbd-mirror daemon that replayed into the
// image still holds its lock and refuses until it notices the promotion
// and stops replaying; the disaster-recovery drill saw that window. Other
// refusing holders (an exclusive rbd-nbd or krbd mapping) cost a stage
// this long before it fails; another csi-rbdj node's refusal fails it at
// once.
const lockRefusedWait = 30 * time.Second

// serve opens the journaled device (lock, replay, new epoch) and attaches
// it as a loop device; on success v.dev, v.loop and v.rec.Device are set
// and v.adopted says whether the device is the one a previous incarnation
// served (holder.go). It clears what a dead instance may have left for
// this volume before attaching a new device.
//
// prepare is nil for a new stage. For a re-serve it is non-nil: serve then
// first tries to adopt the connection the holder keeps, and only when that
// is not possible calls prepare (which takes the dead mounts down) before
// attaching a new device.
func (s *Server) serve(ctx context.Context, v *stagedVolume, vid volume.VolumeID, st storage.Storage, prepare func(context.Context)) error {
	logger := klog.FromContext(ctx)
	cleanup := func() error {
		if err := fuseloop.Cleanup(ctx, s.fuseDir, v.rec.Key); err != nil {
			if !errors.Is(err, fuseloop.ErrBusy) {
				return status.Errorf(codes.Internal, "clean up a previous device of volume %s: %v", v.rec.VolumeID, err)
			}
			// The old loop device is still open (a dead filesystem on it
			// still referenced by a process or a mount): the kernel
			// detaches it when that ends.
			logger.Info("A previous loop device of this volume is still open; the kernel detaches it once closed", "err", err)
		}
		return nil
	}
	if prepare == nil {
		// A new stage: whatever the holder keeps under this key is stale.
		s.dropHolder(ctx, v.rec.Key)
		if err := cleanup(); err != nil {
			return err
		}
	} else if s.holder == nil {
		// Without a holder there is nothing to adopt: today's order.
		prepare(ctx)
		if err := cleanup(); err != nil {
			return err
		}
		prepare = nil
	}
	pool, err := st.Pool(ctx, vid.Pool)
	if errors.Is(err, storage.ErrPoolNotFound) {
		return status.Errorf(codes.NotFound, "volume %s does not exist: %v", vid, err)
	}
	if err != nil {
		return volume.StorageStatus(fmt.Errorf("open pool %q: %w", vid.Pool, err), volume.SecretsNodeStage, false)
	}
	mode := blockdev.JournalFull
	if v.rec.JournalMode != "" {
		mode, _ = blockdev.ParseJournalMode(v.rec.JournalMode) // checked by stagingRecord
	}
	unowned, err := s.servedUnowned(ctx, pool, vid, v.rec, mode) // mirror.go
	if err != nil {
		return err
	}
	policy, _ := blockdev.ParseAckPolicy(v.rec.AckPolicy)
	// A re-serve takes back what the holder kept first: a write-back ring
	// is re-journaled when the device opens (holder.go).
	var held *heldConn
	if prepare != nil {
		held = s.fetchHeld(ctx, v.rec)
	}
	openStart := time.Now()
	var dead []string
	if v.rec.Owner != "" && v.rec.Owner != pool.Client().Addr {
		dead = append(dead, v.rec.Owner) // this plugin's previous incarnation
	}
	var dev *blockdev.Device
	if unowned {
		// Read-only, without the lock or the journal (mirror.go): nothing
		// to re-journal, so no ring.
		dev, err = blockdev.OpenReadOnly(ctx, pool, vid.Image, blockdev.Options{JournalMode: mode})
	} else {
		dev, err = blockdev.Open(ctx, pool, vid.Image, blockdev.Options{
			AckPolicy:       policy,
			Node:            s.budget, // node-wide bounds (server.go)
			Ring:            s.ringFor(ctx, v.rec, held),
			JournalMode:     mode,
			Fencer:          st.Fencer(),
			LockDescription: "csi-rbdj node " + s.o.NodeID,
			DeadOwners:      dead,
			LockRefusedWait: lockRefusedWait,
			Journal:         s.journalSettings(ctx, v.rec),
			OnResize:        func(int64) { s.followResize(v.rec.VolumeID) }, // expand.go
		})
	}
	if err != nil {
		held.close()
		s.releaseRing(v.rec.Key)
	}
	switch {
	case err == nil:
	case errors.Is(err, image.ErrNotFound):
		return status.Errorf(codes.NotFound, "volume %s does not exist (no image %s in pool %s)", vid, vid.Image, vid.Pool)
	case errors.Is(err, blockdev.ErrLocked):
		return status.Errorf(codes.FailedPrecondition, "volume %s is in use elsewhere (%v): a journaled volume has one writer; unstage it on the node that serves it, or stop the client that holds the image (right after a promotion, the rbd-mirror daemon that replayed into it holds it until it notices)", vid, err)
	case errors.Is(err, blockdev.ErrNotPrimary):
		// Demoted (or replaced by a replica) between servedUnowned's
		// check and the lock: nothing was replayed or tagged.
		return status.Errorf(codes.FailedPrecondition, "volume %s: image %s/%s became non-primary while it was being staged (%v): stage it again (read-only, or after promoting it here)", vid, vid.Pool, vid.Image, err)
	case errors.Is(err, blockdev.ErrNotJournaled):
		return notJournaled(ctx, st, pool, vid)
	case errors.Is(err, blockdev.ErrJournalModeMismatch):
		return status.Errorf(codes.FailedPrecondition, "volume %s: %v (the volume context names journal mode %q)", vid, err, mode)
	case errors.Is(err, image.ErrUnsupported):
		return status.Errorf(codes.FailedPrecondition, "volume %s cannot be served by the journaled data path: %v", vid, err)
	case fenced(err):
		s.forgetIfFenced(st, err)
		return &fencedError{vid: vid, err: err}
	default:
		return volume.StorageStatus(fmt.Errorf("open journaled device of %s: %w", vid, err), volume.SecretsNodeStage, false)
	}
	openDur := time.Since(openStart)
	var loop *fuseloop.Device
	if prepare != nil {
		// A re-serve with a holder: adopt the live connection if it has it.
		loop = s.adopt(ctx, v.rec, dev, held)
		if loop == nil {
			prepare(ctx)
			if err := cleanup(); err != nil {
				if cerr := dev.Close(context.WithoutCancel(ctx)); cerr != nil {
					logger.Error(cerr, "Closing the journaled device after a failed cleanup")
				}
				return err
			}
		}
	}
	adopted := loop != nil
	if !adopted {
		loop, err = fuseloop.Attach(ctx, dev, fuseloop.Options{
			StateDir: s.fuseDir, Name: v.rec.Key, RequestTimeout: s.o.RequestTimeout, ReadOnly: v.rec.ReadOnly, Buffers: s.reqBufs})
		if err != nil {
			if cerr := dev.Close(context.WithoutCancel(ctx)); cerr != nil {
				logger.Error(cerr, "Closing the journaled device after a failed attach")
			}
			return status.Errorf(codes.Internal, "attach loop device for %s: %v", vid, err)
		}
		s.putHolder(ctx, loop, v.rec.AckPolicy)
	}
	rec := v.rec.clone()
	rec.Device = loop.Path()
	rec.Owner = dev.Owner().Addr
	rec.Unowned = unowned
	s.update(func() { v.st, v.dev, v.loop, v.err, v.rec, v.adopted = st, dev, loop, nil, rec, adopted })
	s.metricsServed(rec.VolumeID, dev)
	logger.Info("Volume served", "device", loop.Path(), "adopted", adopted, "size", dev.Size(), "tag", dev.Tag(), "openAndReplay", openDur.Round(time.Millisecond),
		"journalMode", dev.JournalMode(), "tornExtents", dev.MetadataReplayStats().TornExtents)
	return nil
}

// notJournaled is the error of an image without the journaling feature (a
// pre-provisioned image of a static PersistentVolume): it says how to
// enable the feature.
func notJournaled(ctx context.Context, st storage.Storage, pool objstore.Pool, vid volume.VolumeID) error {
	spec := vid.Pool + "/" + vid.Image
	enable := "journaling"
	features := "unknown"
	if info, err := st.ImageInfo(ctx, pool, vid.Image); err == nil {
		features = strings.Join(clsrbd.FeatureNames(info.Features), ",")
		if info.Features&clsrbd.FeatureExclusiveLock == 0 {
			enable = "exclusive-lock journaling"
		}
	}
	return status.Errorf(codes.FailedPrecondition,
		"volume %s: image %s (features: %s) does not have the journaling feature, and csi-rbdj serves only journaled images: enable it with `rbd feature enable %s %s` (while no client has the image open), then stage the volume again; or serve it in journal mode metadata (volume attribute %s: metadata), which journals only where writes went",
		vid, spec, features, spec, enable, volume.CtxJournalMode)
}

// mountServed is mountStaging for a served volume, gated by its image's
// format marker.
func (s *Server) mountServed(ctx context.Context, v *stagedVolume) error {
	gate, err := s.gate(v)
	if err != nil {
		return err
	}
	err = s.mountStaging(ctx, v.rec, gate)
	if err != nil && status.Code(err) == codes.Internal && v.dev != nil && v.loop != nil {
		// The mount may have failed because the device did (its I/O
		// errors read as "can't read superblock"): say why.
		if derr := v.dev.Err(); derr != nil {
			code := codes.Internal
			if errors.Is(derr, image.ErrUnsupported) {
				code = codes.FailedPrecondition
			}
			return status.Errorf(code, "%v; the journaled device of volume %s failed: %v", status.Convert(err).Message(), v.rec.VolumeID, derr)
		}
	}
	return err
}

// mountStaging mounts the device at the staging path, making a filesystem
// first only if it reads as blank and gate says the volume is new
// (formatgate.go): a blank volume that may have held data is refused.
func (s *Server) mountStaging(ctx context.Context, r *record, gate formatGate) error {
	opts := append([]string(nil), r.MountFlags...)
	if r.ReadOnly {
		opts = append(opts, "ro")
	}
	if r.FsType == "xfs" {
		// Every replacement device after a restart carries the same
		// filesystem UUID; nouuid lets XFS mount it.
		opts = append(opts, "nouuid")
	}
	existing, err := s.mounter.GetDiskFormat(r.Device)
	if err != nil {
		return status.Errorf(codes.Internal, "inspect device %s of volume %s: %v", r.Device, r.VolumeID, err)
	}
	if r.Unowned {
		// A non-primary image read without owning it (mirror.go): never
		// formatted, nothing written to it, not even its marker; mounted
		// read-only (the "ro" above), no filesystem journal recovery.
		if err := unownedMountable(r, existing); err != nil {
			return err
		}
		opts = append(opts, unownedMountOptions(r.FsType)...)
		if err := s.mounter.FormatAndMount(r.Device, r.StagingPath, r.FsType, opts); err != nil {
			return status.Errorf(codes.Internal, "mount %s (%s, read-only) at %s: %v", r.Device, r.FsType, r.StagingPath, err)
		}
		return nil
	}
	mark, err := checkFormat(ctx, r, existing, gate)
	if err != nil {
		return err
	}
	if err := s.mounter.FormatAndMount(r.Device, r.StagingPath, r.FsType, opts); err != nil {
		return status.Errorf(codes.Internal, "format and mount %s (%s) at %s: %v", r.Device, r.FsType, r.StagingPath, err)
	}
	clearFormatMark(ctx, mark, gate)
	return nil
}

// teardown stops serving v: it detaches the loop device and closes the
// journaled device (draining and committing the journal, releasing the
// lock). Best effort, for error paths.
func (s *Server) teardown(ctx context.Context, v *stagedVolume) {
	ctx = context.WithoutCancel(ctx)
	logger := klog.FromContext(ctx)
	s.stopMonitor(v)
	s.dropHolder(ctx, v.rec.Key)
	s.metricsUnserved(v.rec.VolumeID)
	if v.loop != nil {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if err := v.loop.Close(cctx); err != nil {
			logger.Error(err, "Detaching the loop device failed; aborting it")
			_ = v.loop.Abort()
		}
		cancel()
	}
	if v.dev != nil {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		if err := v.dev.Close(cctx); err != nil {
			logger.Error(err, "Closing the journaled device failed (the journal keeps every acknowledged write)")
		}
		s.releaseRing(v.rec.Key)
		cancel()
	}
	if err := fuseloop.Cleanup(ctx, s.fuseDir, v.rec.Key); err != nil {
		logger.Error(err, "Cleaning up the device's leftovers failed")
	}
}

// NodeUnstageVolume unmounts the staging path, detaches the loop device,
// drains and commits the journal and releases the image.
func (s *Server) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	id := req.GetVolumeId()
	path, err := requireIDAndPath(id, req.GetStagingTargetPath(), "staging_target_path")
	if err != nil {
		return nil, err
	}
	ctx, done, err := s.operation(ctx, id, "stagingPath", path)
	if err != nil {
		return nil, err
	}
	defer done()
	logger := klog.FromContext(ctx)

	v := s.get(id)
	if v == nil {
		return &csi.NodeUnstageVolumeResponse{}, nil // not staged (any more): nothing to do
	}
	if v.rec.StagingPath != path {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is staged at %s, not at %s", id, v.rec.StagingPath, path)
	}
	if len(v.rec.Publish) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is still published at %v; unpublish it first", id, v.rec.targets())
	}
	start := time.Now()
	if !v.rec.Block {
		if err := unmountAll(path, v.dev == nil); err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "%v", err)
		}
	}
	s.stopMonitor(v)
	// The holder lets go first: the connection ends with our unmount.
	s.dropHolder(ctx, v.rec.Key)
	if v.loop != nil {
		if err := v.loop.Close(ctx); err != nil {
			if errors.Is(err, fuseloop.ErrBusy) && v.loop.Err() == nil {
				s.putHolder(ctx, v.loop, v.rec.AckPolicy) // still served: protect it again
				s.startMonitor(ctx, v)
				return nil, status.Errorf(codes.FailedPrecondition, "loop device %s of volume %s is still in use: %v", v.rec.Device, id, err)
			}
			logger.Error(err, "Detaching the loop device failed; aborting its FUSE connection")
			_ = v.loop.Abort()
		}
	}
	if v.dev != nil {
		if err := v.dev.Close(ctx); err != nil {
			// The journal keeps every acknowledged write: the next
			// stage replays what was not committed.
			logger.Error(err, "Closing the journaled device failed")
		}
		s.releaseRing(v.rec.Key)
	}
	s.update(func() { v.dev, v.loop = nil, nil })
	s.metricsUnserved(id)
	if err := fuseloop.Cleanup(ctx, s.fuseDir, v.rec.Key); err != nil && !errors.Is(err, fuseloop.ErrBusy) {
		return nil, status.Errorf(codes.Internal, "clean up device of %s: %v", id, err)
	}
	if err := s.store.remove(v.rec.Key); err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	s.set(id, nil)
	logger.Info("Volume unstaged", "duration", time.Since(start).Round(time.Millisecond))
	return &csi.NodeUnstageVolumeResponse{}, nil
}
