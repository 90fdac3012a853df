// Package nodeserver is csi-rbdj's CSI Node service: it serves journaled
// RBD images to the kernel from inside the node plugin and mounts them for
// kubelet.
//
// NodeStageVolume opens the image as a journaled device (blockdev.Open: take
// the exclusive lock, replay what the journal holds past the commit position,
// start a new epoch), exposes it as a loop device over an in-process FUSE
// file (fuseloop.Attach), and for Filesystem volumes formats it when blank
// (ext4 or xfs, k8s.io/mount-utils SafeFormatAndMount) and mounts it at the
// staging path. NodePublishVolume bind-mounts the staging mount (or, for
// Block volumes, the loop device node) at the target. NodeUnstageVolume
// undoes it all: unmount, detach, drain and commit the journal, release the
// lock. NodeExpandVolume (expand.go) makes a grown image reach the loop
// device and the filesystem, online.
//
// The devices live in this process, so they die with it. Every staged volume
// is recorded in <state dir>/volumes/<key>.json (with its publish targets);
// a restarted plugin re-serves each one (replay first), replaces the dead
// staging mount with the new loop device and binds the publish targets again.
// README.md says what a pod sees meanwhile.
package nodeserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
	"k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
)

// Options configure a Server.
type Options struct {
	// NodeID is reported by NodeGetInfo.
	NodeID string
	// StateDir holds the staging records (volumes/) and the FUSE mounts
	// (fuse/). It must survive plugin restarts (a hostPath in Kubernetes).
	StateDir string
	// Backend opens the storage the images live in: with the secrets of
	// NodeStageVolume, or its default credentials when re-serving staged
	// volumes after a restart (the plugin never stores credentials).
	Backend storage.Backend
	// RequestTimeout bounds one I/O request of a device before its FUSE
	// connection is aborted (0: fuseloop.DefaultRequestTimeout).
	RequestTimeout time.Duration
	// MaxVolumes is reported as max_volumes_per_node (0: no limit).
	MaxVolumes int64
	// OpTimeout bounds one stage, unstage or recovery of a volume
	// (default 5 minutes: formatting a large volume takes a while).
	OpTimeout time.Duration
	// JournalCommitAge is how long a moved commit position may stay in
	// memory before it is written to the journal header (librbd's
	// rbd_journal_commit_age; 0: the journal's default, 1 s). A crash
	// replays at most what was acknowledged in that window.
	JournalCommitAge time.Duration
	// Mounter formats and mounts the staging filesystems (nil: the host's
	// mount and mkfs/fsck/blkid). Tests put a fake here; bind mounts and
	// unmounts do not go through it.
	Mounter *mount.SafeFormatAndMount
	// Metrics, if set, is told which volumes this node serves.
	Metrics VolumeMetrics
	// HolderSocket is the unix socket of the FUSE connection holder
	// (csi-rbdj fuse-holder, holder.go): with it, the volumes' connections
	// outlive this process and a restarted plugin adopts them (no unmount,
	// no new loop device). Empty: no holder; a restart re-serves every
	// volume on a new loop device (recover.go).
	HolderSocket string
	// MaxPendingBytes and MaxDirtyBytes are the node-wide bounds shared by
	// every volume this process serves (blockdev.NodeBudget): written
	// bytes not yet applied to the image (held in memory), and, with ack
	// policy writeback, bytes acknowledged but not yet durable. 0: the
	// defaults (blockdev.DefaultNodeMaxPendingBytes, DefaultNodeMaxDirtyBytes).
	MaxPendingBytes, MaxDirtyBytes int64
	// NoWriteBackRing turns the write-back rings off (holder.go): a crash
	// of the plugin then aborts the connections of writeback volumes
	// instead of handing them over (EIO in the pods), and no shared memory
	// is spent on them.
	NoWriteBackRing bool
	// Events, if set, records Kubernetes events on the volumes'
	// PersistentVolumes (mirror.go: a replicator disconnected by the
	// laggy-client bound); nil: those conditions are only logged.
	Events EventRecorder
}

// EventRecorder records Kubernetes events (k8sevents.Recorder). Its
// methods must not block: they are called from journal commit paths.
type EventRecorder interface {
	// PersistentVolumeEvent records an event of type Normal or Warning on
	// PersistentVolume pv.
	PersistentVolumeEvent(pv, eventType, reason, message string)
}

