//go:build ceph && pacific

package storage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"strings"
	"sync"
	"syscall"

	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/librbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph"
	"k8s.io/klog/v2"
)

// CephBuilt reports whether this binary carries the ceph backend.
const CephBuilt = true

// cephBackend is the ceph Backend: clusters from the --ceph-config file,
// one librados connection per (cluster, monitors, user, key digest), made
// on first use and kept until Close.
type cephBackend struct {
	o   CephOptions
	log klog.Logger // o.Logger

	// ctx ends with Close: it cancels connection attempts in flight.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // connection attempts

	mu      sync.Mutex
	closed  bool
	conns   map[string]*cephConn
	retired []*cephStorage // forgotten connections, closed by Close
}

// cephConn is a connection, or the attempt to make it (done closes when
// st or err is set).
type cephConn struct {
	done chan struct{}
	st   *cephStorage
	err  error
}

// OpenCeph opens the ceph backend. It checks the cluster configuration
// (and the default credentials, if a directory is given) but connects to
// no cluster until a request needs one.
func OpenCeph(o CephOptions) (Backend, error) {
	if _, err := LoadCephConfig(o.ConfigFile); err != nil {
		return nil, err
	}
	if _, _, err := LoadCredentialsDir(o.CredentialsDir); err != nil {
		return nil, err
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = ceph.DefaultConnectTimeout
	}
	if o.OpTimeout <= 0 {
		o.OpTimeout = ceph.DefaultOpTimeout
	}
	log := o.Logger
	if log.GetSink() == nil {
		log = klog.Background()
	}
	// The connections (and their watch callbacks) log through log.
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), log))
	return &cephBackend{o: o, log: log, ctx: ctx, cancel: cancel, conns: map[string]*cephConn{}}, nil
}

func (b *cephBackend) Kind() string { return BackendCeph }

func (b *cephBackend) Clusters() ([]string, error) {
	cs, err := LoadCephConfig(b.o.ConfigFile)
	if err != nil {
		return nil, classify(ErrBadConfig, err)
	}
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.ClusterID
	}
	return ids, nil
}

// Storage connects to the cluster (or reuses the connection of the same
// cluster, monitors and credentials).
func (b *cephBackend) Storage(ctx context.Context, clusterID string, secrets map[string]string) (Storage, error) {
	cl, err := b.cluster(clusterID)
	if err != nil {
		return nil, err
	}
	creds, ok, err := CredentialsFromSecrets(secrets)
	if err != nil {
		return nil, fmt.Errorf("cluster %q (ceph): %w", cl.ClusterID, err)
	}
	if !ok {
		creds, ok, err = LoadCredentialsDir(b.o.CredentialsDir)
		if err != nil {
			return nil, fmt.Errorf("cluster %q (ceph): %w", cl.ClusterID, err)
		}
		if !ok {
			return nil, fmt.Errorf("%w for Ceph cluster %q: the request carries no secrets and the plugin has no default credentials", ErrNoCredentials, cl.ClusterID)
		}
	}
	digest := sha256.Sum256([]byte(creds.Key))
	key := strings.Join([]string{cl.ClusterID, strings.Join(cl.Monitors, ","), creds.User, hex.EncodeToString(digest[:])}, "\x00")

	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, fmt.Errorf("cluster %q (ceph): %w", cl.ClusterID, ceph.ErrClosed)
	}
	c := b.conns[key]
	if c == nil {
		c = &cephConn{done: make(chan struct{})}
		b.conns[key] = c
		b.wg.Add(1)
		go b.connect(key, c, cl, creds) // owned by b: Close waits for it
	}
	b.mu.Unlock()
	select {
	case <-c.done:
	case <-ctx.Done():
		return nil, fmt.Errorf("connect to Ceph cluster %q: %w", cl.ClusterID, ctx.Err())
	}
	if c.err != nil {
		return nil, c.err
	}
	return c.st, nil
}

