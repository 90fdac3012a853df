package exclusivelock

import "sync/atomic"

// State is where a Lock stands, for metrics.
type State string

// The states of a Lock.
const (
	// StateHeld: the lock is ours and its header watch is registered.
	StateHeld State = "held"
	// StateRewatching: the lock is ours but its header watch is being
	// re-registered (notifications meanwhile are missed).
	StateRewatching State = "rewatching"
	// StateLost: another client broke the lock (after fencing this one),
	// or this client was fenced; the device refuses writes.
	StateLost State = "lost"
	// StateReleased: Release ran.
	StateReleased State = "released"
)

// States lists every State, for metrics that export one series per state.
var States = []State{StateHeld, StateRewatching, StateLost, StateReleased}

// Stats is a snapshot of a Lock's state and of what Acquire did.
type Stats struct {
	State State
	// Takeovers counts the times Acquire took the lock from another
	// holder: one that released it on request, or a dead one it fenced.
	Takeovers uint64
	// Fencings counts the holders Acquire fenced (blocklisted) before
	// breaking their lock.
	Fencings uint64
}

// counters are the Lock's Stats counters (lock-free: read by scrapes).
type counters struct {
	takeovers, fencings atomic.Uint64
}

// Stats returns the lock's state and counters.
func (l *Lock) Stats() Stats {
	l.mu.Lock()
	var st State
	switch {
	case l.released:
		st = StateReleased
	case l.lost != nil:
		st = StateLost
	case l.rewatching:
		st = StateRewatching
	default:
		st = StateHeld
	}
	l.mu.Unlock()
	return Stats{State: st, Takeovers: l.counters.takeovers.Load(), Fencings: l.counters.fencings.Load()}
}