// Server is the CSI Node service.
type Server struct {
	csi.UnimplementedNodeServer

	o      Options
	store  store
	holder fuseloop.Holder // nil: no holder (holder.go)
	// budget bounds the pending and dirty bytes of every served volume
	// together: memory stays bounded node-wide, not per volume.
	budget *blockdev.NodeBudget
	// reqBufs bounds the FUSE request buffers of every volume served
	// (fuseloop.RequestBuffers), as budget bounds their written bytes.
	reqBufs *fuseloop.RequestBuffers
	// rings are the write-back rings of the served writeback volumes, by
	// record key (holder.go). Guarded by mu.
	rings   map[string]*blockdev.Ring
	fuseDir string
	mounter *mount.SafeFormatAndMount

	// opMu serialises operations on one volume (by volume id).
	opMu sync.Mutex
	busy map[string]chan struct{}

	mu   sync.Mutex
	vols map[string]*stagedVolume // by volume id

	ready    chan struct{} // closed when the recovery at start is over
	started  atomic.Bool
	wg       sync.WaitGroup
	stopOnce sync.Once
	stopSync chan struct{} // closed by Stop: ends resyncHolder
}

// forgetter is a backend that caches connections which the cluster can
// fence (ceph: the OSD blocklist of a client address after a takeover): a
// fenced one must not serve the next stage.
type forgetter interface {
	Forget(storage.Storage)
}

// fenced reports whether err says the cluster fenced this client.
func fenced(err error) bool { return errors.Is(err, syscall.ESHUTDOWN) }

// forgetIfFenced drops st from the backend's cache when err says the
// cluster fenced it.
func (s *Server) forgetIfFenced(st storage.Storage, err error) {
	if f, ok := s.o.Backend.(forgetter); ok && st != nil && fenced(err) {
		f.Forget(st)
	}
}

// stagedVolume is a staged volume and what serves it.
type stagedVolume struct {
	st   storage.Storage // what dev was opened on (nil if not served)
	rec  *record
	dev  *blockdev.Device // nil if serving it failed
	loop *fuseloop.Device // nil if serving it failed
	err  error            // why it is not served (recovery failed)
	// adopted: loop is the connection a previous incarnation served,
	// taken back from the holder (its mounts are the same objects).
	adopted bool
	mon     chan struct{} // closed to stop the monitor goroutine
	done    chan struct{} // closed when the monitor goroutine ended
}

// New checks o and prepares the state directory. Call Start to re-serve
// what a previous instance staged.
func New(o Options) (*Server, error) {
	if o.NodeID == "" {
		return nil, errors.New("nodeserver: node id is empty (set --node-id)")
	}
	if o.StateDir == "" {
		return nil, errors.New("nodeserver: state directory is empty (set --state-dir)")
	}
	if o.Backend == nil {
		return nil, errors.New("nodeserver: no storage backend")
	}
	if o.OpTimeout <= 0 {
		o.OpTimeout = 5 * time.Minute
	}
	if o.Mounter == nil {
		o.Mounter = mount.NewSafeFormatAndMount(mount.NewWithoutSystemd(""), utilexec.New())
	}
	s := &Server{
		o:        o,
		store:    store{dir: filepath.Join(o.StateDir, "volumes")},
		fuseDir:  filepath.Join(o.StateDir, "fuse"),
		mounter:  o.Mounter,
		busy:     map[string]chan struct{}{},
		vols:     map[string]*stagedVolume{},
		ready:    make(chan struct{}),
		holder:   newHolder(o.HolderSocket),
		budget:   blockdev.NewNodeBudget(o.MaxPendingBytes, o.MaxDirtyBytes),
		reqBufs:  fuseloop.NewRequestBuffers(0),
		rings:    map[string]*blockdev.Ring{},
		stopSync: make(chan struct{}),
	}
	if m, ok := o.Metrics.(BudgetMetrics); ok {
		m.NodeBudget(s.budget)
	}
	for _, d := range []string{s.store.dir, s.fuseDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("nodeserver: state directory: %w", err)
		}
	}
	return s, nil
}

