// Package journal is a Ceph-compatible journaler: the Go counterpart of
// Ceph's src/journal (Journaler, JournalMetadata, JournalRecorder,
// JournalPlayer, JournalTrimmer) over any objstore.Pool.
//
// A journal is a header object "journal.<id>" whose omap (maintained by the
// "journal" object class) records the layout (order, splay width, data
// pool), the registered clients with their commit positions, the tags, and
// the window of live object sets [minimum_set, active_set]. Entries are
// appended to data objects "journal_data.<pool>.<id>.<n>": entry tid t of a
// tag goes to splay offset t % splay_width of the active object set, so a
// writer keeps splay_width objects busy in parallel.
//
// Lifecycle of an entry: Append returns a Future; the entry is batched with
// others bound for the same object (group commit) and appended; the Future
// completes once the entry and every earlier entry are durable; the caller
// applies the entry and reports Committed; the commit position moves and is
// written to the header in the background; object sets every client has
// passed are trimmed.
package journal

import (
	"context"
	"errors"
	"fmt"
	"sync"

	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"k8s.io/klog/v2"
)

// Sentinel errors callers branch on.
var (
	// ErrNotFound: the journal (or a client or tag) does not exist.
	ErrNotFound = errors.New("not found")
	// ErrClosed: the journaler was closed.
	ErrClosed = errors.New("journaler closed")
	// ErrClientNotRegistered: the journaler's client is not registered.
	ErrClientNotRegistered = errors.New("client not registered")
	// ErrGap: an entry is missing in the middle of the journal.
	ErrGap = errors.New("journal gap")
	// ErrTooLarge: an entry does not fit in a journal object.
	ErrTooLarge = errors.New("entry too large for journal object")
)

// Layout limits accepted by Create (librbd's journal_order range).
const (
	MinOrder = 12
	MaxOrder = 26
)

// HeaderOID returns the name of journal id's header object.
func HeaderOID(id string) string { return Naming{}.HeaderOID(id) }

// DataOIDPrefix returns the common prefix of journal id's data objects.
func DataOIDPrefix(poolID int64, id string) string { return Naming{}.DataOIDPrefix(poolID, id) }

// Naming says how a journal's objects are named. The zero value is Ceph's
// ("journal.<id>", "journal_data.<pool>.<id>.<n>"), which librbd and
// rbd-mirror look for; a journal that is not librbd's (csi-rbdj's extent
// log) uses other prefixes so that no Ceph tool ever reads it as one.
type Naming struct {
	// HeaderPrefix precedes the id in the header object's name
	// (default "journal.").
	HeaderPrefix string
	// DataPrefix precedes "<pool>.<id>.<n>" in the data objects' names
	// (default "journal_data.").
	DataPrefix string
}

// HeaderOID returns the name of journal id's header object.
func (n Naming) HeaderOID(id string) string {
	if n.HeaderPrefix == "" {
		return "journal." + id
	}
	return n.HeaderPrefix + id
}

// DataOIDPrefix returns the common prefix of journal id's data objects.
func (n Naming) DataOIDPrefix(poolID int64, id string) string {
	p := n.DataPrefix
	if p == "" {
		p = "journal_data."
	}
	return fmt.Sprintf("%s%d.%s.", p, poolID, id)
}

// CreateOptions describe a new journal.
type CreateOptions struct {
	Order      uint8 // object size 1<<Order (default 24)
	SplayWidth uint8 // objects written in parallel (default 4)
	// DataPoolID is the pool of the data objects; -1 (the default when
	// zero-valued options are used via Create) means the header's pool.
	DataPoolID int64
	// Naming names the journal's objects (zero: Ceph's names).
	Naming Naming
}

// Create creates journal id in pool. It fails with an error wrapping
// objstore.ErrExists if the journal exists.
func Create(ctx context.Context, pool objstore.Pool, id string, o CreateOptions) error {
	if o.Order == 0 {
		o.Order = 24
	}
	if o.SplayWidth == 0 {
		o.SplayWidth = 4
	}
	if o.DataPoolID == 0 {
		o.DataPoolID = -1
	}
	if o.Order < MinOrder || o.Order > MaxOrder {
		return fmt.Errorf("create journal %s: order %d out of range [%d, %d]", id, o.Order, MinOrder, MaxOrder)
	}
	op := &objstore.WriteOp{}
	clsjournal.Create(op, o.Order, o.SplayWidth, o.DataPoolID)
	if err := pool.Operate(ctx, o.Naming.HeaderOID(id), op); err != nil {
		return fmt.Errorf("create journal %s: %w", id, err)
	}
	return nil
}

