package nodeserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"k8s.io/klog/v2"
)

// recoverAll re-serves every volume recorded as staged. It runs once, at
// start, before any node call is answered.
func (s *Server) recoverAll(ctx context.Context) {
	logger := klog.FromContext(ctx)
	recs, errs := s.store.load()
	for _, err := range errs {
		logger.Error(err, "Unreadable staging record skipped")
	}
	if len(recs) == 0 {
		return
	}
	logger.Info("Re-serving volumes staged before the restart", "count", len(recs))
	// Several at once: the pods of each volume wait until it is served, and
	// one at a time the last volume's pods would wait for every open (lock
	// takeover, replay) before its own.
	var wg sync.WaitGroup
	sem := make(chan struct{}, parallelVolumes)
	for _, r := range recs {
		v := &stagedVolume{rec: r}
		s.set(r.VolumeID, v)
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			vctx, cancel := context.WithTimeout(ctx, s.o.OpTimeout)
			err := s.reserve(klog.NewContext(vctx, logger.WithValues("volumeID", r.VolumeID)), v, nil, volume.SecretsNone)
			cancel()
			if err != nil {
				logger.Error(err, "Re-serving a staged volume failed; NodeGetVolumeStats reports it abnormal and the next NodeStageVolume retries",
					"volumeID", r.VolumeID, "stagingPath", r.StagingPath)
			}
		}()
	}
	wg.Wait()
}

// parallelVolumes is how many volumes the start re-serves (adopts) and the
// stop hands off at once.
const parallelVolumes = 8

// reserve serves a recorded volume again after the process that served it
// died, and repairs its mounts.
//
// With a holder that kept the volume's FUSE connection (holder.go), the
// image is opened again (the journal is replayed first: the previous
// incarnation is fenced by the lock takeover) and the live connection is
// adopted: the loop device, the staging mount and the publish mounts are
// the same objects; reserve only checks they are still there. Otherwise
// (no holder, holder restarted, adoption refused), the fallback:
//
//  1. the staging mount still references the filesystem on the dead loop
//     device: it is unmounted (lazily when a process still holds files
//     there);
//  2. what the dead process left (its aborted FUSE mount, the loop device)
//     is cleaned up (fuseloop.Cleanup);
//  3. the image is opened again (replay first) and attached as a new loop
//     device; at start there is no request, so the storage is opened with
//     the backend's default credentials (ceph: --ceph-credentials-dir),
//     later with the secrets of the NodeStageVolume that retries it;
//  4. the new device is mounted at the staging path (ext4 is checked by
//     fsck first; both filesystems replay their own log) and every publish
//     target is bound again, ON TOP of its dead bind mount: a publish target
//     is never a bare host directory (a pod writing there meanwhile gets
//     EIO from the dead filesystem, and nothing lands in the host directory
//     to vanish under the new mount). The dead mount beneath goes at
//     unpublish.
//
// Called with the volume's operation lock held, or during start. Without
// storage (no credentials, cluster unreachable) it leaves the dead mounts
// as they are: they keep failing with EIO rather than turning into empty
// directories.
func (s *Server) reserve(ctx context.Context, v *stagedVolume, secrets map[string]string, of volume.SecretsOf) (retErr error) {
	logger := klog.FromContext(ctx)
	start := time.Now()
	defer func() {
		if retErr != nil && v.loop == nil && s.holder != nil {
			// Not served: a connection the holder keeps would leave the
			// pods' I/O waiting with no one to answer it. Letting it go
			// aborts it: EIO, as without a holder, never a hang.
			logger.Info("Not served; releasing the FUSE connection the holder keeps (I/O on the volume fails until it is served again)")
			s.dropHolder(ctx, v.rec.Key)
		}
	}()
	r := v.rec
	vid, err := volume.ResolveVolumeID(s.o.Backend, r.VolumeID)
	if err != nil {
		s.update(func() { v.err = err })
		return err
	}
	st, err := volume.VolumeStorage(ctx, s.o.Backend, vid, secrets, of)
	if err != nil {
		s.update(func() { v.err = err })
		return err
	}
	prepare := func(context.Context) {
		// The publish targets keep their dead bind mounts until the new
		// device is bound over them (step 4).
		if !r.Block {
			if err := unmountAll(r.StagingPath, true); err != nil {
				logger.Error(err, "Unmounting the dead staging mount failed")
			}
		}
	}
	if err := s.serveOn(ctx, v, vid, st, secrets, of, prepare); err != nil {
		s.update(func() { v.err = err })
		return err
	}
	r = v.rec // with the new device
	if err := s.store.save(r); err != nil {
		logger.Error(err, "Saving the new device in the staging record failed")
	}
	if v.adopted {
		err := s.checkAdopted(ctx, v)
		s.startMonitor(ctx, v)
		took, resent := time.Since(start), v.loop.Resent()
		s.metricsAdopted(r.VolumeID, took, resent)
		logger.Info("Volume adopted after restart: same loop device and mounts", "device", r.Device, "tag", v.dev.Tag(),
			"publishTargets", len(r.Publish), "resent", resent, "duration", took.Round(time.Millisecond))
		return err
	}
	if !r.Block {
		if err := s.mountServed(ctx, v); err != nil {
			s.teardown(ctx, v)
			s.update(func() { v.dev, v.loop, v.err = nil, nil, err })
			return fmt.Errorf("mount the new device at the staging path: %w", err)
		}
	}
	var errs []error
	for _, t := range r.targets() {
		if err := s.rebindTarget(r, t, r.Publish[t].ReadOnly); err != nil {
			errs = append(errs, fmt.Errorf("publish target %s: %w", t, err))
		}
	}
	s.startMonitor(ctx, v)
	logger.Info("Volume re-served after restart", "device", r.Device, "tag", v.dev.Tag(),
		"publishTargets", len(r.Publish), "duration", time.Since(start).Round(time.Millisecond))
	return errors.Join(errs...)
}

