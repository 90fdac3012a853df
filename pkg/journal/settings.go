package journal

import "time"

// Settings tune a Journaler. The zero value of each field selects its default.
type Settings struct {
	// FlushAge is how long an append may wait in memory for more appends to
	// join its batch. 0 sends a splay object's batch as soon as its previous
	// append is acknowledged (group commit without added latency).
	FlushAge time.Duration
	// FlushBytes sends a batch before FlushAge once this many bytes wait.
	FlushBytes int
	// MaxBatchBytes caps the bytes of one append operation.
	MaxBatchBytes int
	// CommitAge is how long a moved commit position may stay in memory before
	// it is written to the header (librbd's rbd_journal_commit_age).
	CommitAge time.Duration
	// NotifyTimeout bounds how long a header notification waits for watchers.
	NotifyTimeout time.Duration
	// OpTimeout bounds each object-store operation the journaler issues.
	OpTimeout time.Duration
	// MaxInflightWaves is how many append waves may be in flight at once
	// (pipelining, see maybeSendLocked): 1 waits for each wave before the
	// next; the default 2 lets a wave go while one is in flight, on pools
	// that order submissions (objstore.Submitter).
	MaxInflightWaves int
	// PipelineBytes is how many bytes must wait before a wave is sent
	// while another is in flight (see pipelineWorthItLocked); less waits
	// for the wave in flight and joins the next.
	PipelineBytes int
	// MaxConcurrentObjectSets bounds how many object sets another
	// registered client (rbd-mirror) may fall behind the active set before
	// it is disconnected and stops holding back trimming (librbd's
	// rbd_journal_max_concurrent_object_sets; 0: unbounded, librbd's
	// default). See laggy.go.
	MaxConcurrentObjectSets int
	// OnClientDisconnected, if set, is told of each client disconnected
	// for lagging (for events); it must not block.
	OnClientDisconnected func(LaggyClient)
}

// DefaultSettings returns the values used for every zero field of Settings.
func DefaultSettings() Settings {
	return Settings{
		FlushAge:      0,
		FlushBytes:    1 << 20,
		MaxBatchBytes: 4 << 20,
		CommitAge:     time.Second,
		NotifyTimeout: 5 * time.Second,
		OpTimeout:     30 * time.Second,

		MaxInflightWaves: 2,
		PipelineBytes:    64 << 10,
	}
}

func (s Settings) withDefaults() Settings {
	d := DefaultSettings()
	if s.FlushAge > 0 {
		d.FlushAge = s.FlushAge
	}
	if s.FlushBytes > 0 {
		d.FlushBytes = s.FlushBytes
	}
	if s.MaxBatchBytes > 0 {
		d.MaxBatchBytes = s.MaxBatchBytes
	}
	if s.CommitAge > 0 {
		d.CommitAge = s.CommitAge
	}
	if s.NotifyTimeout > 0 {
		d.NotifyTimeout = s.NotifyTimeout
	}
	if s.OpTimeout > 0 {
		d.OpTimeout = s.OpTimeout
	}
	if s.MaxInflightWaves > 0 {
		d.MaxInflightWaves = s.MaxInflightWaves
	}
	if s.PipelineBytes > 0 {
		d.PipelineBytes = s.PipelineBytes
	}
	d.MaxConcurrentObjectSets = max(s.MaxConcurrentObjectSets, 0)
	d.OnClientDisconnected = s.OnClientDisconnected
	return d
}
