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
// write cache, blockdev/writeback.go). Its connections normally go to the
// holder with the volume's write-back ring (blockdev/wbring.go), whose
// records a successor re-journals before serving: every acknowledged
// write survives, so they are marked durable (putWithRing). Without a
// ring (--writeback-ring=false, or a holder from before rings) they are given to the holder marked
// not durable, and a successor after a crash refuses them (Adopt) and
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
// the volume then serves without protection against a crash. A write-back
// volume's connection goes with its ring, marked durable: a successor
// re-journals what the ring holds (blockdev/wbring.go). A holder that
// cannot keep a ring (one from before rings) gets the connection alone,
// marked not durable: a crash then aborts it.
func (s *Server) putHolder(ctx context.Context, loop *fuseloop.Device, policy string) {
	if s.holder == nil || loop == nil {
		return
	}
	p, _ := blockdev.ParseAckPolicy(policy)
	hctx, cancel := holderCtx(ctx)
	defer cancel()
	logger := klog.FromContext(ctx)
	if ring := s.ringOf(loop.Meta(false).Name); ring != nil {
		err := s.putWithRing(hctx, loop, ring)
		if err == nil {
			return
		}
		logger.Error(err, "Could not give the volume's write-back ring to the holder with its connection; a crash of the plugin will abort the connection (I/O errors in the pods)", "device", loop.Path())
	}
	if err := fuseloop.PutDevice(hctx, s.holder, loop, acksDurable(p)); err != nil {
		logger.Error(err, "Could not give the volume's FUSE connection to the holder; a crash of the plugin aborts it (I/O errors in the pods)", "device", loop.Path())
	}
}

// ringHolder is a holder that keeps write-back rings (fuseholder.Client).
type ringHolder interface {
	PutRing(ctx context.Context, key string, f, ring *os.File, meta []byte) error
	GetRing(ctx context.Context, key string) (*os.File, []byte, bool, *os.File, error)
}

// putWithRing gives the holder loop's connection with ring, marked durable
// (what was acknowledged is in the journal or in the ring).
func (s *Server) putWithRing(ctx context.Context, loop *fuseloop.Device, ring *blockdev.Ring) error {
	rh, ok := s.holder.(ringHolder)
	if !ok {
		return errors.New("the holder client cannot pass write-back rings")
	}
	f, err := loop.DupFile()
	if err != nil {
		return err
	}
	defer f.Close()
	m := loop.Meta(true)
	mb, err := m.Marshal()
	if err != nil {
		return err
	}
	return rh.PutRing(ctx, m.Name, f, ring.File(), mb)
}

// heldConn is what the holder kept for a volume (fetchHeld).
type heldConn struct {
	f     *os.File
	meta  []byte
	alive bool
	ring  *os.File // the write-back ring, or nil
}

func (h *heldConn) close() {
	if h == nil {
		return
	}
	if h.f != nil {
		h.f.Close()
	}
	if h.ring != nil {
		h.ring.Close()
	}
}

// fetchHeld takes back what the holder keeps for r (nil when nothing, or
// on any error: logged; the fallback runs). It is called before the
// journaled device is opened: a write-back ring must be re-journaled at
// Open, before the connection serves again.
func (s *Server) fetchHeld(ctx context.Context, r *record) *heldConn {
	if s.holder == nil {
		return nil
	}
	logger := klog.FromContext(ctx)
	hctx, cancel := holderCtx(ctx)
	defer cancel()
	h := &heldConn{}
	var err error
	if rh, ok := s.holder.(ringHolder); ok {
		h.f, h.meta, h.alive, h.ring, err = rh.GetRing(hctx, r.Key)
	} else {
		h.f, h.meta, h.alive, err = s.holder.Get(hctx, r.Key)
	}
	switch {
	case errors.Is(err, fuseholder.ErrNotFound):
		logger.Info("The holder has no FUSE connection of this volume (holder restarted, or first start with it); re-serving on a new device")
		return nil
	case err != nil:
		logger.Error(err, "Holder unavailable; re-serving on a new device")
		return nil
	}
	return h
}

