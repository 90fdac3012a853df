package blockdev

import (
	"context"
	"fmt"
	"math"
	"sync"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
)

// replayParallelism bounds the replayed entries applied at once.
const replayParallelism = 256

// replayer applies replayed journal entries concurrently, as librbd does:
// an entry waits only for the earlier entries whose extents it overlaps,
// so every extent still receives its changes in journal order, and events
// without an extent other than flushes (maintenance operations) wait for
// everything before them and hold back everything after. Each entry is
// committed once applied; the commit position only moves over a contiguous
// prefix, so a failure leaves the failed entry and all later ones to the
// next replay (replaying is idempotent).
type replayer struct {
	d   *Device
	sem chan struct{}
	wg  sync.WaitGroup

	mu      sync.Mutex
	pending pendingSet
	err     error
}

func newReplayer(d *Device) *replayer {
	return &replayer{d: d, sem: make(chan struct{}, replayParallelism)}
}

// entry schedules one entry; it returns the first apply error seen so far.
func (r *replayer) entry(ctx context.Context, e journal.ReplayEntry) error {
	var ev rbdjournal.EventEntry
	if err := cephenc.Unmarshal(e.Data, &ev); err != nil {
		return fmt.Errorf("decode event: %w", err)
	}
	off, end := eventExtent(ev.Event)
	select {
	case r.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	r.mu.Lock()
	if err := r.err; err != nil {
		r.mu.Unlock()
		<-r.sem
		return err
	}
	w := r.pending.add(off, end, nil)
	r.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer func() { <-r.sem }()
		for _, ch := range w.waitFor {
			<-ch
		}
		var err error
		switch ev.Event.(type) {
		case rbdjournal.SnapCreateEvent, rbdjournal.SnapRemoveEvent, rbdjournal.OpFinishEvent:
			// Snapshot operations run when their OpFinish is replayed
			// (snapshot.go); op tids are per epoch.
			err = r.d.replaySnapEvent(ctx, e.TagTid, ev.Event)
		default:
			err = r.d.applyEvent(ctx, ev.Event)
		}
		r.mu.Lock()
		if err != nil && r.err == nil {
			r.err = err
		}
		r.pending.remove(w)
		r.mu.Unlock()
		if err == nil {
			r.d.j.Committed(e.CommitTid)
		}
	}()
	return nil
}

// wait waits for every scheduled entry and returns the first error.
func (r *replayer) wait() error {
	r.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// eventExtent is the byte range an event changes. Flushes change nothing;
// anything else without an extent (maintenance events and their
// OpFinish) is ordered against everything.
func eventExtent(ev rbdjournal.Event) (off, end int64) {
	switch ev := ev.(type) {
	case rbdjournal.AioWriteEvent:
		return int64(ev.Offset), int64(ev.Offset) + int64(len(ev.Data))
	case rbdjournal.AioDiscardEvent:
		return int64(ev.Offset), int64(ev.Offset + ev.Length)
	case rbdjournal.AioWriteSameEvent:
		return int64(ev.Offset), int64(ev.Offset + ev.Length)
	case rbdjournal.AioFlushEvent:
		return 0, 0
	}
	// OpFinish too: a snapshot replayed at its OpFinish must see every
	// earlier write applied and none after.
	return 0, math.MaxInt64
}
