package driver

import (
	"context"
	"errors"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"k8s.io/klog/v2"
)

// Background flattening of clones deeper than their StorageClass's
// cloneDepthSoftLimit (clone.go).
//
// CreateVolume marks such a clone FlattenPending in its record and wakes
// the flattener, which Serve runs in the controller for as long as it
// serves; it looks at every record when it starts and, while a clone stays
// pending, every flattenInterval, so a flatten interrupted by a restart
// (or refused) is picked up again: the flatten is
// idempotent (rbd.copyup writes only objects the clone lacks). A clone a
// node serves is not flattened — librbd's flatten would need the lock
// owner, and csi-rbdj's node refuses maintenance requests other than
// resize and snapshots — nor one with snapshots (they would still need the
// parent); both stay pending and are retried. The flatten runs without the
// node, with the image's exclusive lock held (a node staging it meanwhile
// waits). It lists volumes and opens their clusters with the controller's
// default credentials (as ListVolumes does, --ceph-credentials-dir on
// Ceph): without them clones stay unflattened and the failure is logged.

// flattenInterval is how often the flattener looks again while clones are
// pending.
const flattenInterval = 30 * time.Second

// flattenTimeout bounds the flatten of one clone.
const flattenTimeout = 30 * time.Minute

// kickFlattener wakes the flattener (never blocks).
func (d *Driver) kickFlattener() {
	select {
	case d.flattenKick <- struct{}{}:
	default:
	}
}

// runFlattener flattens pending clones until ctx is done. It looks at
// every volume record when it starts (a flatten a restart interrupted),
// when CreateVolume makes a clone to flatten, and every flattenInterval
// while a clone stays pending or the last pass failed; otherwise it stays
// idle (a pass lists the pools, which costs the cluster something).
func (d *Driver) runFlattener(ctx context.Context) {
	logger := klog.FromContext(ctx).WithName("flattener")
	ctx = klog.NewContext(ctx, logger)
	last := ""
	for {
		pending, err := d.FlattenPending(ctx)
		switch {
		case err == nil:
			last = ""
		case ctx.Err() != nil:
		case err.Error() != last:
			// The same failure (e.g. no default credentials to list
			// volumes with) is logged once, not every interval.
			logger.Error(err, "Looking for clones to flatten failed; retrying (further identical failures are not logged)", "interval", flattenInterval)
			last = err.Error()
		}
		var retry <-chan time.Time
		var t *time.Timer
		if pending > 0 || err != nil {
			t = time.NewTimer(flattenInterval)
			retry = t.C
		}
		select {
		case <-ctx.Done():
		case <-retry:
		case <-d.flattenKick:
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// FlattenPending flattens every clone whose record asks for it and that
// can be flattened now; it returns how many stay pending (served, with
// snapshots, busy, or failed: retried later).
func (d *Driver) FlattenPending(ctx context.Context) (pending int, err error) {
	ids, err := d.allVolumes(ctx)
	if err != nil {
		return 0, err
	}
	logger := klog.FromContext(ctx)
	for _, id := range ids {
		if ctx.Err() != nil {
			return pending, ctx.Err()
		}
		vid, perr := volume.ParseVolumeID(id)
		if perr != nil {
			continue
		}
		left, ferr := d.flattenOne(ctx, vid)
		if left {
			pending++
		}
		if ferr != nil {
			logger.Info("Clone not flattened yet; retrying later", "volumeID", id, "reason", ferr.Error())
		}
	}
	return pending, nil
}

// flattenOne flattens vid if its record asks for it; left reports it still
// pending.
func (d *Driver) flattenOne(ctx context.Context, vid volume.VolumeID) (left bool, err error) {
	if !d.locks.TryLock("id/" + vid.String()) {
		return true, errors.New("another operation on the volume is in progress")
	}
	defer d.locks.Unlock("id/" + vid.String())
	ctx, cancel := context.WithTimeout(ctx, flattenTimeout)
	defer cancel()
	st, err := d.o.Backend.Storage(ctx, vid.Cluster, nil)
	if err != nil {
		return true, err
	}
	pool, err := st.Pool(ctx, vid.Pool)
	if err != nil {
		return true, err
	}
	rec, err := readRecord(ctx, pool, vid.Image)
	if errors.Is(err, objstore.ErrNotFound) {
		return false, nil // deleted meanwhile
	}
	if err != nil || !rec.FlattenPending {
		return err != nil, err
	}
	cl, err := storage.ClonerOf(st)
	if err != nil {
		return true, err
	}
	start := time.Now()
	if err := cl.FlattenImage(ctx, pool, vid.Image); err != nil {
		if errors.Is(err, image.ErrNotFound) {
			return false, nil
		}
		return true, err
	}
	rec.FlattenPending = false
	if err := updateRecord(ctx, pool, vid.Image, rec); err != nil {
		return true, err
	}
	klog.FromContext(ctx).Info("Clone flattened (deeper than its soft limit)", "volumeID", vid.String(), "duration", time.Since(start).Round(time.Millisecond))
	return false, nil
}
