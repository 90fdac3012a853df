package local

import (
	"context"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// The commit lock and recovery: a committer that died holding the commit
// lock leaves a write-ahead log behind that the next one replays.

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
	n, next, err := c.replayWAL(walHeaderSize, startLSN, c.applyRecord)
	if err != nil {
		return err
	}
	s.word(shmMagicOff).Store(shmMagic)
	s.commitSeq().Add(1)
	s.blockVer().Add(1)
	s.poolsVer().Add(1)
	s.busy().Store(0)
	c.gcClients()
	if n > 0 {
		c.log.Info("local cluster recovered", "dir", c.dir, "records", n, "nextLSN", next, "duration", time.Since(start))
	} else {
		c.log.V(2).Info("local cluster opened clean", "dir", c.dir, "nextLSN", next)
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
	n, _, err := c.replayWAL(int64(s.logEnd().Load()), s.nextLSN().Load(), c.applyLogged)
	if err != nil {
		return err
	}
	s.commitSeq().Add(1)
	s.busy().Store(0)
	c.takeovers.Add(1)
	c.log.Info("local cluster: finished a dead committer's batch", "dir", c.dir, "records", n)
	return nil
}

// replayWAL syncs the log and applies its valid records from offset off
// (the first has sequence number lsn) with apply, cuts off what follows
// them (a torn tail) and publishes the log's new end and next sequence
// number. It returns how many records it applied and that next number.
func (c *Cluster) replayWAL(off int64, lsn uint64, apply func(*record) error) (n int, next uint64, err error) {
	if err := c.sync(c.wal); err != nil {
		return 0, 0, err
	}
	end, next, err := scanWAL(c.wal, off, lsn, func(r *record) error {
		n++
		return apply(r)
	})
	if err != nil {
		return n, 0, err
	}
	if err := c.cutWAL(end); err != nil {
		return n, 0, err
	}
	s := c.shm
	s.logEnd().Store(uint64(end))
	s.nextLSN().Store(next)
	s.evenBuckets()
	return n, next, nil
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
