package local

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"k8s.io/klog/v2"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// The blocklist (Ceph's OSD blocklist): fenced client addresses with an
// expiry, kept in blocklist.json; a blocklisted client's operations fail
// with ESHUTDOWN.

func (c *Cluster) blocklistPath() string { return filepath.Join(c.dir, "blocklist.json") }

func (c *Cluster) readBlocklist() (map[string]int64, error) {
	m := map[string]int64{}
	if err := readJSONFile(c.blocklistPath(), &m, func(err error) error { return fmt.Errorf("%s: %w", c.blocklistPath(), err) }); err != nil {
		return nil, err
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
	klog.FromContext(ctx).Info("local cluster: client blocklisted", "dir", c.dir, "addr", addr, "expire", expire)
	return nil
}

// Unblocklist removes addr from the blocklist.
func (c *Cluster) Unblocklist(ctx context.Context, addr string) error {
	if err := c.setBlocklist(ctx, addr, 0); err != nil {
		return err
	}
	klog.FromContext(ctx).Info("local cluster: client unblocklisted", "dir", c.dir, "addr", addr)
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