// connect makes the connection of c. A failed attempt is forgotten, so the
// next request tries again.
func (b *cephBackend) connect(key string, c *cephConn, cl CephCluster, creds Credentials) {
	defer b.wg.Done()
	defer close(c.done)
	ctx, cancel := context.WithTimeout(b.ctx, b.o.ConnectTimeout+b.o.OpTimeout)
	defer cancel()
	conn, err := ceph.Connect(ctx, ceph.Config{
		MonHosts: cl.Monitors, User: creds.User, Key: creds.Key,
		ConnectTimeout: b.o.ConnectTimeout, OpTimeout: b.o.OpTimeout,
	})
	if err != nil {
		err = fmt.Errorf("cluster %q (ceph): %w", cl.ClusterID, err)
		switch {
		case errors.Is(err, ceph.ErrMonUnreachable):
			err = classify(ErrUnreachable, err)
		case errors.Is(err, ceph.ErrAuth):
			err = classify(ErrBadCredentials, err)
		}
		b.mu.Lock()
		delete(b.conns, key)
		b.mu.Unlock()
		c.err = err
		b.log.V(2).Info("Connecting to a Ceph cluster failed", "cluster", cl.ClusterID, "monitors", cl.Monitors, "user", creds.User, "err", err)
		return
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		_ = conn.Close()
		c.err = fmt.Errorf("cluster %q (ceph): %w", cl.ClusterID, ceph.ErrClosed)
		return
	}
	c.st = &cephStorage{c: conn, clusterID: cl.ClusterID, user: creds.User, poolScope: b.poolScope}
	b.log.Info("Connected to a Ceph cluster", "cluster", cl.ClusterID, "monitors", cl.Monitors, "user", creds.User, "client", conn.Client().Name(), "addr", conn.Client().Addr)
}

// Forget drops st from the cache: the next request for its cluster and
// credentials connects anew. The node server calls it when the cluster
// fenced this client (a takeover blocklisted its address: every operation
// fails with ESHUTDOWN from then on); devices still using st fail on their
// own, and st is closed by Close.
func (b *cephBackend) Forget(st Storage) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for key, c := range b.conns {
		if c.st != nil && Storage(c.st) == st {
			delete(b.conns, key)
			b.retired = append(b.retired, c.st)
			b.log.Info("Dropped a fenced Ceph connection; the next request connects anew", "cluster", c.st.clusterID, "user", c.st.user, "addr", c.st.c.Client().Addr)
		}
	}
}

// Close cancels connection attempts and closes every connection (their
// watches, and with them the images this process still has open, go too).
func (b *cephBackend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	b.cancel()
	b.wg.Wait()
	b.mu.Lock()
	sts := b.retired
	for _, c := range b.conns {
		if c.st != nil {
			sts = append(sts, c.st)
		}
	}
	b.conns, b.retired = nil, nil
	b.mu.Unlock()
	var errs []error
	for _, st := range sts {
		if err := st.c.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close connection to Ceph cluster %q: %w", st.clusterID, err))
		}
	}
	return errors.Join(errs...)
}

// cephStorage is Storage on one connected Ceph cluster: pools through
// librados, image management through librbd.
type cephStorage struct {
	c         *ceph.Cluster
	clusterID string
	user      string
	// poolScope returns the pools the configuration limits listing to
	// (nil: all). Read anew each time, as the rest of the configuration.
	poolScope func(clusterID string) ([]string, error)
}

func (s *cephStorage) Backend() string   { return BackendCeph }
func (s *cephStorage) ClusterID() string { return s.clusterID }

func (s *cephStorage) Pool(ctx context.Context, name string) (objstore.Pool, error) {
	p, err := s.c.Pool(ctx, name)
	if errors.Is(err, ceph.ErrPoolNotFound) {
		return nil, fmt.Errorf("pool %q of Ceph cluster %q: %w", name, s.clusterID, ErrPoolNotFound)
	}
	if err != nil {
		return nil, s.opErr(err)
	}
	return p, nil
}

// EnsurePool opens a pool: the ceph backend never creates pools.
func (s *cephStorage) EnsurePool(ctx context.Context, name string) (objstore.Pool, error) {
	return s.Pool(ctx, name)
}

func (s *cephStorage) ListPools(ctx context.Context) ([]string, error) {
	if s.poolScope != nil {
		// A configured pool that is gone is skipped where it is opened,
		// as any pool deleted while a listing runs.
		if scope, err := s.poolScope(s.clusterID); err != nil || scope != nil {
			return scope, err
		}
	}
	names, err := s.c.ListPools(ctx)
	if err != nil {
		return nil, s.opErr(err)
	}
	return names, nil
}

