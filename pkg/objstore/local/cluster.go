package local

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
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
}

// PoolInfo names a pool.
type PoolInfo struct {
	Name string `json:"name"`
	ID   int64  `json:"id"`
}

// Cluster is one client instance of a local cluster directory.
type Cluster struct {
	dir    string
	opts   Options
	client objstore.ClientInfo
	nonce  uint32
	stats  stats

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

// liveClients maps every open Cluster of this process, by directory and
// nonce, to it, so that notifications between clients of one process skip
// the socket.
var liveClients sync.Map // liveKey → *Cluster

type liveKey struct {
	dir   string
	nonce uint32
}

// liveClient returns the open Cluster of this process with this nonce on c's directory.
func (c *Cluster) liveClient(nonce uint32) *Cluster {
	if v, ok := liveClients.Load(liveKey{c.dir, nonce}); ok {
		return v.(*Cluster)
	}
	return nil
}

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
	klog.V(2).InfoS("local cluster opened", "dir", dir, "client", c.client.Name(), "addr", c.client.Addr, "recovered", first)
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
	c.watchMu.Lock()
	ws := make([]*watch, 0, len(c.watches))
	for _, w := range c.watches {
		ws = append(ws, w)
	}
	c.watchMu.Unlock()
	for _, w := range ws {
		w.Close()
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
					klog.ErrorS(err, "local cluster: checkpoint at close failed", "dir", c.dir)
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
	klog.V(2).InfoS("local cluster closed", "dir", c.dir, "client", c.client.Name())
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

// --- commit lock and recovery ---

// lockCommit takes the commit lock (in-process mutex, then the flock) and
// repairs what a committer that died holding it left behind.
func (c *Cluster) lockCommit(ctx context.Context) error {
	if err := c.lockCommitNoRecover(ctx); err != nil {
		return err
	}
	if err := c.recoverIfBusy(); err != nil {
		c.unlockCommit()
		return err
	}
	return nil
}

func (c *Cluster) lockCommitNoRecover(ctx context.Context) error {
	if err := c.commitMu.lock(ctx); err != nil {
		return err
	}
	if err := flockCtx(ctx, int(c.commitLockF.Fd()), unix.LOCK_EX); err != nil {
		c.commitMu.unlock()
		return err
	}
	return nil
}

func (c *Cluster) unlockCommit() {
	unix.Flock(int(c.commitLockF.Fd()), unix.LOCK_UN)
	c.commitMu.unlock()
}

func (c *Cluster) sync(f *os.File) error {
	if c.opts.NoSync {
		return nil
	}
	return unix.Fdatasync(int(f.Fd()))
}

// fullRecover rebuilds the shared state from the log: it runs when no other
// client has the directory open (after a crash or power loss every record
// since the last checkpoint is replayed), under the commit lock.
func (c *Cluster) fullRecover() error {
	start := time.Now()
	startLSN, ok := readWALHeader(c.wal)
	if !ok {
		// A new log, or a header torn during a checkpoint (everything before
		// it was synced): start an empty log. Its records are of no use and
		// are dropped so that none can be mistaken for a new one.
		if err := c.wal.Truncate(walHeaderSize); err != nil {
			return err
		}
		if err := c.resetWAL(1); err != nil {
			return err
		}
		startLSN = 1
	}
	s := c.shm
	s.busy().Store(1)
	if err := c.sync(c.wal); err != nil {
		return err
	}
	n := 0
	end, next, err := scanWAL(c.wal, walHeaderSize, startLSN, func(r *record) error {
		n++
		return c.applyRecord(r)
	})
	if err != nil {
		return err
	}
	if err := c.cutWAL(end); err != nil {
		return err
	}
	s.word(shmMagicOff).Store(shmMagic)
	s.logEnd().Store(uint64(end))
	s.nextLSN().Store(next)
	s.evenBuckets()
	s.commitSeq().Add(1)
	s.blockVer().Add(1)
	s.poolsVer().Add(1)
	s.busy().Store(0)
	c.gcClients()
	if n > 0 {
		klog.InfoS("local cluster recovered", "dir", c.dir, "records", n, "nextLSN", next, "duration", time.Since(start))
	} else {
		klog.V(2).InfoS("local cluster opened clean", "dir", c.dir, "nextLSN", next)
	}
	return nil
}

// recoverIfBusy finishes the batch of a committer that died holding the
// commit lock: it replays that batch's valid records (they may be partly
// applied) and cuts off a torn tail. Called with the commit lock held.
func (c *Cluster) recoverIfBusy() error {
	s := c.shm
	if s.busy().Load() == 0 {
		return nil
	}
	if err := c.sync(c.wal); err != nil {
		return err
	}
	n := 0
	end, next, err := scanWAL(c.wal, int64(s.logEnd().Load()), s.nextLSN().Load(), func(r *record) error {
		n++
		return c.applyLogged(r)
	})
	if err != nil {
		return err
	}
	if err := c.cutWAL(end); err != nil {
		return err
	}
	s.logEnd().Store(uint64(end))
	s.nextLSN().Store(next)
	s.evenBuckets()
	s.commitSeq().Add(1)
	s.busy().Store(0)
	c.takeovers.Add(1)
	klog.InfoS("local cluster: finished a dead committer's batch", "dir", c.dir, "records", n)
	return nil
}

// applyLogged applies a durable record, holding its seqlock bucket odd
// meanwhile so that readers never see it half-applied.
func (c *Cluster) applyLogged(r *record) error {
	b := c.shm.bucket(r.poolID, r.oid)
	if b.Load()&1 == 0 {
		b.Add(1)
	}
	if err := c.applyRecord(r); err != nil {
		return err // the bucket stays odd: the next commit-lock holder repairs it
	}
	b.Add(1)
	return nil
}

// cutWAL truncates the log at end if it is longer, dropping a torn tail and
// whatever follows it: a record after a torn one was computed on a state
// that never became durable and must never be replayed, even if the next
// records end up aligned with it. The file regrows with zeros (preallocWAL).
func (c *Cluster) cutWAL(end int64) error {
	st, err := c.wal.Stat()
	if err != nil {
		return err
	}
	if st.Size() == end {
		return nil
	}
	if err := c.wal.Truncate(end); err != nil {
		return err
	}
	if c.opts.NoSync {
		return nil
	}
	return unix.Fsync(int(c.wal.Fd()))
}

// resetWAL starts an empty log at startLSN, keeping the file's blocks.
func (c *Cluster) resetWAL(startLSN uint64) error {
	if _, err := c.wal.WriteAt(encodeWALHeader(startLSN), 0); err != nil {
		return err
	}
	if c.opts.NoSync {
		return nil
	}
	return unix.Fdatasync(int(c.wal.Fd()))
}

// checkpoint makes every applied change durable in the object files, then
// empties the log. Called with the commit lock held.
func (c *Cluster) checkpoint() error {
	if !c.opts.NoSync {
		if err := unix.Syncfs(int(c.dirF.Fd())); err != nil {
			return err
		}
	}
	next := c.shm.nextLSN().Load()
	if err := c.resetWAL(next); err != nil {
		return err
	}
	c.shm.logEnd().Store(walHeaderSize)
	return nil
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
	b, err := os.ReadFile(c.statePath())
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("%s: %w", c.statePath(), err)
	}
	return st, nil
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

// newClient allocates this client's global id and address nonce.
func (c *Cluster) newClient(ctx context.Context) error {
	if err := c.lockCommit(ctx); err != nil {
		return err
	}
	defer c.unlockCommit()
	st, err := c.readState()
	if err != nil {
		return err
	}
	id := st.NextClientID
	st.NextClientID++
	if err := c.writeState(st); err != nil {
		return err
	}
	bl, err := c.readBlocklist()
	if err != nil {
		return err
	}
	for {
		var b [4]byte
		if _, err := crand.Read(b[:]); err != nil {
			return err
		}
		nonce := binary.LittleEndian.Uint32(b[:])
		addr := addrOf(nonce)
		if nonce == 0 || bl[addr] != 0 {
			continue
		}
		f, err := os.OpenFile(c.clientFile(nonce, ".lock"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return err
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			return err
		}
		c.aliveF = f
		c.nonce = nonce
		c.client = objstore.ClientInfo{ID: id, Addr: addr}
		return nil
	}
}

func addrOf(nonce uint32) string { return "local:0/" + strconv.FormatUint(uint64(nonce), 10) }

func (c *Cluster) clientFile(nonce uint32, suffix string) string {
	return filepath.Join(c.dir, "clients", strconv.FormatUint(uint64(nonce), 10)+suffix)
}

// clientAlive reports whether the client with this nonce still runs: it
// holds an exclusive flock on its lock file for its lifetime.
func (c *Cluster) clientAlive(nonce uint32) bool {
	if c.liveClient(nonce) != nil {
		return true
	}
	f, err := os.Open(c.clientFile(nonce, ".lock"))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK) || errors.Is(err, unix.EINTR)
	}
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}

// gcClients removes the files of clients that are gone and their watch
// registrations. Run by first-open recovery.
func (c *Cluster) gcClients() {
	ents, _ := os.ReadDir(filepath.Join(c.dir, "clients"))
	for _, e := range ents {
		name := e.Name()
		ext := filepath.Ext(name)
		n, err := strconv.ParseUint(name[:len(name)-len(ext)], 10, 32)
		if err != nil || ext != ".lock" {
			continue
		}
		if !c.clientAlive(uint32(n)) {
			os.Remove(filepath.Join(c.dir, "clients", name))
			os.Remove(c.clientFile(uint32(n), ".sock"))
		}
	}
	c.walkWatchRegs(func(path string, reg watchReg) {
		if !c.clientAlive(reg.nonce) {
			os.Remove(path)
		}
	})
}

// --- pools ---

func (c *Cluster) poolDir(id int64) string {
	return filepath.Join(c.dir, "pools", strconv.FormatInt(id, 10))
}

// refreshPools reloads the pool registry if another client changed it.
func (c *Cluster) refreshPools(force bool) error {
	v := c.shm.poolsVer().Load()
	c.poolMu.Lock()
	defer c.poolMu.Unlock()
	if !force && v == c.poolVer && len(c.poolsByID) > 0 {
		return nil
	}
	st, err := c.readState()
	if err != nil {
		return err
	}
	for _, pi := range st.Pools {
		if _, ok := c.poolsByID[pi.ID]; !ok {
			p := &pool{c: c, id: pi.ID, name: pi.Name, dir: c.poolDir(pi.ID)}
			c.poolsByID[pi.ID] = p
			c.poolsByNm[pi.Name] = p
		}
	}
	c.poolVer = v
	return nil
}

func (c *Cluster) lookupPool(name string, id int64) *pool {
	c.poolMu.Lock()
	defer c.poolMu.Unlock()
	if name != "" {
		return c.poolsByNm[name]
	}
	return c.poolsByID[id]
}

// Pool returns the pool with this name, creating it (with the next pool id,
// starting at 1) if it does not exist.
func (c *Cluster) Pool(ctx context.Context, name string) (objstore.Pool, error) {
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.exit()
	if name == "" {
		return nil, fmt.Errorf("pool name: %w", syscall.EINVAL)
	}
	if err := c.refreshPools(false); err != nil {
		return nil, err
	}
	if p := c.lookupPool(name, 0); p != nil {
		return p, nil
	}
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	if err := c.lockCommit(ctx); err != nil {
		return nil, err
	}
	defer c.unlockCommit()
	if err := c.refreshPools(true); err != nil {
		return nil, err
	}
	if p := c.lookupPool(name, 0); p != nil {
		return p, nil
	}
	st, err := c.readState()
	if err != nil {
		return nil, err
	}
	id := st.NextPoolID
	st.NextPoolID++
	if err := ensurePoolDirs(c.poolDir(id)); err != nil {
		return nil, err
	}
	st.Pools = append(st.Pools, PoolInfo{Name: name, ID: id})
	if err := c.writeState(st); err != nil {
		return nil, err
	}
	c.shm.poolsVer().Add(1)
	if err := c.refreshPools(true); err != nil {
		return nil, err
	}
	klog.V(1).InfoS("local cluster: pool created", "dir", c.dir, "pool", name, "id", id)
	return c.lookupPool(name, 0), nil
}

// PoolByID returns an existing pool by id (ENOENT if there is none).
func (c *Cluster) PoolByID(ctx context.Context, id int64) (objstore.Pool, error) {
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.exit()
	if err := c.refreshPools(false); err != nil {
		return nil, err
	}
	if p := c.lookupPool("", id); p != nil {
		return p, nil
	}
	if err := c.refreshPools(true); err != nil {
		return nil, err
	}
	if p := c.lookupPool("", id); p != nil {
		return p, nil
	}
	return nil, fmt.Errorf("pool %d: %w", id, syscall.ENOENT)
}

// ListPools returns every pool.
func (c *Cluster) ListPools(ctx context.Context) ([]PoolInfo, error) {
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.exit()
	st, err := c.readState()
	if err != nil {
		return nil, err
	}
	return st.Pools, nil
}

// --- blocklist ---

func (c *Cluster) blocklistPath() string { return filepath.Join(c.dir, "blocklist.json") }

func (c *Cluster) readBlocklist() (map[string]int64, error) {
	m := map[string]int64{}
	b, err := os.ReadFile(c.blocklistPath())
	if errors.Is(err, fs.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", c.blocklistPath(), err)
	}
	return m, nil
}

// blocklisted reports whether this client is blocklisted now. It costs two
// atomic loads unless the blocklist changed.
func (c *Cluster) blocklisted() bool {
	v := c.shm.blockVer().Load()
	if v == c.blVerSeen.Load() {
		return time.Now().UnixNano() < c.blUntil.Load()
	}
	c.blMu.Lock()
	defer c.blMu.Unlock()
	m, err := c.readBlocklist()
	if err != nil {
		// Fail closed: an unreadable blocklist must not let a fenced client write.
		return true
	}
	c.blUntil.Store(m[c.client.Addr])
	c.blVerSeen.Store(v)
	return time.Now().UnixNano() < m[c.client.Addr]
}

func blocklistedErr(op, oid string) error {
	return &objstore.OpError{Op: op, OID: oid, Err: objstore.ErrBlocklisted}
}

// Blocklist fences the client with address addr until expire from now
// (default one hour, like `ceph osd blocklist add`): from when Blocklist
// returns, every operation of that client fails with ESHUTDOWN and its
// watches are lost. A write of that client racing Blocklist is either
// committed before Blocklist returns or fails.
func (c *Cluster) Blocklist(ctx context.Context, addr string, expire time.Duration) error {
	if expire <= 0 {
		expire = time.Hour
	}
	if err := c.setBlocklist(ctx, addr, time.Now().Add(expire).UnixNano()); err != nil {
		return err
	}
	c.walkWatchRegs(func(path string, reg watchReg) {
		if addrOf(reg.nonce) == addr {
			os.Remove(path)
		}
	})
	klog.InfoS("local cluster: client blocklisted", "dir", c.dir, "addr", addr, "expire", expire)
	return nil
}

// Unblocklist removes addr from the blocklist.
func (c *Cluster) Unblocklist(ctx context.Context, addr string) error {
	if err := c.setBlocklist(ctx, addr, 0); err != nil {
		return err
	}
	klog.InfoS("local cluster: client unblocklisted", "dir", c.dir, "addr", addr)
	return nil
}

// ListBlocklist returns the blocklisted addresses and when their entries expire.
func (c *Cluster) ListBlocklist(ctx context.Context) (map[string]time.Time, error) {
	m, err := c.readBlocklist()
	if err != nil {
		return nil, err
	}
	now := time.Now().UnixNano()
	out := map[string]time.Time{}
	for a, e := range m {
		if e > now {
			out[a] = time.Unix(0, e)
		}
	}
	return out, nil
}

func (c *Cluster) setBlocklist(ctx context.Context, addr string, until int64) error {
	if err := c.enter(); err != nil {
		return err
	}
	defer c.exit()
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	if err := c.lockCommit(ctx); err != nil {
		return err
	}
	defer c.unlockCommit()
	m, err := c.readBlocklist()
	if err != nil {
		return err
	}
	now := time.Now().UnixNano()
	for a, e := range m {
		if e <= now {
			delete(m, a)
		}
	}
	if until == 0 {
		delete(m, addr)
	} else {
		m[addr] = until
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := c.writeFileAtomic(c.blocklistPath(), b); err != nil {
		return err
	}
	c.shm.blockVer().Add(1)
	return nil
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