// Remove deletes journal id: every data object in its live window, then the
// header. Missing objects are ignored, so Remove can be retried.
func Remove(ctx context.Context, pool objstore.Pool, dataPool objstore.Pool, id string) error {
	return RemoveNamed(ctx, pool, dataPool, id, Naming{})
}

// RemoveNamed is Remove for a journal named by n.
func RemoveNamed(ctx context.Context, pool objstore.Pool, dataPool objstore.Pool, id string, n Naming) error {
	hdr := n.HeaderOID(id)
	_, splay, poolID, err := clsjournal.GetImmutableMetadata(ctx, pool, hdr)
	if errors.Is(err, objstore.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove journal %s: %w", id, err)
	}
	minSet, activeSet, _, err := clsjournal.GetMutableMetadata(ctx, pool, hdr)
	if err != nil {
		return fmt.Errorf("remove journal %s: %w", id, err)
	}
	if dataPool == nil {
		dataPool = pool
	}
	if poolID < 0 {
		poolID = dataPool.ID()
	}
	prefix := n.DataOIDPrefix(poolID, id)
	w := uint64(splay)
	for n := minSet * w; n < (activeSet+1)*w; n++ {
		if err := removeObject(ctx, dataPool, fmt.Sprintf("%s%d", prefix, n)); err != nil {
			return fmt.Errorf("remove journal %s: %w", id, err)
		}
	}
	if err := removeObject(ctx, pool, hdr); err != nil {
		return fmt.Errorf("remove journal %s: %w", id, err)
	}
	return nil
}

func removeObject(ctx context.Context, pool objstore.Pool, oid string) error {
	op := &objstore.WriteOp{}
	op.Remove()
	if err := pool.Operate(ctx, oid, op); err != nil && !errors.Is(err, objstore.ErrNotFound) {
		return err
	}
	return nil
}

// Options for Open.
type Options struct {
	Settings
	// DataPool holds the data objects when the journal's pool_id names
	// another pool than the header's.
	DataPool objstore.Pool
	// Naming names the journal's objects (zero: Ceph's names).
	Naming Naming
}

// Journaler is an open journal as seen by one client. Its methods are safe
// for concurrent use.
type Journaler struct {
	pool, dataPool objstore.Pool
	id, clientID   string
	headerOID      string
	dataPrefix     string
	s              Settings
	// log is the logger of Open's context (it carries the request's
	// values, e.g. the volume id).
	log klog.Logger

	order      uint8
	splayWidth uint8

	// bg is the context of background work; cancelled by Close.
	bg     context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	cond *sync.Cond // signalled when an append completes (drain for set advance)

	minimumSet, activeSet uint64
	clients               map[string]clsjournal.Client

	// lastEntryTid is the last entry tid allocated (or replayed) per tag.
	lastEntryTid map[uint64]uint64
	commits      commitTracker
	commitPos    clsjournal.ObjectSetPosition // in memory, newest first
	commitDirty  bool
	commitKick   chan struct{}

	rec     recorder
	stats   stats
	lag     lagIndex
	failed  error // sticky: appends fail once set
	closing bool

	commitMu sync.Mutex // serialises writes of the commit position and trims

	watch     objstore.Watch
	refreshCh chan struct{}
	rewatchCh chan struct{}
}

