//go:build ceph && pacific

package ceph

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ceph/go-ceph/rados"
	"k8s.io/klog/v2"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Errors callers branch on (with errors.Is); returned errors wrap them with
// context, and also wrap the syscall.Errno librados gave where there is one.
var (
	// ErrMonUnreachable: no monitor answered within the connect timeout.
	ErrMonUnreachable = errors.New("ceph monitors unreachable")
	// ErrAuth: the monitors refused the user id or key.
	ErrAuth = errors.New("ceph authentication failed")
	// ErrPoolNotFound: the pool does not exist.
	ErrPoolNotFound = errors.New("ceph pool not found")
	// ErrClosed: the Cluster was closed.
	ErrClosed = fmt.Errorf("ceph cluster connection closed: %w", syscall.ENOTCONN)
)

// Defaults of Config.
const (
	DefaultUser           = "admin"
	DefaultConnectTimeout = 10 * time.Second
	DefaultOpTimeout      = 30 * time.Second
)

// Config says how to reach a cluster and as whom. It holds a secret: its
// String and GoString methods leave the key out, and nothing in this package
// logs it or puts it in an error.
type Config struct {
	// ConfigFile is a ceph.conf to read (mon_host, keyring, ...). Optional
	// when MonHosts is set; /etc/ceph/ceph.conf is never read implicitly.
	ConfigFile string
	// MonHosts are monitor addresses ("10.0.0.1:6789", "[v2:...,v1:...]");
	// they override the file's mon_host.
	MonHosts []string
	// User is the cephx user id without "client." (default "admin").
	User string
	// Key is the user's cephx secret (base64, as `ceph auth get-key`
	// prints it). Empty: the keyring of ConfigFile is used.
	Key string
	// ConnectTimeout bounds the wait for the monitors (default 10 s).
	ConnectTimeout time.Duration
	// OpTimeout bounds every OSD and monitor operation (librados'
	// rados_osd_op_timeout and rados_mon_op_timeout; default 30 s), so
	// that no call hangs on an unreachable OSD.
	OpTimeout time.Duration
	// Options are further librados settings ("name": "value").
	Options map[string]string
}

// String describes c without its key.
func (c Config) String() string {
	key := ""
	if c.Key != "" {
		key = "<redacted>"
	}
	return fmt.Sprintf("{ConfigFile:%q MonHosts:%q User:%q Key:%s ConnectTimeout:%v OpTimeout:%v}",
		c.ConfigFile, c.MonHosts, c.User, key, c.ConnectTimeout, c.OpTimeout)
}

// GoString is String: %#v must not print the key either.
func (c Config) GoString() string { return "ceph.Config" + c.String() }

func (c Config) withDefaults() Config {
	if c.User == "" {
		c.User = DefaultUser
	}
	c.User = strings.TrimPrefix(c.User, "client.")
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.OpTimeout <= 0 {
		c.OpTimeout = DefaultOpTimeout
	}
	return c
}

// describe names the monitors and user for errors (never the key).
func (c Config) describe() string {
	mons := strings.Join(c.MonHosts, ",")
	if mons == "" {
		mons = "mon_host of " + c.ConfigFile
	}
	return fmt.Sprintf("monitors %s as client.%s", mons, c.User)
}

// checkKey rejects a key that is not a cephx secret before librados sees
// it (librados prints keys it cannot decode).
func checkKey(key string) error {
	b, err := base64.StdEncoding.DecodeString(key)
	// CryptoKey: u16 type, utime (u32 sec, u32 nsec), u16 length, secret
	if err != nil || len(b) < 12 || int(b[10])|int(b[11])<<8 != len(b)-12 {
		return fmt.Errorf("%w: the key is not a cephx secret (base64, as `ceph auth get-key` prints it)", ErrAuth)
	}
	return nil
}

// seconds formats d for a librados seconds option (at least 1).
func seconds(d time.Duration) string {
	return strconv.FormatInt(max(1, int64(math.Ceil(d.Seconds()))), 10)
}

