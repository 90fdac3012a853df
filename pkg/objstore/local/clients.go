package local

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Client instances: ids allocated from the cluster state, a liveness flock
// per client, the clients of this process, and garbage collection of the
// files dead clients left behind.

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
