package nodeserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop"
	"github.com/csi-rbdj/csi-rbdj/pkg/fuseholder"
	"k8s.io/klog/v2"
)

// Handing the volumes over to the next incarnation of the plugin.
//
// With a holder (Options.HolderSocket: pkg/fuseholder, a process that
// outlives this one), every device's /dev/fuse file is given to the holder
// once attached (and again after a resize). When this process dies, the
// holder's dup keeps the FUSE connection alive: the loop device, the
// staging mount and the publish bind mounts stay, I/O waits. The next
// incarnation opens the journaled device (lock takeover, which fences the
// dead one, and replay), takes the file back and adopts the connection
// (fuseloop.Adopt: FUSE_NOTIFY_RESEND, then serve): the mounts are the
// same objects and nothing is unmounted. A planned stop (Stop) hands each
// device off (stop reading, answer what is in flight), then drains and
// commits the journal and releases the lock, so the successor's open does
// not wait for a lock timeout.
//
// When the holder does not have a volume's connection, or it cannot be
// adopted, the re-serve fallback of recover.go runs (a new loop device).

// holderTimeout bounds one call to the holder: a slow holder costs the
// adoption, never a hang.
const holderTimeout = 5 * time.Second

// holderCtx is ctx bounded by holderTimeout.
func holderCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, holderTimeout)
}

// acksDurable says whether every write the device acknowledges is durable
// at that moment, which a handover after a crash needs (fuseloop.Meta.
// AcksDurable): applied and journaled acknowledge a write only once its
// journal entry is durable. Write-back acknowledges earlier (a volatile
// write cache, blockdev/writeback.go): its connections are given to the
// holder marked so, and a successor after a crash refuses them (Adopt) and
// goes through the fallback, which aborts the connection: the pods see
// the loss as EIO instead of running on over lost writes. A planned stop
// drains the journal first and then marks the connection durable
// (handoff), so restarts and upgrades hand write-back volumes over too.
func acksDurable(p blockdev.AckPolicy) bool {
	switch p {
	case blockdev.AckApplied, blockdev.AckJournaled:
		return true
	}
	return false
}

// newHolder returns the client of the holder at sock ("" = none).
func newHolder(sock string) fuseloop.Holder {
	if sock == "" {
		return nil
	}
	return fuseholder.NewClient(sock)
}

// putHolder gives the holder a dup of v's connection. A failure is logged:
// the volume then serves without protection against a crash.
func (s *Server) putHolder(ctx context.Context, loop *fuseloop.Device, policy string) {
	if s.holder == nil || loop == nil {
		return
	}
	p, _ := blockdev.ParseAckPolicy(policy)
	hctx, cancel := holderCtx(ctx)
	defer cancel()
	if err := fuseloop.PutDevice(hctx, s.holder, loop, acksDurable(p)); err != nil {
		klog.FromContext(ctx).Error(err, "Could not give the volume's FUSE connection to the holder; a crash of the plugin aborts it (I/O errors in the pods)", "device", loop.Path())
	}
}

// dropHolder tells the holder to let go of key's connection.
func (s *Server) dropHolder(ctx context.Context, key string) {
	if s.holder == nil {
		return
	}
	hctx, cancel := holderCtx(ctx)
	defer cancel()
	if err := s.holder.Drop(hctx, key); err != nil && !errors.Is(err, fuseholder.ErrNotFound) {
		klog.FromContext(ctx).Error(err, "Could not drop the volume's FUSE connection from the holder")
	}
}