// Cluster is one connected librados client instance. Its methods are safe
// for concurrent use.
type Cluster struct {
	conn   *rados.Conn
	cfg    Config // without the key
	client objstore.ClientInfo
	// log is the logger of Connect's context, for what belongs to no
	// call (watch callbacks).
	log klog.Logger

	// life guards closed; calls register in inflight under it (shared) so
	// that Close (exclusive) can wait for them before shutting down.
	life     sync.RWMutex
	closed   bool
	inflight sync.WaitGroup

	poolMu sync.Mutex
	pools  map[string]*Pool

	watchMu sync.Mutex
	watches map[*watch]struct{}

	aio *aioQueue // completions of object operations (aio.go)
}

// Connect connects to a cluster. It fails with an error wrapping
// ErrMonUnreachable when no monitor answers within cfg.ConnectTimeout and
// ErrAuth when the monitors refuse the credentials. If ctx ends first it
// returns ctx.Err() at once; the connection attempt is then abandoned in the
// background and ends within the connect timeout.
func Connect(ctx context.Context, cfg Config) (*Cluster, error) {
	cfg = cfg.withDefaults()
	if cfg.ConfigFile == "" && len(cfg.MonHosts) == 0 {
		return nil, errors.New("connect to ceph: no monitors (set a config file or monitor addresses)")
	}
	if cfg.Key != "" {
		if err := checkKey(cfg.Key); err != nil {
			return nil, fmt.Errorf("connect to ceph %s: %w", cfg.describe(), err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	conn, err := rados.NewConnWithUser(cfg.User)
	if err != nil {
		return nil, fmt.Errorf("connect to ceph: create handle: %w", err)
	}
	if err := configure(conn, cfg); err != nil {
		conn.Shutdown()
		return nil, fmt.Errorf("connect to ceph %s: %w", cfg.describe(), err)
	}
	cfg.Key = "" // not kept

	// rados_connect blocks for up to client_mount_timeout. Its goroutine
	// owns conn until it hands it over on result; if the caller has gone it
	// shuts conn down itself.
	result := make(chan error)
	abandoned := make(chan struct{})
	go func() {
		err := conn.Connect()
		select {
		case result <- err:
		case <-abandoned:
			conn.Shutdown()
		}
	}()
	select {
	case err = <-result:
	case <-ctx.Done():
		close(abandoned)
		return nil, ctx.Err()
	}
	if err != nil {
		conn.Shutdown()
		return nil, connectError(cfg, err)
	}

	c := &Cluster{conn: conn, cfg: cfg, log: klog.FromContext(ctx), pools: map[string]*Pool{}, watches: map[*watch]struct{}{}}
	c.client.ID = conn.GetInstanceID()
	addrs, err := conn.GetAddrs()
	if err != nil {
		conn.Shutdown()
		return nil, fmt.Errorf("connect to ceph %s: own address: %w", cfg.describe(), errnoErr(err))
	}
	c.client.Addr = normalizeAddr(addrs)
	if c.aio, err = newAIOQueue(); err != nil {
		conn.Shutdown()
		return nil, fmt.Errorf("connect to ceph %s: completion queue: %w", cfg.describe(), err)
	}
	c.log.V(2).Info("Connected to Ceph", "config", cfg.String(), "client", c.client.Name(), "addr", c.client.Addr)
	return c, nil
}

func configure(conn *rados.Conn, cfg Config) error {
	if cfg.ConfigFile != "" {
		if err := conn.ReadConfigFile(cfg.ConfigFile); err != nil {
			return fmt.Errorf("read config file %s: %w", cfg.ConfigFile, errnoErr(err))
		}
	}
	opts := []struct{ k, v string }{
		{"client_mount_timeout", seconds(cfg.ConnectTimeout)},
		{"rados_osd_op_timeout", seconds(cfg.OpTimeout)},
		{"rados_mon_op_timeout", seconds(cfg.OpTimeout)},
	}
	if len(cfg.MonHosts) > 0 {
		opts = append(opts, struct{ k, v string }{"mon_host", strings.Join(cfg.MonHosts, ",")})
	}
	for k, v := range cfg.Options {
		opts = append(opts, struct{ k, v string }{k, v})
	}
	for _, o := range opts {
		if err := conn.SetConfigOption(o.k, o.v); err != nil {
			return fmt.Errorf("set option %s=%s: %w", o.k, o.v, errnoErr(err))
		}
	}
	if cfg.Key != "" {
		// The key alone: no keyring file may supply another one.
		if err := conn.SetConfigOption("keyring", ""); err != nil {
			return fmt.Errorf("clear keyring option: %w", errnoErr(err))
		}
		if err := conn.SetConfigOption("key", cfg.Key); err != nil {
			return fmt.Errorf("%w: librados refused the key (errno %d)", ErrAuth, objstore.Errno(errnoErr(err)))
		}
	}
	return nil
}

// connectError explains a failed rados_connect.
func connectError(cfg Config, err error) error {
	err = errnoErr(err)
	what := fmt.Sprintf("connect to ceph %s", cfg.describe())
	switch objstore.Errno(err) {
	case syscall.ETIMEDOUT, syscall.ENOTCONN, syscall.ECONNREFUSED, syscall.EHOSTUNREACH:
		return fmt.Errorf("%s: %w: no monitor answered within %v (check the monitor addresses and that they are reachable): %w",
			what, ErrMonUnreachable, cfg.ConnectTimeout, err)
	case syscall.EACCES, syscall.EPERM, syscall.EKEYREJECTED:
		return fmt.Errorf("%s: %w: wrong user id or key, or the user lacks the capability to connect: %w", what, ErrAuth, err)
	case syscall.ENOENT:
		return fmt.Errorf("%s: %w: no key for the user (no key given and none in a keyring): %w", what, ErrAuth, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// errnoErr turns a go-ceph error into a syscall.Errno where it carries one.
func errnoErr(err error) error {
	var ce interface{ ErrorCode() int }
	if errors.As(err, &ce) {
		if code := ce.ErrorCode(); code < 0 {
			return syscall.Errno(-code)
		} else if code > 0 {
			return syscall.Errno(code)
		}
	}
	return err
}

// normalizeAddr turns a librados address ("[v2:127.0.0.1:0/123,v1:...]",
// "v1:127.0.0.1:0/123", "127.0.0.1:0/123") into the "IP:PORT/NONCE" form
// that blocklist entries and watcher listings use.
func normalizeAddr(a string) string {
	a = strings.TrimSpace(a)
	a = strings.TrimPrefix(a, "[")
	a = strings.TrimSuffix(a, "]")
	if i := strings.IndexByte(a, ','); i >= 0 {
		a = a[:i]
	}
	for _, p := range []string{"v1:", "v2:", "any:"} {
		a = strings.TrimPrefix(a, p)
	}
	return a
}

// Client identifies this client instance: its global id and address.
func (c *Cluster) Client() objstore.ClientInfo { return c.client }

// enter registers a call; exit must follow.
func (c *Cluster) enter() error {
	c.life.RLock()
	defer c.life.RUnlock()
	if c.closed {
		return ErrClosed
	}
	c.inflight.Add(1)
	return nil
}

func (c *Cluster) exit() { c.inflight.Done() }

// call runs fn, a blocking librados or librbd call, on behalf of ctx: if
// ctx ends first, call returns ctx.Err() at once and fn finishes in the
// background (every librados call is bounded by the op timeouts; Close
// waits for it). fn must communicate its results through variables the
// caller reads only when call returns nil.
func (c *Cluster) call(ctx context.Context, fn func()) error {
	_, err := c.run(ctx, fn)
	return err
}

// run is call that also tells whether fn was started (it is not when ctx
// is already done or c is closed).
func (c *Cluster) run(ctx context.Context, fn func()) (started bool, err error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := c.enter(); err != nil {
		return false, err
	}
	if ctx.Done() == nil {
		defer c.exit()
		fn()
		return true, nil
	}
	done := make(chan struct{})
	go func() {
		defer c.exit()
		defer close(done)
		fn()
	}()
	select {
	case <-done:
		return true, nil
	case <-ctx.Done():
		select {
		case <-done:
			return true, nil
		default:
			return true, ctx.Err()
		}
	}
}

// Call runs fn, a blocking call into librados or librbd on this cluster's
// handles, on behalf of ctx, as the object store's own calls run: it
// returns ctx.Err() at once if ctx ends first (fn then finishes in the
// background and Close waits for it), and ErrClosed after Close. fn must
// hand its results over through variables read only when Call returns nil.
func (c *Cluster) Call(ctx context.Context, fn func()) error { return c.call(ctx, fn) }

// Pool opens pool name. A missing pool is an error wrapping ErrPoolNotFound
// (and ENOENT). Pools are cached: every call for one name returns the same
// *Pool, valid until Close.
func (c *Cluster) Pool(ctx context.Context, name string) (objstore.Pool, error) {
	p, err := c.OpenPool(ctx, name)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// OpenPool is Pool with the concrete type.
func (c *Cluster) OpenPool(ctx context.Context, name string) (*Pool, error) {
	if name == "" {
		return nil, fmt.Errorf("ceph pool: empty name: %w", syscall.EINVAL)
	}
	c.poolMu.Lock()
	p := c.pools[name]
	c.poolMu.Unlock()
	if p != nil {
		return p, nil
	}
	var (
		ioctx *rados.IOContext
		err   error
	)
	if cerr := c.call(ctx, func() { ioctx, err = c.conn.OpenIOContext(name) }); cerr != nil {
		return nil, fmt.Errorf("open ceph pool %q: %w", name, cerr)
	}
	if err != nil {
		err = errnoErr(err)
		if errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("open ceph pool %q: %w: %w", name, ErrPoolNotFound, err)
		}
		return nil, fmt.Errorf("open ceph pool %q: %w", name, err)
	}
	np, err := newPool(c, name, ioctx)
	if err != nil {
		ioctx.Destroy()
		return nil, fmt.Errorf("open ceph pool %q: %w", name, err)
	}
	c.poolMu.Lock()
	defer c.poolMu.Unlock()
	if p := c.pools[name]; p != nil { // lost a race
		np.destroy()
		return p, nil
	}
	c.life.RLock()
	closed := c.closed
	c.life.RUnlock()
	if closed {
		np.destroy()
		return nil, ErrClosed
	}
	c.pools[name] = np
	return np, nil
}

// ListPools returns the names of the cluster's pools.
func (c *Cluster) ListPools(ctx context.Context) ([]string, error) {
	var (
		names []string
		err   error
	)
	if cerr := c.call(ctx, func() { names, err = c.conn.ListPools() }); cerr != nil {
		return nil, fmt.Errorf("list ceph pools: %w", cerr)
	}
	if err != nil {
		return nil, fmt.Errorf("list ceph pools: %w", errnoErr(err))
	}
	return names, nil
}

// Stats is the cluster's raw capacity.
type Stats struct {
	TotalBytes, UsedBytes, AvailBytes int64
	Objects                           int64
}

// Stats returns the cluster's raw capacity and usage. The monitors get
// these numbers from a mgr: without one they are all 0.
func (c *Cluster) Stats(ctx context.Context) (Stats, error) {
	var (
		st  rados.ClusterStat
		err error
	)
	if cerr := c.call(ctx, func() { st, err = c.conn.GetClusterStats() }); cerr != nil {
		return Stats{}, fmt.Errorf("ceph cluster stats: %w", cerr)
	}
	if err != nil {
		return Stats{}, fmt.Errorf("ceph cluster stats: %w", errnoErr(err))
	}
	return Stats{
		TotalBytes: int64(st.Kb) << 10, UsedBytes: int64(st.Kb_used) << 10,
		AvailBytes: int64(st.Kb_avail) << 10, Objects: int64(st.Num_objects),
	}, nil
}

// monCommand runs a monitor command (JSON) and returns its output.
func (c *Cluster) monCommand(ctx context.Context, what string, cmd []byte) ([]byte, error) {
	var (
		out    []byte
		status string
		err    error
	)
	if cerr := c.call(ctx, func() { out, status, err = c.conn.MonCommand(cmd) }); cerr != nil {
		return nil, fmt.Errorf("%s: %w", what, cerr)
	}
	if err != nil {
		if status != "" {
			return nil, fmt.Errorf("%s: %s: %w", what, strings.TrimSpace(status), errnoErr(err))
		}
		return nil, fmt.Errorf("%s: %w", what, errnoErr(err))
	}
	return out, nil
}

// Ping checks that the monitors answer.
func (c *Cluster) Ping(ctx context.Context) error {
	_, err := c.monCommand(ctx, "ceph health check", []byte(`{"prefix":"mon stat","format":"json"}`))
	return err
}

// Blocklist fences the client at addr ("IP:PORT/NONCE", as ClientInfo.Addr)
// for expire (the monitors' default, one hour, if expire <= 0): the OSDs
// reject its operations with ESHUTDOWN and drop its watches. When Blocklist
// returns, this client has the OSD map that carries the entry, so any
// operation it sends afterwards is ordered after the fence.
func (c *Cluster) Blocklist(ctx context.Context, addr string, expire time.Duration) error {
	a, err := json.Marshal(addr)
	if err != nil {
		return err
	}
	cmd := fmt.Sprintf(`{"prefix":"osd blocklist","blocklistop":"add","addr":%s`, a)
	if expire > 0 {
		// The monitor wants a JSON float: Go writes 600 for float64(600).
		cmd += `,"expire":` + strconv.FormatFloat(expire.Seconds(), 'f', 3, 64)
	}
	cmd += "}"
	if _, err := c.monCommand(ctx, "blocklist "+addr, []byte(cmd)); err != nil {
		return err
	}
	if cerr := c.call(ctx, func() { err = c.conn.WaitForLatestOSDMap() }); cerr != nil {
		return fmt.Errorf("blocklist %s: wait for the osd map: %w", addr, cerr)
	}
	if err != nil {
		return fmt.Errorf("blocklist %s: wait for the osd map: %w", addr, errnoErr(err))
	}
	klog.FromContext(ctx).V(1).Info("Blocklisted a Ceph client", "addr", addr, "expire", expire)
	return nil
}

// Unblocklist removes addr from the blocklist (no error if it is not on it).
func (c *Cluster) Unblocklist(ctx context.Context, addr string) error {
	a, err := json.Marshal(addr)
	if err != nil {
		return err
	}
	cmd := fmt.Sprintf(`{"prefix":"osd blocklist","blocklistop":"rm","addr":%s}`, a)
	_, err = c.monCommand(ctx, "unblocklist "+addr, []byte(cmd))
	return err
}

// ListBlocklist returns the blocklisted addresses and until when.
func (c *Cluster) ListBlocklist(ctx context.Context) (map[string]time.Time, error) {
	out, err := c.monCommand(ctx, "list blocklist", []byte(`{"prefix":"osd blocklist ls","format":"json"}`))
	if err != nil {
		return nil, err
	}
	var entries []struct {
		Addr  string `json:"addr"`
		Until string `json:"until"`
	}
	// The output is two JSON arrays: addresses, then ranges (16.2.15+).
	if err := json.NewDecoder(bytes.NewReader(out)).Decode(&entries); err != nil {
		return nil, fmt.Errorf("list blocklist: decode %q: %w", out, err)
	}
	m := make(map[string]time.Time, len(entries))
	for _, e := range entries {
		until, err := time.Parse("2006-01-02T15:04:05.999999-0700", e.Until)
		if err != nil {
			return nil, fmt.Errorf("list blocklist: entry %s: until %q: %w", e.Addr, e.Until, err)
		}
		m[normalizeAddr(e.Addr)] = until
	}
	return m, nil
}

// Close unregisters this client's watches, waits for calls in flight (at
// most the op timeout), releases the pools and disconnects. Later calls
// fail with ErrClosed.
func (c *Cluster) Close() error {
	c.life.Lock()
	if c.closed {
		c.life.Unlock()
		return nil
	}
	c.closed = true
	c.life.Unlock()

	c.watchMu.Lock()
	ws := make([]*watch, 0, len(c.watches))
	for w := range c.watches {
		ws = append(ws, w)
	}
	c.watchMu.Unlock()
	var errs []error
	for _, w := range ws {
		if err := w.close(context.Background()); err != nil {
			errs = append(errs, err)
		}
	}
	c.inflight.Wait()
	c.aio.stop() // every operation has completed and was released
	// Callbacks of the watches just removed may still be queued in librados.
	if err := c.conn.WatcherFlush(); err != nil {
		errs = append(errs, fmt.Errorf("flush watch callbacks: %w", errnoErr(err)))
	}
	c.poolMu.Lock()
	for name, p := range c.pools {
		p.destroy()
		delete(c.pools, name)
	}
	c.poolMu.Unlock()
	c.conn.Shutdown()
	return errors.Join(errs...)
}