// poolScope returns the pools the --ceph-config file limits listing to on
// clusterID (nil: no limit).
func (b *cephBackend) poolScope(clusterID string) ([]string, error) {
	cl, err := b.cluster(clusterID)
	return cl.Pools, err
}

// cluster reads the --ceph-config file (anew: it is a mounted ConfigMap)
// and returns the entry of clusterID.
func (b *cephBackend) cluster(clusterID string) (CephCluster, error) {
	cs, err := LoadCephConfig(b.o.ConfigFile)
	if err != nil {
		return CephCluster{}, classify(ErrBadConfig, err)
	}
	return findCephCluster(b.o.ConfigFile, cs, clusterID)
}

func (s *cephStorage) CreateImage(ctx context.Context, pool objstore.Pool, name string, size int64, o image.CreateOptions) error {
	return s.opErr(librbd.Create(ctx, pool, name, size, o))
}

func (s *cephStorage) RemoveImage(ctx context.Context, pool objstore.Pool, name string) error {
	return s.removeImage(ctx, pool, name) // clone_ceph.go
}

func (s *cephStorage) ImageInfo(ctx context.Context, pool objstore.Pool, name string) (ImageInfo, error) {
	info, err := librbd.GetInfo(ctx, pool, name)
	if err != nil {
		return ImageInfo{}, s.opErr(err)
	}
	return ImageInfo{ID: info.ID, Size: info.Size, Order: info.Order, Features: info.Features &^ clsrbd.FeaturesInternal,
		JournalOrder: info.JournalOrder, JournalSplayWidth: info.JournalSplayWidth}, nil
}

func (s *cephStorage) ImageUsers(ctx context.Context, pool objstore.Pool, name string) ([]objstore.WatcherInfo, error) {
	users, err := imageUsers(ctx, pool, name)
	return users, s.opErr(err)
}

// ExpandImage grows the image through librbd, which proxies the resize to
// the lock owner when another client holds the lock (a node serving the
// volume: it journals the resize as librbd's owner does) and otherwise
// takes the lock and resizes (and journals) it itself.
func (s *cephStorage) ExpandImage(ctx context.Context, pool objstore.Pool, name string, size int64) error {
	info, err := librbd.GetInfo(ctx, pool, name)
	if err != nil {
		return s.opErr(fmt.Errorf("expand image %q: %w", name, err))
	}
	if err := checkGrow(name, info.Size, size); err != nil || size == info.Size {
		return err
	}
	return s.opErr(librbd.Resize(ctx, pool, name, size))
}

// Available is the cluster's raw free space (the monitors learn it from a
// mgr: 0 when the cluster runs none).
func (s *cephStorage) Available(ctx context.Context) (int64, error) {
	st, err := s.c.Stats(ctx)
	if err != nil {
		return 0, s.opErr(err)
	}
	return st.AvailBytes, nil
}

func (s *cephStorage) Health(ctx context.Context) error { return s.opErr(s.c.Ping(ctx)) }

func (s *cephStorage) Fencer() exclusivelock.Fencer { return s.c }

// opErr names the user in a permission error (what lacks the capability).
func (s *cephStorage) opErr(err error) error {
	if err == nil {
		return nil
	}
	switch objstore.Errno(err) {
	case syscall.EPERM, syscall.EACCES:
		return fmt.Errorf("cluster %q (ceph), client.%s: %w", s.clusterID, s.user, err)
	}
	return err
}

// Connections reports the cached connections (and attempts) by cluster and
// state.
func (b *cephBackend) Connections() []ConnectionCount {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []ConnectionCount
	for key, c := range b.conns {
		cluster, _, _ := strings.Cut(key, "\x00")
		state := ConnConnecting
		select {
		case <-c.done:
			if c.st == nil {
				continue // failed: forgotten at once
			}
			state = ConnConnected
		default:
		}
		out = append(out, ConnectionCount{Cluster: cluster, State: state, Count: 1})
	}
	for _, st := range b.retired {
		out = append(out, ConnectionCount{Cluster: st.clusterID, State: ConnRetired, Count: 1})
	}
	return out
}