// adopt takes the connection the holder keeps for r back and serves it
// with dev (already opened: lock taken over, journal replayed). It returns
// nil when there is nothing to adopt or adopting failed (logged; the
// holder's entry is dropped): the caller falls back to a new device.
func (s *Server) adopt(ctx context.Context, r *record, dev *blockdev.Device) *fuseloop.Device {
	if s.holder == nil {
		return nil
	}
	logger := klog.FromContext(ctx)
	hctx, cancel := holderCtx(ctx)
	f, mb, alive, err := s.holder.Get(hctx, r.Key)
	cancel()
	switch {
	case errors.Is(err, fuseholder.ErrNotFound):
		logger.Info("The holder has no FUSE connection of this volume (holder restarted, or first start with it); re-serving on a new device")
		return nil
	case err != nil:
		logger.Error(err, "Holder unavailable; re-serving on a new device")
		return nil
	}
	m, err := fuseloop.ParseMeta(mb)
	if err != nil {
		f.Close()
	} else if want := filepath.Join(s.fuseDir, r.Key, "fuse"); m.MountPoint != want {
		f.Close()
		err = fmt.Errorf("%w: held connection is mounted at %s, this plugin serves %s", fuseloop.ErrStaleMeta, m.MountPoint, want)
	} else if err = s.markNotDurable(ctx, r, f, m); err != nil {
		f.Close()
	} else {
		var loop *fuseloop.Device
		loop, err = fuseloop.Adopt(ctx, f, m, dev, fuseloop.AdoptOptions{RequestTimeout: s.o.RequestTimeout})
		if err == nil {
			return loop
		}
	}
	logger.Error(err, "Cannot adopt the held FUSE connection; re-serving on a new device", "alive", alive)
	s.dropHolder(ctx, r.Key)
	return nil
}

// markNotDurable: before a write-back volume's connection is adopted
// (its metadata says durable: the predecessor drained it at a planned
// stop), the holder gets it again marked not durable, so that a crash of
// this process, once it acknowledges writes early, is never handed over.
// If that fails the connection is not adopted (the fallback aborts it).
func (s *Server) markNotDurable(ctx context.Context, r *record, f *os.File, m fuseloop.Meta) error {
	if p, _ := blockdev.ParseAckPolicy(r.AckPolicy); acksDurable(p) {
		return nil
	}
	m.AcksDurable = false
	mb, err := m.Marshal()
	if err != nil {
		return err
	}
	hctx, cancel := holderCtx(ctx)
	defer cancel()
	if err := s.holder.Put(hctx, r.Key, f, mb); err != nil {
		return fmt.Errorf("mark the write-back volume's connection not durable in the holder before adopting it: %w", err)
	}
	return nil
}

// checkAdopted verifies that the mounts of an adopted volume are still
// there (mountinfo): the staging mount on the adopted loop device, and
// every publish target. A missing one is mounted again (on the same
// device); the others are left alone.
func (s *Server) checkAdopted(ctx context.Context, v *stagedVolume) error {
	logger := klog.FromContext(ctx)
	r := v.rec
	var errs []error
	if !r.Block {
		ms, err := mountsAt(r.StagingPath)
		if err != nil {
			return err
		}
		switch {
		case len(ms) == 0:
			logger.Info("Adopted volume's staging mount is gone; mounting it again")
			if err := s.mountServed(ctx, v); err != nil {
				return fmt.Errorf("mount the adopted device at the staging path: %w", err)
			}
		case !sameDevice(ms[len(ms)-1].Source, r.Device):
			return fmt.Errorf("staging path %s shows %s, not the adopted device %s", r.StagingPath, ms[len(ms)-1].Source, r.Device)
		}
	}
	for _, t := range r.targets() {
		mounted, err := isMounted(t)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !mounted {
			logger.Info("Adopted volume's publish mount is gone; binding it again", "targetPath", t)
			if err := s.bindTarget(r, t, r.Publish[t].ReadOnly); err != nil {
				errs = append(errs, fmt.Errorf("publish target %s: %w", t, err))
			}
		}
	}
	return errors.Join(errs...)
}

// sameDevice compares a mount source with a device path (the source may
// name it through a symlink).
func sameDevice(src, dev string) bool {
	if src == dev {
		return true
	}
	a, err1 := filepath.EvalSymlinks(src)
	b, err2 := filepath.EvalSymlinks(dev)
	return err1 == nil && err2 == nil && a == b
}

