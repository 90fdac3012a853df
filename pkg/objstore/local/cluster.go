package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/csi-rbdj/csi-rbdj/pkg/atomicfile"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Options configure a client of a local cluster.
type Options struct {
	// Classes are the object classes this client runs, by class name.
	Classes map[string]objstore.Class
	// MaxLogBytes is the log size past which a committer checkpoints (syncs
	// the object files and empties the log). Default 64 MiB.
	MaxLogBytes int64
	// NoSync skips every fsync. Operations stay atomic with respect to
	// process crashes but not to power loss. For tests only.
	NoSync bool
	// MaxObjectSize bounds object sizes: a write, truncate or zero reaching
	// past it fails with EFBIG. Default 128 MiB (Ceph's osd_max_object_size).
	MaxObjectSize uint64
	// DefaultNotifyTimeout is used by Notify when it is given timeout 0.
	// Default 10s (librados' client_notify_timeout).
	DefaultNotifyTimeout time.Duration
	// Logger logs the client's own events (recovery, commits, checkpoints):
	// they belong to no request. Default klog.Background().
	Logger klog.Logger
}

// Cluster is one client instance of a local cluster directory.
type Cluster struct {
	dir    string
	opts   Options
	client objstore.ClientInfo
	nonce  uint32
	stats  stats
	log    klog.Logger // Options.Logger

	openLockF   *os.File // flock: shared while open; exclusive for first-open recovery
	commitLockF *os.File // flock: exclusive while committing
	aliveF      *os.File // flock held while this client lives: clients/<nonce>.lock
	wal         *os.File
	dirF        *os.File // for syncfs
	shm         *shm

	commitMu chanMutex // in-process half of the commit lock

	// committer
	pendMu  sync.Mutex
	pending []*request
	kick    chan struct{}
	walBuf  []byte
	// lazyUnsynced: this client logged lazy records since its last log
	// sync (a non-lazy operation that logs nothing must still sync them).
	// Owned by the committer.
	lazyUnsynced bool

	// pools
	poolMu    sync.Mutex
	poolVer   uint64
	poolsByID map[int64]*pool
	poolsByNm map[string]*pool

	// blocklist cache: the shm blocklist version seen and until when this client is blocklisted
	blMu      sync.Mutex
	blVerSeen atomic.Uint64
	blUntil   atomic.Int64

	// watch/notify
	watchMu    sync.Mutex
	watches    map[uint64]*watch
	nextCookie atomic.Uint64
	nextNotify atomic.Uint64
	srv        *server

	takeovers atomic.Int64 // batches of dead committers this client finished

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	life   sync.RWMutex // operations hold it shared; Close exclusive
	closed atomic.Bool
	wg     sync.WaitGroup
}

const (
	defaultMaxLog        = 64 << 20
	defaultMaxObjectSize = 128 << 20
	defaultNotifyTimeout = 10 * time.Second
	firstClientID        = 4100
)

var errClosed = fmt.Errorf("%w: local cluster client is closed", syscall.ENOTCONN)