// Start re-serves, in the background, every volume a previous instance of
// the plugin staged (see recover.go). Node calls wait until it is done;
// Ready reports it.
func (s *Server) Start(ctx context.Context) {
	if s.started.Swap(true) {
		return
	}
	warnMissingCapabilities(klog.FromContext(ctx)) // expand.go
	s.wg.Add(1)
	go func() { // owned by Server: Stop waits for it
		defer s.wg.Done()
		defer close(s.ready)
		s.recoverAll(ctx)
	}()
	if s.holder != nil {
		s.wg.Add(1)
		go func() { // owned by Server: Stop closes stopSync and waits
			defer s.wg.Done()
			s.resyncHolder(ctx, s.stopSync)
		}()
	}
}

// Ready returns nil once the staged volumes have been re-served.
func (s *Server) Ready() error {
	select {
	case <-s.ready:
		return nil
	default:
		return errors.New("re-serving the volumes staged before the restart")
	}
}

// waitReady waits for the recovery at start.
func (s *Server) waitReady(ctx context.Context) error {
	select {
	case <-s.ready:
		return nil
	case <-ctx.Done():
		return status.Error(codes.Unavailable, "the node plugin is still re-serving the volumes staged before its restart; retry")
	}
}

// Stop is the graceful shutdown: every device stops serving with its
// journal drained and committed and its lock released (the kernel sees EIO
// on the loop devices from now on, as it would after a crash, but the next
// start has nothing to replay). The records stay: the next start re-serves
// the volumes and repairs their mounts.
func (s *Server) Stop(ctx context.Context) {
	s.stopOnce.Do(func() {
		close(s.stopSync)
		if s.started.Load() {
			select {
			case <-s.ready: // the recovery at start is over
			case <-ctx.Done():
			}
		}
		s.mu.Lock()
		vols := make([]*stagedVolume, 0, len(s.vols))
		for _, v := range s.vols {
			vols = append(vols, v)
		}
		s.mu.Unlock()
		// Several at once: the successor starts only once this process has
		// exited, so one after the other every volume's pods would wait for
		// all the stops.
		var wg sync.WaitGroup
		sem := make(chan struct{}, parallelVolumes)
		for _, v := range vols {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				s.shutdown(ctx, v)
			}()
		}
		wg.Wait()
		s.wg.Wait() // the monitors ended with shutdown
	})
}

// shutdown stops serving v without touching its mounts or record. With a
// holder the device is handed off (holder.go) and its mounts keep working
// for the successor.
func (s *Server) shutdown(ctx context.Context, v *stagedVolume) {
	s.stopMonitor(v)
	if s.holder != nil && v.loop != nil && v.dev != nil && v.loop.Err() == nil {
		s.handoff(ctx, v)
		return
	}
	if v.loop != nil {
		_ = v.loop.Abort()
	}
	if v.dev != nil {
		if err := v.dev.Close(ctx); err != nil {
			klog.FromContext(ctx).Error(err, "Closing the journaled device at shutdown failed (the journal keeps every acknowledged write; the next start replays it)", "volumeID", v.rec.VolumeID)
		}
	}
	klog.FromContext(ctx).Info("Volume no longer served (plugin shutdown)", "volumeID", v.rec.VolumeID, "device", v.rec.Device)
}

// lock serialises operations on one volume; a second operation waits for
// the first (bounded by ctx).
func (s *Server) lock(ctx context.Context, id string) (unlock func(), err error) {
	for {
		s.opMu.Lock()
		ch, held := s.busy[id]
		if !held {
			ch = make(chan struct{})
			s.busy[id] = ch
			s.opMu.Unlock()
			return func() {
				s.opMu.Lock()
				delete(s.busy, id)
				close(ch)
				s.opMu.Unlock()
			}, nil
		}
		s.opMu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, status.Errorf(codes.Aborted, "another operation on volume %q is in progress; retry", id)
		}
	}
}

// requireIDAndPath checks that a request names a volume and a path (field
// is the path's name in the request, for the error) and returns the path
// cleaned.
func requireIDAndPath(id, path, field string) (string, error) {
	if id == "" {
		return "", status.Error(codes.InvalidArgument, "volume_id is missing")
	}
	if path == "" {
		return "", status.Error(codes.InvalidArgument, field+" is missing")
	}
	return filepath.Clean(path), nil
}

// readyAndLocked waits until the volumes staged before a restart are
// served again, then takes volume id's operation lock; the caller runs
// unlock when done.
func (s *Server) readyAndLocked(ctx context.Context, id string) (unlock func(), err error) {
	if err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	return s.lock(ctx, id)
}

