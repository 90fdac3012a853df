package local

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// pool is a pool of a local cluster; it implements objstore.Pool.
type pool struct {
	c    *Cluster
	id   int64
	name string
	dir  string
}

var _ objstore.Pool = (*pool)(nil)

func (p *pool) ID() int64                   { return p.id }
func (p *pool) Name() string                { return p.name }
func (p *pool) Client() objstore.ClientInfo { return p.c.client }

// consistent runs fn until it ran while no committer changed objects of
// oid's seqlock bucket, and returns its result. Readers take no lock.
func (p *pool) consistent(ctx context.Context, oid string, fn func() error) error {
	b := p.c.shm.bucket(p.id, oid)
	for {
		s1, err := p.c.waitEven(ctx, b)
		if err != nil {
			return err
		}
		err = fn()
		if b.Load() == s1 {
			return err
		}
	}
}

// waitEven waits until the seqlock word is even (no apply in progress). A
// word that stays odd belongs to a committer that died: once the commit lock
// is free, waitEven runs the recovery that repairs it.
func (c *Cluster) waitEven(ctx context.Context, b *atomic.Uint64) (uint64, error) {
	start := time.Time{}
	for i := 0; ; i++ {
		v := b.Load()
		if v&1 == 0 {
			return v, nil
		}
		if i < 64 {
			runtime.Gosched()
			continue
		}
		if start.IsZero() {
			start = time.Now()
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if time.Since(start) > 20*time.Millisecond {
			c.tryRecover()
			start = time.Now()
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// tryRecover runs takeover recovery if the commit lock is free.
func (c *Cluster) tryRecover() {
	if !c.commitMu.tryLock() {
		return
	}
	ctx, cancel := context.WithTimeout(c.ctx, time.Millisecond)
	defer cancel()
	if err := flockCtx(ctx, int(c.commitLockF.Fd()), 2 /* LOCK_EX */); err != nil {
		c.commitMu.unlock()
		return
	}
	c.recoverIfBusy()
	c.unlockCommit()
}

// Read runs op's steps against oid.
func (p *pool) Read(ctx context.Context, oid string, op *objstore.ReadOp) error {
	c := p.c
	if err := c.enter(); err != nil {
		return &objstore.OpError{Op: "read", OID: oid, Err: err}
	}
	defer c.exit()
	if oid == "" || op == nil {
		return &objstore.OpError{Op: "read", OID: oid, Err: syscall.EINVAL}
	}
	if c.blocklisted() {
		return blocklistedErr("read", oid)
	}
	if id := op.Snap(); id != 0 {
		return p.readSnap(ctx, oid, id, op.Steps())
	}
	return p.readSteps(ctx, oid, op.Steps())
}

// readSteps runs read steps against the head of oid.
func (p *pool) readSteps(ctx context.Context, oid string, steps []*objstore.Step) error {
	c := p.c
	paths := p.paths(oid)
	return p.consistent(ctx, oid, func() error {
		st, err := openState(paths)
		if err != nil {
			return stepErr("read", oid, err)
		}
		defer st.closeFile()
		if !st.exists && len(steps) > 0 {
			return &objstore.OpError{Op: steps[0].OpName(), OID: oid, Err: syscall.ENOENT}
		}
		o := &opCtx{c: c, oid: oid, st: st, caller: c.client}
		for _, s := range steps {
			s.Result = nil
			if err := o.readStep(s); err != nil {
				return stepErr(s.OpName(), oid, err)
			}
		}
		return nil
	})
}

// List returns the names of the pool's objects that start with prefix.
func (p *pool) List(ctx context.Context, prefix string) ([]string, error) {
	c := p.c
	if err := c.enter(); err != nil {
		return nil, &objstore.OpError{Op: "list", Err: err}
	}
	defer c.exit()
	if c.blocklisted() {
		return nil, blocklistedErr("list", "")
	}
	f, err := os.Open(filepath.Join(p.dir, "data"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, &objstore.OpError{Op: "list", Err: err}
	}
	defer f.Close()
	var out []string
	for {
		if err := ctx.Err(); err != nil {
			return nil, &objstore.OpError{Op: "list", Err: err}
		}
		names, rerr := f.Readdirnames(1024)
		for _, n := range names {
			var oid string
			if strings.HasPrefix(n, "~") {
				var err error
				if oid, err = readLongName(p.dir, n); err != nil {
					continue // being created or removed
				}
			} else {
				var ok bool
				if oid, ok = unescapeName(n); !ok {
					continue
				}
			}
			// The store's snapshot objects are listed only when asked for.
			if strings.HasPrefix(oid, prefix) && (!hiddenOID(oid) || hiddenOID(prefix)) {
				out = append(out, oid)
			}
		}
		if rerr != nil || len(names) == 0 {
			break
		}
	}
	return out, nil
}
