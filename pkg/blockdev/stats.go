package blockdev

import (
	"sync/atomic"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
)

// Op is a kind of device request, for Stats and Observer.
type Op int

// The kinds of requests.
const (
	OpRead Op = iota
	OpWrite
	OpWriteZeroes
	OpDiscard
	OpFlush
	// NumOps is the number of kinds.
	NumOps
)

func (o Op) String() string {
	switch o {
	case OpRead:
		return "read"
	case OpWrite:
		return "write"
	case OpWriteZeroes:
		return "write_zeroes"
	case OpDiscard:
		return "discard"
	case OpFlush:
		return "flush"
	}
	return "unknown"
}

// State is whether a device serves I/O.
type State string

// The states of a device.
const (
	// StateServing: the device takes I/O.
	StateServing State = "serving"
	// StateFailed: an apply, the journal or the lock failed (or this node
	// was fenced); I/O fails until the volume is served again.
	StateFailed State = "failed"
	// StateClosed: Close ran.
	StateClosed State = "closed"
)

// States lists every State.
var States = []State{StateServing, StateFailed, StateClosed}

// OpStats count the requests of one kind since Open.
type OpStats struct {
	// Requests that completed, successfully or not.
	Requests uint64
	// Errors among them.
	Errors uint64
	// Bytes that successful requests read, wrote, zeroed or discarded.
	Bytes uint64
}

// Stats is a snapshot of a device's counters since Open. Taking it costs
// a few atomic loads and two short critical sections: scrape it freely.
type Stats struct {
	State State
	Ops   [NumOps]OpStats
	// PendingBytes are the written bytes journaled (or being journaled)
	// but not yet applied to the image; MaxPendingBytes is their bound.
	PendingBytes, MaxPendingBytes int64
	// DirtyBytes are the written bytes acknowledged but not yet durable in
	// the journal (AckWriteBack; always 0 otherwise); MaxDirtyBytes is their
	// bound (0 unless AckWriteBack).
	DirtyBytes, MaxDirtyBytes int64
	// DirtyWaits counts the requests that waited because DirtyBytes was at
	// its bound; DirtyWait is their summed wait.
	DirtyWaits uint64
	DirtyWait  time.Duration
	// BackpressureWaits counts the requests that waited because
	// PendingBytes was at its bound; BackpressureWait is their summed wait.
	BackpressureWaits uint64
	BackpressureWait  time.Duration
	// Replay is what Open replayed, and ReplayDuration how long it took.
	Replay         journal.ReplayStats
	ReplayDuration time.Duration
	// Lock is the exclusive lock's state and what acquiring it took.
	Lock exclusivelock.Stats
}

// Observer receives the device's latencies (a metrics histogram). Its
// methods are called on the I/O path, concurrently: they must be cheap and
// must not block.
type Observer interface {
	// ObserveRequest is a request's latency, from the call to its return
	// (a write's acknowledgement: after the journal append with
	// AckJournaled, after the apply with AckApplied). Failed requests are
	// not observed.
	ObserveRequest(op Op, d time.Duration)
	// ObserveJournalAppend is the time from a request's journal append to
	// its (first) entry being durable.
	ObserveJournalAppend(d time.Duration)
	// ObserveApply is the time one journaled change took to be applied to
	// the image (not counting its wait for earlier overlapping changes).
	ObserveApply(d time.Duration)
}

// SetObserver sets (nil: removes) the observer of the device's latencies.
func (d *Device) SetObserver(o Observer) {
	if o == nil {
		d.counters.observer.Store(nil)
		return
	}
	d.counters.observer.Store(&o)
}

func (d *Device) observer() Observer {
	if p := d.counters.observer.Load(); p != nil {
		return *p
	}
	return nil
}

// deviceCounters are the lock-free counters behind Stats.
type deviceCounters struct {
	ops            [NumOps]struct{ requests, errors, bytes atomic.Uint64 }
	replayDuration time.Duration // set by Open before the device is shared
	observer       atomic.Pointer[Observer]
}

// track counts a request of op over n bytes; call the returned func with
// the request's outcome when it is done:
//
//	defer d.track(OpWrite, int64(len(p)))(&err)
func (d *Device) track(op Op, n int64) func(*error) {
	start := time.Now()
	return func(errp *error) {
		c := &d.counters.ops[op]
		c.requests.Add(1)
		if *errp != nil {
			c.errors.Add(1)
			return
		}
		c.bytes.Add(uint64(n))
		if o := d.observer(); o != nil {
			o.ObserveRequest(op, time.Since(start))
		}
	}
}

// Stats returns the device's counters and state.
func (d *Device) Stats() Stats {
	var st Stats
	for i := range st.Ops {
		c := &d.counters.ops[i]
		st.Ops[i] = OpStats{Requests: c.requests.Load(), Errors: c.errors.Load(), Bytes: c.bytes.Load()}
	}
	st.PendingBytes, st.BackpressureWaits, st.BackpressureWait = d.inflight.stats()
	st.MaxPendingBytes = d.o.MaxPendingBytes
	if d.dirty != nil {
		st.DirtyBytes, st.DirtyWaits, st.DirtyWait = d.dirty.stats()
		st.MaxDirtyBytes = d.dirty.size
	}
	st.Replay, st.ReplayDuration = d.replayStats, d.counters.replayDuration
	if d.lock != nil {
		st.Lock = d.lock.Stats()
	}
	d.mu.Lock()
	closed, failed := d.closed, d.failed != nil
	d.mu.Unlock()
	switch {
	case closed:
		st.State = StateClosed
	case failed || d.Err() != nil:
		st.State = StateFailed
	default:
		st.State = StateServing
	}
	return st
}

// observeAppend observes a request's journal append, appended at start.
func (d *Device) observeAppend(start time.Time) {
	if o := d.observer(); o != nil {
		o.ObserveJournalAppend(time.Since(start))
	}
}

// observeApply observes one change's apply, begun at start.
func (d *Device) observeApply(start time.Time) {
	if o := d.observer(); o != nil {
		o.ObserveApply(time.Since(start))
	}
}
