package clslock

import (
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/classtest"
)

// memCluster holds objects and runs the lock class at a settable time, as
// the OSD (and objstore/local) do: a read-only method on a missing object
// is ENOENT without running, a writing method in a read is EINVAL.
type memCluster struct {
	*classtest.Pool
	now time.Time
}

func newMemCluster() *memCluster {
	c := &memCluster{now: time.Unix(1_700_000_000, 0)}
	c.Pool = classtest.NewPool(map[string]objstore.Class{className: ClassWithClock(func() time.Time { return c.now })})
	c.OSD = true
	return c
}

// client returns a handle of client id with address addr: the Reader and
// the Operate the client calls are tested with.
func (c *memCluster) client(id uint64, addr string) *classtest.Pool {
	return c.As(objstore.ClientInfo{ID: id, Addr: addr})
}