// handoff is Stop's path with a holder: hand the device off (the holder
// keeps the connection, the kernel queues new requests for the successor),
// then close the journaled device (drain, commit, release the lock). When
// the handoff fails the device is closed anyway: requests still in flight
// are resent to the successor.
func (s *Server) handoff(ctx context.Context, v *stagedVolume) {
	logger := klog.FromContext(ctx).WithValues("volumeID", v.rec.VolumeID, "device", v.rec.Device)
	start := time.Now()
	// A write-back volume's connection is held marked "acks not durable";
	// once the device is closed (every acknowledged write durable) it is
	// put again marked durable, through a file taken before the handoff
	// closes this process's own.
	var again *os.File
	if p, _ := blockdev.ParseAckPolicy(v.rec.AckPolicy); !acksDurable(p) && s.holder != nil {
		f, err := v.loop.DupFile()
		if err != nil {
			logger.Error(err, "Cannot keep the write-back volume's FUSE connection to mark it durable after the drain; the successor will re-serve it (EIO in the pods)")
		}
		again = f
	}
	if again != nil {
		defer again.Close()
	}
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := v.loop.Handoff(hctx)
	cancel()
	if err != nil {
		logger.Error(err, "Handing the device off did not complete; closing it anyway (the holder keeps the connection, unanswered requests are resent to the successor)")
	}
	handoff := time.Since(start)
	if err := v.dev.Close(ctx); err != nil {
		logger.Error(err, "Closing the journaled device at shutdown failed (the journal keeps every acknowledged write; the successor replays it)")
	} else if again != nil {
		if err := s.markDurable(ctx, v.loop, again); err != nil {
			logger.Error(err, "Could not mark the drained write-back volume's connection durable in the holder; the successor will re-serve it (EIO in the pods)")
		}
	}
	logger.Info("Volume handed off to the holder (plugin shutdown)", "handoff", handoff.Round(time.Microsecond), "total", time.Since(start).Round(time.Millisecond))
}

// markDurable gives the holder loop's connection (f, an open file of it)
// again, with metadata saying that every acknowledged write is durable:
// called once the device was closed, i.e. drained.
func (s *Server) markDurable(ctx context.Context, loop *fuseloop.Device, f *os.File) error {
	m := loop.Meta(true)
	mb, err := m.Marshal()
	if err != nil {
		return err
	}
	hctx, cancel := holderCtx(ctx)
	defer cancel()
	return s.holder.Put(hctx, m.Name, f, mb)
}

// holderResyncPeriod is how often the plugin checks that the holder still
// has every served volume's connection.
const holderResyncPeriod = 10 * time.Second

// lister is a holder that can list what it holds (fuseholder.Client).
type lister interface {
	List(ctx context.Context) ([]fuseholder.Entry, error)
}

// resyncHolder gives the holder again every served volume's connection it
// lacks: after the holder restarted (its pod deleted to upgrade it), the
// volumes would otherwise be unprotected until they are staged again.
// Owned by Server: runs until stop is closed.
func (s *Server) resyncHolder(ctx context.Context, stop <-chan struct{}) {
	l, ok := s.holder.(lister)
	if !ok {
		return
	}
	logger := klog.FromContext(ctx)
	t := time.NewTicker(holderResyncPeriod)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		hctx, cancel := holderCtx(ctx)
		ents, err := l.List(hctx)
		cancel()
		if err != nil {
			logger.V(2).Info("Holder not reachable; will retry", "err", err)
			continue
		}
		held := map[string]bool{}
		for _, e := range ents {
			held[e.Key] = e.Alive
		}
		s.mu.Lock()
		var missing []string
		for id, v := range s.vols {
			if v.loop != nil && v.loop.Err() == nil && !held[v.rec.Key] {
				missing = append(missing, id)
			}
		}
		s.mu.Unlock()
		for _, id := range missing {
			lctx, cancel := context.WithTimeout(ctx, time.Second)
			unlock, err := s.lock(lctx, id)
			cancel()
			if err != nil {
				continue // an operation runs on it: next round
			}
			if v := s.get(id); v != nil && v.loop != nil && v.loop.Err() == nil {
				logger.Info("The holder lacks a served volume's FUSE connection (holder restarted?); giving it again", "volumeID", id)
				s.putHolder(klog.NewContext(ctx, logger.WithValues("volumeID", id)), v.loop, v.rec.AckPolicy)
			}
			unlock()
		}
	}
}