// Open opens (creating if needed) the cluster in dir as a new client
// instance. Several clients, in one process or many, may have a directory
// open at once. The first client to open a directory that no client has open
// recovers it from its log.
func Open(dir string, opts Options) (*Cluster, error) {
	classes := make(map[string]objstore.Class, len(opts.Classes))
	for name, cls := range opts.Classes {
		classes[name] = cls
	}
	opts.Classes = classes
	if opts.MaxLogBytes <= 0 {
		opts.MaxLogBytes = defaultMaxLog
	}
	if opts.MaxObjectSize == 0 {
		opts.MaxObjectSize = defaultMaxObjectSize
	}
	if opts.DefaultNotifyTimeout <= 0 {
		opts.DefaultNotifyTimeout = defaultNotifyTimeout
	}
	if opts.Logger.GetSink() == nil {
		opts.Logger = klog.Background()
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	for _, d := range []string{dir, filepath.Join(dir, "pools"), filepath.Join(dir, "clients")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	c := &Cluster{
		dir:       dir,
		opts:      opts,
		log:       opts.Logger,
		commitMu:  newChanMutex(),
		kick:      make(chan struct{}, 1),
		poolsByID: map[int64]*pool{},
		poolsByNm: map[string]*pool{},
		watches:   map[uint64]*watch{},
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.blVerSeen.Store(^uint64(0))
	ok := false
	defer func() {
		if !ok {
			c.cancel()
			c.closeFiles()
		}
	}()
	if c.openLockF, err = os.OpenFile(filepath.Join(dir, "open.lock"), os.O_RDWR|os.O_CREATE, 0o644); err != nil {
		return nil, err
	}
	first := unix.Flock(int(c.openLockF.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil
	if !first {
		if err := unix.Flock(int(c.openLockF.Fd()), unix.LOCK_SH); err != nil {
			return nil, fmt.Errorf("lock %s: %w", dir, err)
		}
	}
	if c.shm, err = openShm(filepath.Join(dir, "shm")); err != nil {
		return nil, err
	}
	if c.commitLockF, err = os.OpenFile(filepath.Join(dir, "commit.lock"), os.O_RDWR|os.O_CREATE, 0o644); err != nil {
		return nil, err
	}
	if c.wal, err = os.OpenFile(filepath.Join(dir, "wal"), os.O_RDWR|os.O_CREATE, 0o644); err != nil {
		return nil, err
	}
	if c.dirF, err = os.Open(dir); err != nil {
		return nil, err
	}
	bg := context.Background()
	if first {
		if err := c.lockCommitNoRecover(bg); err != nil {
			return nil, err
		}
		err := c.fullRecover()
		c.unlockCommit()
		if err != nil {
			return nil, fmt.Errorf("recover %s: %w", dir, err)
		}
		if err := unix.Flock(int(c.openLockF.Fd()), unix.LOCK_SH); err != nil {
			return nil, err
		}
	}
	if err := c.newClient(bg); err != nil {
		return nil, err
	}
	if c.srv, err = c.listen(); err != nil {
		return nil, err
	}
	c.wg.Add(2)
	go c.committer()
	go c.maintain()
	liveClients.Store(liveKey{c.dir, c.nonce}, c)
	ok = true
	c.log.V(2).Info("local cluster opened", "dir", dir, "client", c.client.Name(), "addr", c.client.Addr, "recovered", first)
	return c, nil
}

// Client returns this client instance's identity.
func (c *Cluster) Client() objstore.ClientInfo { return c.client }

// Dir returns the cluster directory.
func (c *Cluster) Dir() string { return c.dir }

// Close unregisters this client's watches, stops its goroutines and releases
// its files. Operations still running fail with ENOTCONN.
func (c *Cluster) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.cancel()
	c.life.Lock() // wait for running operations
	ws := c.watchList()
	for _, w := range ws {
		w.Close(context.Background()) // not from a handler
	}
	if c.srv != nil {
		c.srv.close()
	}
	c.wg.Wait()
	liveClients.Delete(liveKey{c.dir, c.nonce})
	// The last client to close checkpoints, so that the next Open has no
	// log to replay.
	if unix.Flock(int(c.openLockF.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := c.lockCommit(ctx); err == nil {
			if c.shm.logEnd().Load() > walHeaderSize {
				if err := c.checkpoint(); err != nil {
					c.log.Error(err, "local cluster: checkpoint at close failed", "dir", c.dir)
				}
			}
			c.unlockCommit()
		}
		cancel()
	}
	if c.aliveF != nil {
		os.Remove(c.aliveF.Name())
		if c.srv != nil && c.srv.path != "" {
			os.Remove(c.srv.path)
		}
	}
	c.closeFiles()
	c.life.Unlock()
	c.log.V(2).Info("local cluster closed", "dir", c.dir, "client", c.client.Name())
	return nil
}

func (c *Cluster) closeFiles() {
	for _, f := range []*os.File{c.aliveF, c.wal, c.dirF, c.commitLockF, c.openLockF} {
		if f != nil {
			f.Close()
		}
	}
	if c.shm != nil {
		c.shm.close()
	}
}

// enter marks the start of an operation; it fails once Close has begun.
func (c *Cluster) enter() error {
	c.life.RLock()
	if c.closed.Load() {
		c.life.RUnlock()
		return errClosed
	}
	return nil
}

func (c *Cluster) exit() { c.life.RUnlock() }

// opCtx merges the caller's context with the cluster's lifetime.
func (c *Cluster) opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return mergeCancel(ctx, c.ctx)
}

func mergeCancel(ctx, other context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(other, cancel)
	return ctx, func() { stop(); cancel() }
}

// --- cluster state: pools and client ids ---

type clusterState struct {
	NextPoolID   int64      `json:"next_pool_id"`
	NextClientID uint64     `json:"next_client_id"`
	Pools        []PoolInfo `json:"pools"`
}

func (c *Cluster) statePath() string { return filepath.Join(c.dir, "cluster.json") }

func (c *Cluster) readState() (*clusterState, error) {
	st := &clusterState{NextPoolID: 1, NextClientID: firstClientID}
	if err := readJSONFile(c.statePath(), st, func(err error) error { return fmt.Errorf("%s: %w", c.statePath(), err) }); err != nil {
		return nil, err
	}
	return st, nil
}

// readJSONFile decodes the JSON file at path into v; a missing file leaves
// v as it is. A file that does not decode is the error bad makes of the
// decoding error (each caller names the file and its meaning).
func readJSONFile(path string, v any, bad func(error) error) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return bad(err)
	}
	return nil
}

// writeFileAtomic replaces path durably: temp file, fsync, rename, fsync dir.
func (c *Cluster) writeFileAtomic(path string, b []byte) error {
	return atomicfile.Write(path, b, atomicfile.Options{Perm: 0o644, NoSync: c.opts.NoSync})
}

func (c *Cluster) writeState(st *clusterState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return c.writeFileAtomic(c.statePath(), b)
}

// Stats count this client's write path since Open.
type Stats struct {
	Ops     uint64 // write operations committed
	Batches uint64 // log writes
	Syncs   uint64 // log syncs (fdatasync)
}

type stats struct{ ops, batches, syncs atomic.Uint64 }

// Stats returns this client's write-path counters: how well group commit
// batches shows as Ops per Sync.
func (c *Cluster) Stats() Stats {
	return Stats{Ops: c.stats.ops.Load(), Batches: c.stats.batches.Load(), Syncs: c.stats.syncs.Load()}
}
