package local

import (
	"fmt"
	"hash/fnv"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The shared-memory file (<dir>/shm) is mapped MAP_SHARED by every client of
// the directory, so its words are coherent across processes. It is not
// durable state: the first client to open the directory after every other
// client has gone (see Open) rebuilds it from the log.
const (
	shmMagicOff     = 0
	shmBusyOff      = 8  // 1 while a committer is between its first log write and the end of its apply
	shmLogEndOff    = 16 // end of the applied part of the log
	shmNextLSNOff   = 24 // LSN of the next record
	shmCommitSeqOff = 32 // bumped after every applied batch
	shmBlockVerOff  = 40 // bumped on every blocklist change
	shmPoolsVerOff  = 48 // bumped on every pool registry change
	shmBucketsOff   = 4096
	shmBuckets      = 4096 // seqlock words, one per hash bucket of object names
	shmSize         = shmBucketsOff + 8*shmBuckets
	shmMagic        = 0x314d48534a424452 // "RDBJSHM1"
)

type shm struct {
	mem []byte
}

func openShm(path string) (*shm, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() < shmSize {
		if err := f.Truncate(shmSize); err != nil {
			return nil, err
		}
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, shmSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %s: %w", path, err)
	}
	return &shm{mem: mem}, nil
}

func (s *shm) word(off int) *atomic.Uint64 {
	return (*atomic.Uint64)(unsafe.Pointer(&s.mem[off]))
}

func (s *shm) busy() *atomic.Uint64      { return s.word(shmBusyOff) }
func (s *shm) logEnd() *atomic.Uint64    { return s.word(shmLogEndOff) }
func (s *shm) nextLSN() *atomic.Uint64   { return s.word(shmNextLSNOff) }
func (s *shm) commitSeq() *atomic.Uint64 { return s.word(shmCommitSeqOff) }
func (s *shm) blockVer() *atomic.Uint64  { return s.word(shmBlockVerOff) }
func (s *shm) poolsVer() *atomic.Uint64  { return s.word(shmPoolsVerOff) }

// bucket returns the seqlock word guarding object oid of pool poolID: odd
// while a committer applies a change to an object of the bucket.
func (s *shm) bucket(poolID int64, oid string) *atomic.Uint64 {
	h := fnv.New64a()
	var b [8]byte
	for i := range b {
		b[i] = byte(uint64(poolID) >> (8 * i))
	}
	h.Write(b[:])
	h.Write([]byte(oid))
	return s.word(shmBucketsOff + 8*int(h.Sum64()%shmBuckets))
}

// evenBuckets makes every odd (abandoned) bucket even again; used by
// recovery after it has repaired what a dead committer left half-applied.
func (s *shm) evenBuckets() {
	for i := 0; i < shmBuckets; i++ {
		w := s.word(shmBucketsOff + 8*i)
		if v := w.Load(); v&1 == 1 {
			w.CompareAndSwap(v, v+1)
		}
	}
}

func (s *shm) close() error {
	if s.mem == nil {
		return nil
	}
	err := unix.Munmap(s.mem)
	s.mem = nil
	return err
}