// Open opens journal id in pool for clientID. The client need not be
// registered yet (see RegisterClient), but Replay and Append require it.
func Open(ctx context.Context, pool objstore.Pool, id, clientID string, o Options) (*Journaler, error) {
	hdr := o.Naming.HeaderOID(id)
	order, splay, poolID, err := clsjournal.GetImmutableMetadata(ctx, pool, hdr)
	if errors.Is(err, objstore.ErrNotFound) {
		return nil, fmt.Errorf("open journal %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("open journal %s: %w", id, err)
	}
	if splay == 0 {
		return nil, fmt.Errorf("open journal %s: splay width 0", id)
	}
	dataPool := pool
	if poolID >= 0 && poolID != pool.ID() {
		if o.DataPool == nil || o.DataPool.ID() != poolID {
			return nil, fmt.Errorf("open journal %s: data objects are in pool %d: pass that pool as DataPool", id, poolID)
		}
		dataPool = o.DataPool
	}
	if poolID < 0 {
		poolID = pool.ID()
	}
	// Background work outlives Open's context but keeps its values.
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	j := &Journaler{
		log:          klog.FromContext(ctx),
		pool:         pool,
		dataPool:     dataPool,
		id:           id,
		clientID:     clientID,
		headerOID:    hdr,
		dataPrefix:   o.Naming.DataOIDPrefix(poolID, id),
		s:            o.Settings.withDefaults(),
		order:        order,
		splayWidth:   splay,
		bg:           bg,
		cancel:       cancel,
		lastEntryTid: map[uint64]uint64{},
		refreshCh:    make(chan struct{}, 1),
		rewatchCh:    make(chan struct{}, 1),
		commitKick:   make(chan struct{}, 1),
	}
	j.cond = sync.NewCond(&j.mu)
	j.commits.init()
	j.rec.init(int(splay))
	if err := j.refresh(ctx); err != nil {
		cancel()
		return nil, fmt.Errorf("open journal %s: %w", id, err)
	}
	if c, ok := j.clients[clientID]; ok {
		j.commitPos = c.CommitPosition
	}
	if err := j.sizeActiveSet(ctx); err != nil {
		cancel()
		return nil, fmt.Errorf("open journal %s: %w", id, err)
	}
	w, err := pool.Watch(ctx, hdr, watchHandler{j})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("open journal %s: watch header: %w", id, err)
	}
	j.watch = w
	j.wg.Add(2)
	go j.refreshLoop()
	go j.commitLoop()
	return j, nil
}

// sizeActiveSet reads the sizes of the active set's objects, so that
// appends to them need no guard (splayRecorder.sized).
func (j *Journaler) sizeActiveSet(ctx context.Context) error {
	ctx, cancel := j.opCtx(ctx)
	defer cancel()
	w := uint64(j.splayWidth)
	sizes := make([]uint64, w)
	errs := make([]error, w)
	var wg sync.WaitGroup
	for i := range w {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var op objstore.ReadOp
			st := op.Stat()
			err := j.dataPool.Read(ctx, j.DataOID(j.activeSet*w+i), &op)
			switch {
			case err == nil:
				sizes[i] = st.Stat().Size
			case !errors.Is(err, objstore.ErrNotFound):
				errs[i] = fmt.Errorf("stat %s: %w", j.DataOID(j.activeSet*w+i), err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	for i, s := range j.rec.splays {
		s.object, s.objectBytes, s.sized = j.activeSet*w+uint64(i), int(min(sizes[i], 1<<j.order)), true
	}
	return nil
}

// ID returns the journal id.
func (j *Journaler) ID() string { return j.id }

// Order returns the journal's object order.
func (j *Journaler) Order() uint8 { return j.order }

// SplayWidth returns the journal's splay width.
func (j *Journaler) SplayWidth() uint8 { return j.splayWidth }

// MaxAppendSize is the largest payload one entry can carry: an entry must
// fit in one object.
func (j *Journaler) MaxAppendSize() int { return (1 << j.order) - EntryOverhead }

// DataOID returns the name of data object n.
func (j *Journaler) DataOID(n uint64) string { return fmt.Sprintf("%s%d", j.dataPrefix, n) }

// Sets returns the live window of object sets as last seen.
func (j *Journaler) Sets() (minimum, active uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.minimumSet, j.activeSet
}

func (j *Journaler) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, j.s.OpTimeout)
}

// Close flushes pending appends, waits for them, writes the commit position
// and releases the journaler's resources. Appends after Close fail.
func (j *Journaler) Close(ctx context.Context) error {
	j.mu.Lock()
	if j.closing {
		j.mu.Unlock()
		return nil
	}
	j.mu.Unlock()
	ferr := j.Flush(ctx)
	j.mu.Lock()
	j.closing = true
	j.rec.stopTimers()
	j.mu.Unlock()
	cerr := j.FlushCommitPosition(ctx)
	j.cancel()
	j.mu.Lock()
	j.cond.Broadcast()
	j.mu.Unlock()
	j.wg.Wait()
	if j.watch != nil {
		if err := j.watch.Close(ctx); err != nil {
			j.log.V(2).Info("Journal unwatch failed", "journal", j.id, "err", err)
		}
	}
	j.mu.Lock()
	j.failLocked(ErrClosed)
	j.mu.Unlock()
	return errors.Join(ferr, cerr)
}
