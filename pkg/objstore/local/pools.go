package local

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Pools: their directories, lookup by name or id, and creation.

// PoolInfo names a pool.
type PoolInfo struct {
	Name string `json:"name"`
	ID   int64  `json:"id"`
}

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
	klog.FromContext(ctx).V(1).Info("local cluster: pool created", "dir", c.dir, "pool", name, "id", id)
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