// ringFor returns the write-back ring the device of r is opened with: the
// one the holder kept (held, from a predecessor: Open re-journals what it
// holds), or a new one; nil unless r's ack policy is writeback.
func (s *Server) ringFor(ctx context.Context, r *record, held *heldConn) *blockdev.Ring {
	p, _ := blockdev.ParseAckPolicy(r.AckPolicy)
	var ring *blockdev.Ring
	if held != nil && held.ring != nil {
		f := held.ring
		held.ring = nil
		var err error
		if ring, err = blockdev.OpenRing(f); err != nil {
			klog.FromContext(ctx).Error(err, "The write-back ring the holder kept is unusable; what the dead plugin acknowledged but had not made durable is lost")
		} else if p != blockdev.AckWriteBack && len(ring.Pending()) == 0 {
			ring.Close()
			ring = nil
		}
	}
	if ring == nil && p == blockdev.AckWriteBack && !s.o.NoWriteBackRing && s.holder != nil {
		var err error
		if ring, err = blockdev.NewRing(r.Key, blockdev.RingSize(0)); err != nil {
			klog.FromContext(ctx).Error(err, "Cannot create the volume's write-back ring; a crash of the plugin will abort its connection")
			return nil
		}
	}
	if ring != nil {
		s.mu.Lock()
		old := s.rings[r.Key]
		s.rings[r.Key] = ring
		s.mu.Unlock()
		if old != nil && old != ring {
			old.Close()
		}
	}
	return ring
}

// ringOf returns the write-back ring of the volume with key (nil: none).
func (s *Server) ringOf(key string) *blockdev.Ring {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rings[key]
}

// releaseRing unmaps the volume's ring once its device is closed (the
// holder, if it still has the connection, keeps its own copy).
func (s *Server) releaseRing(key string) {
	s.mu.Lock()
	ring := s.rings[key]
	delete(s.rings, key)
	s.mu.Unlock()
	if ring != nil {
		ring.Close()
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

// adopt serves the connection the holder kept for r (held, from
// fetchHeld) with dev (already opened: lock taken over, journal replayed,
// the write-back ring re-journaled). It returns nil when there is nothing
// to adopt or adopting failed (logged; the holder's entry is dropped): the
// caller falls back to a new device. held is consumed.
func (s *Server) adopt(ctx context.Context, r *record, dev *blockdev.Device, held *heldConn) *fuseloop.Device {
	if s.holder == nil || held == nil {
		return nil
	}
	defer held.close()
	logger := klog.FromContext(ctx)
	f, mb, alive := held.f, held.meta, held.alive
	held.f = nil
	m, err := fuseloop.ParseMeta(mb)
	if err != nil {
		f.Close()
	} else if want := filepath.Join(s.fuseDir, r.Key, "fuse"); m.MountPoint != want {
		f.Close()
		err = fmt.Errorf("%w: held connection is mounted at %s, this plugin serves %s", fuseloop.ErrStaleMeta, m.MountPoint, want)
	} else if err = s.protectBeforeAdopt(ctx, r, f, m); err != nil {
		f.Close()
	} else {
		var loop *fuseloop.Device
		loop, err = fuseloop.Adopt(ctx, f, m, dev, fuseloop.AdoptOptions{RequestTimeout: s.o.RequestTimeout, Buffers: s.reqBufs})
		if err == nil {
			return loop
		}
	}
	logger.Error(err, "Cannot adopt the held FUSE connection; re-serving on a new device", "alive", alive)
	s.dropHolder(ctx, r.Key)
	return nil
}

// protectBeforeAdopt: before a write-back volume's connection (f, with
// metadata m) is adopted, the holder must get it in the form that is
// right once this process acknowledges writes early: with this device's
// ring, marked durable; or, without a ring (or a holder that cannot keep
// one), marked not durable, so that a crash of this process is never
// handed over. The held entry may say otherwise (a predecessor that
// drained it at a planned stop marked it durable without a ring). If
// neither put succeeds the connection is not adopted (the fallback aborts
// it).
func (s *Server) protectBeforeAdopt(ctx context.Context, r *record, f *os.File, m fuseloop.Meta) error {
	if p, _ := blockdev.ParseAckPolicy(r.AckPolicy); acksDurable(p) {
		return nil
	}
	hctx, cancel := holderCtx(ctx)
	defer cancel()
	if ring := s.ringOf(r.Key); ring != nil {
		if rh, ok := s.holder.(ringHolder); ok {
			m.AcksDurable = true
			mb, err := m.Marshal()
			if err != nil {
				return err
			}
			err = rh.PutRing(hctx, r.Key, f, ring.File(), mb)
			if err == nil {
				return nil
			}
			klog.FromContext(ctx).Error(err, "Could not give the holder the write-back ring with the adopted connection; marking it not durable (a crash will abort it)")
		}
	}
	m.AcksDurable = false
	mb, err := m.Marshal()
	if err != nil {
		return err
	}
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
	// A write-back volume without a ring has its connection held marked
	// "acks not durable"; once the device is closed (every acknowledged
	// write durable) it is put again marked durable, through a file taken
	// before the handoff closes this process's own. (With a ring it is
	// held marked durable: the ring keeps what the journal may not.)
	var again *os.File
	if p, _ := blockdev.ParseAckPolicy(v.rec.AckPolicy); !acksDurable(p) && s.holder != nil && s.ringOf(v.rec.Key) == nil {
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