// rebindTarget binds the volume at target again. A target that still has
// its dead bind mount gets the new one stacked on top (no mkdir, no stat
// of the dead filesystem: a shut-down XFS answers EIO even to stat).
func (s *Server) rebindTarget(r *record, target string, readOnly bool) error {
	mounted, err := isMounted(target)
	if err != nil {
		return err
	}
	if !mounted {
		return s.bindTarget(r, target, readOnly)
	}
	src := r.StagingPath
	if r.Block {
		src = r.Device
	}
	return bindMount(src, target, readOnly)
}

// update changes a volume's fields under the server's lock (NodeGetVolumeStats
// reads them without the volume's operation lock).
func (s *Server) update(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
}

// CleanupState tears down, without serving them again, the volumes a dead
// node plugin left staged under stateDir: it unmounts their publish targets
// and staging mounts (lazily), removes what their devices left (FUSE mounts,
// loop devices) and deletes the records. The journals keep every
// acknowledged write: the next NodeStageVolume replays them. Never run it
// while a plugin serves stateDir.
func CleanupState(ctx context.Context, stateDir string) error {
	st := store{dir: filepath.Join(stateDir, "volumes")}
	fuseDir := filepath.Join(stateDir, "fuse")
	recs, errs := st.load()
	for _, r := range recs {
		for _, t := range r.targets() {
			if err := unmountAll(t, true); err != nil {
				errs = append(errs, err)
			}
			if err := removeTarget(t); err != nil {
				errs = append(errs, err)
			}
		}
		if !r.Block {
			if err := unmountAll(r.StagingPath, true); err != nil {
				errs = append(errs, err)
			}
		}
		if err := fuseloop.Cleanup(ctx, fuseDir, r.Key); err != nil && !errors.Is(err, fuseloop.ErrBusy) {
			errs = append(errs, err)
			continue
		}
		if err := st.remove(r.Key); err != nil {
			errs = append(errs, err)
		}
		klog.FromContext(ctx).Info("Cleaned up a staged volume", "volumeID", r.VolumeID, "stagingPath", r.StagingPath, "targets", len(r.Publish))
	}
	// Devices without a record (a plugin that died between attach and
	// saving the record).
	ents, err := os.ReadDir(fuseDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range ents {
		if err := fuseloop.Cleanup(ctx, fuseDir, e.Name()); err != nil && !errors.Is(err, fuseloop.ErrBusy) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