// operation is readyAndLocked with the operation timeout on the returned
// context, and a logger with the volume id and kv (the path the request
// names) in it; done cancels it and releases the lock.
func (s *Server) operation(ctx context.Context, id string, kv ...any) (_ context.Context, done func(), err error) {
	unlock, err := s.readyAndLocked(ctx, id)
	if err != nil {
		return ctx, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.o.OpTimeout)
	ctx = klog.NewContext(ctx, klog.FromContext(ctx).WithValues("volumeID", id).WithValues(kv...))
	return ctx, func() { cancel(); unlock() }, nil
}

func (s *Server) get(id string) *stagedVolume {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.vols[id]
}

func (s *Server) set(id string, v *stagedVolume) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v == nil {
		delete(s.vols, id)
	} else {
		s.vols[id] = v
	}
}

// NodeGetInfo returns the node id.
func (s *Server) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: s.o.NodeID, MaxVolumesPerNode: s.o.MaxVolumes}, nil
}

// NodeGetCapabilities advertises what is implemented.
func (s *Server) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, c := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_VOLUME_CONDITION,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME, // expand.go
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{
			Rpc: &csi.NodeServiceCapability_RPC{Type: c}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

// monitor logs when a device stops serving (the FUSE connection was aborted
// by the watchdog, or the journal failed). Owned by the volume: stopMonitor
// ends it. It logs through ctx's logger, which carries the volume id.
func (s *Server) startMonitor(ctx context.Context, v *stagedVolume) {
	logger := klog.FromContext(ctx)
	v.mon = make(chan struct{})
	v.done = make(chan struct{})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(v.done)
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		var reported bool
		for {
			select {
			case <-v.mon:
				return
			case <-v.loop.Done():
				if !reported {
					logger.Error(v.loop.Err(), "Volume's loop device stopped serving: I/O on it fails until the volume is unstaged and staged again or the plugin restarts",
						"device", v.rec.Device)
					reported = true
				}
			case <-t.C:
				if err := v.dev.Err(); err != nil && !reported {
					logger.Error(err, "Volume's journaled device failed: I/O on it fails until it is served again (the journal keeps every acknowledged write)",
						"device", v.rec.Device, "fenced", fenced(err))
					s.forgetIfFenced(v.st, err)
					reported = true
				}
			}
			if reported {
				<-v.mon
				return
			}
		}
	}()
}

func (s *Server) stopMonitor(v *stagedVolume) {
	if v.mon != nil {
		select {
		case <-v.mon:
		default:
			close(v.mon)
		}
		<-v.done
	}
}

// condition is the volume's health for NodeGetVolumeStats.
func (v *stagedVolume) condition() *csi.VolumeCondition {
	switch {
	case v.err != nil:
		return &csi.VolumeCondition{Abnormal: true, Message: fmt.Sprintf("volume is not served: %v", v.err)}
	case v.loop == nil || v.dev == nil:
		return &csi.VolumeCondition{Abnormal: true, Message: "volume is not served"}
	}
	if err := v.loop.Err(); err != nil {
		return &csi.VolumeCondition{Abnormal: true, Message: fmt.Sprintf("loop device %s stopped serving: %v", v.rec.Device, err)}
	}
	if err := v.dev.Err(); err != nil {
		return &csi.VolumeCondition{Abnormal: true, Message: fmt.Sprintf("journaled device failed: %v", err)}
	}
	if v.rec.Unowned {
		return &csi.VolumeCondition{Message: fmt.Sprintf("served read-only on %s from a non-primary mirror image, without owning it (rbd-mirror writes it)", v.rec.Device)}
	}
	if v.dev.JournalMode() == blockdev.JournalMetadata {
		// Torn extents are a finding about the last stop, not a failure of
		// the device: reported, the filesystem's own check decides.
		return &csi.VolumeCondition{Message: fmt.Sprintf("served on %s (journal tag %d, journal mode metadata, %d torn extents found at this start)",
			v.rec.Device, v.dev.Tag(), v.dev.MetadataReplayStats().TornExtents)}
	}
	return &csi.VolumeCondition{Message: fmt.Sprintf("served on %s (journal tag %d, ack policy %s)", v.rec.Device, v.dev.Tag(), v.rec.AckPolicy)}
}
