package blockdev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// The write-back ring: the write-back buffer in memory that outlives the
// serving process.
//
// With AckWriteBack a crash of the serving process loses the writes it
// acknowledged but had not made durable, unless they live somewhere the
// crash does not take. A Ring is a memfd (shared memory) that the node
// plugin creates per device and hands to the fuse-holder together with the
// device's /dev/fuse file: every acknowledged write-back request is
// recorded in it (sequence number, kind, offset, length, data, crc) before
// it is acknowledged, and the sequence number up to which everything is
// durable in the journal is recorded as journal futures complete. A
// successor gets the ring back from the holder, opens the device (lock
// takeover, journal replay), and re-journals every record past the durable
// sequence number, in order, before it serves (Open, rejournal): nothing
// acknowledged is lost, and the connection can be handed over.
//
// Why re-applying those records is right. Let w1..wm be the requests
// recorded, in journal order (the order of their records: both are made
// under Device.mu). The journal the successor replays holds a prefix
// w1..wp of them (journal futures complete in order; replay stops at the
// first missing entry), with p >= d, the durable sequence number the ring
// recorded (it is recorded only after the futures completed). The
// successor applies w1..wp (replay), then w(d+1)..wm (the ring). For any
// byte, the last request of that sequence covering it is the last of
// w1..wm covering it: if some request after wd covers it, the last such is
// in the ring's part, which comes last; otherwise the last one covering it
// is at or before wd, inside the replayed prefix, and nothing after it
// touches the byte. So the device ends as if w1..wm had been applied once,
// in order: re-applying a suffix in order over any prefix state gives the
// same result.
//
// A record is written completely before its request is acknowledged; a
// record torn by the crash (its crc does not match) ends the scan: its
// request was never acknowledged, and the kernel resends it (a resent
// request is safe after the replay: fuseloop's handover_linux.go).

// Ring layout: a 4 KiB header, then the data area, used as a circular log
// of records at monotonically growing logical offsets (physical = logical
// mod size). Header: magic u64, version u32, pad, data size u64, then two
// durable slots {gen u64, seq u64, off u64, crc u32} written alternately,
// so that a slot torn by a crash leaves the other one valid.
const (
	ringMagic       = 0x676e697262776a72 // "rjwbring"
	ringVersion     = 1
	ringHeaderSize  = 4096
	ringSlot0       = 64
	ringSlotSize    = 32
	ringRecMagic    = 0x31524257 // "WBR1"
	ringRecHeader   = 40
	ringPunchChunk  = 1 << 20
	ringKindWrite   = 1
	ringKindDiscard = 2
	ringKindZero    = 3
	ringKindWrap    = 4
)

// ErrRing: the ring is not usable (bad header, closed, a record too large
// for it).
var ErrRing = errors.New("write-back ring")

var ringCRC = crc32.MakeTable(crc32.Castagnoli)

// Ring is a write-back ring (see above). Its methods are safe for
// concurrent use.
type Ring struct {
	f    *os.File
	mem  []byte
	data []byte
	size uint64

	mu      sync.Mutex
	cond    *sync.Cond
	head    uint64 // logical offset of the next record
	nextSeq uint64
	durSeq  uint64 // every record up to durSeq is durable in the journal
	durOff  uint64 // logical offset where record durSeq+1 starts
	gen     uint64 // of the last durable slot written
	punched uint64 // logical offset up to which the data area was released
	closed  bool
	failed  error // the device failed: no record will become durable
}

// RingRecord is a recorded request (Pending).
type RingRecord struct {
	Seq    uint64
	Kind   int // ringKindWrite, ringKindDiscard, ringKindZero
	Off    int64
	Length int64
	Data   []byte // ringKindWrite only
	end    uint64 // logical offset after it
}

// RingSize is the data size of a ring that can hold maxDirty bytes of
// acknowledged, not yet durable writes: their records, and room for the
// largest FUSE write twice over (record headers, the space a wrap skips).
func RingSize(maxDirty int64) int64 {
	if maxDirty <= 0 {
		maxDirty = defaultMaxDirtyBytes
	}
	return maxDirty + 2*(1<<20+ringRecHeader) + 2*ringHeaderSize
}

// NewRing creates an empty ring of size data bytes in a new memfd named
// name (shown in /proc/PID/fd).
func NewRing(name string, size int64) (*Ring, error) {
	size = (size + 4095) &^ 4095
	if size < 2*ringHeaderSize {
		return nil, fmt.Errorf("%w: size %d too small", ErrRing, size)
	}
	fd, err := unix.MemfdCreate("csi-rbdj-wb-"+name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("%w: memfd_create: %v", ErrRing, err)
	}
	f := os.NewFile(uintptr(fd), "memfd:csi-rbdj-wb-"+name)
	if err := f.Truncate(ringHeaderSize + size); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: %v", ErrRing, err)
	}
	// Its size is fixed: whoever maps it (the successor) can trust it.
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: seal: %v", ErrRing, err)
	}
	r, err := mapRing(f)
	if err != nil {
		return nil, err
	}
	binary.LittleEndian.PutUint64(r.mem[0:], ringMagic)
	binary.LittleEndian.PutUint32(r.mem[8:], ringVersion)
	binary.LittleEndian.PutUint64(r.mem[16:], r.size)
	r.nextSeq = 1
	r.writeSlot()
	return r, nil
}

// OpenRing maps a ring another process created (from the holder): it
// finds the durable position and the records past it. f becomes the
// ring's (closed by Close, also on error).
func OpenRing(f *os.File) (*Ring, error) {
	var seals int
	rc, err := f.SyscallConn()
	if err == nil {
		cerr := rc.Control(func(fd uintptr) { seals, err = unix.FcntlInt(fd, unix.F_GET_SEALS, 0) })
		if cerr != nil {
			err = cerr
		}
	}
	if err != nil || seals&(unix.F_SEAL_SHRINK|unix.F_SEAL_GROW) != unix.F_SEAL_SHRINK|unix.F_SEAL_GROW {
		f.Close()
		return nil, fmt.Errorf("%w: not a sealed memfd (seals %#x, %v)", ErrRing, seals, err)
	}
	r, err := mapRing(f)
	if err != nil {
		return nil, err
	}
	if binary.LittleEndian.Uint64(r.mem[0:]) != ringMagic || binary.LittleEndian.Uint32(r.mem[8:]) != ringVersion ||
		binary.LittleEndian.Uint64(r.mem[16:]) != r.size {
		r.Close()
		return nil, fmt.Errorf("%w: bad header", ErrRing)
	}
	ok := false
	for i := 0; i < 2; i++ {
		gen, seq, off, valid := r.readSlot(i)
		if valid && (!ok || gen > r.gen) {
			r.gen, r.durSeq, r.durOff, ok = gen, seq, off, true
		}
	}
	if !ok {
		r.Close()
		return nil, fmt.Errorf("%w: no valid durable slot", ErrRing)
	}
	r.head, r.nextSeq, r.punched = r.durOff, r.durSeq+1, r.durOff
	recs := r.scan()
	if n := len(recs); n > 0 {
		r.head, r.nextSeq = recs[n-1].end, recs[n-1].Seq+1
	}
	return r, nil
}

func mapRing(f *os.File) (*Ring, error) {
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: %v", ErrRing, err)
	}
	if st.Size() < 2*ringHeaderSize || st.Size()%4096 != 0 {
		f.Close()
		return nil, fmt.Errorf("%w: size %d", ErrRing, st.Size())
	}
	var mem []byte
	rc, err := f.SyscallConn()
	if err == nil {
		cerr := rc.Control(func(fd uintptr) {
			mem, err = unix.Mmap(int(fd), 0, int(st.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		})
		if cerr != nil {
			err = cerr
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: mmap: %v", ErrRing, err)
	}
	r := &Ring{f: f, mem: mem, data: mem[ringHeaderSize:], size: uint64(st.Size() - ringHeaderSize)}
	r.cond = sync.NewCond(&r.mu)
	return r, nil
}

// File is the ring's memfd (for the holder; the ring keeps it).
func (r *Ring) File() *os.File { return r.f }

// Close unmaps the ring and closes its memfd; waiters fail.
func (r *Ring) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	r.cond.Broadcast()
	err := unix.Munmap(r.mem)
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (r *Ring) readSlot(i int) (gen, seq, off uint64, ok bool) {
	b := r.mem[ringSlot0+i*ringSlotSize : ringSlot0+(i+1)*ringSlotSize]
	if crc32.Checksum(b[:24], ringCRC) != binary.LittleEndian.Uint32(b[24:]) {
		return 0, 0, 0, false
	}
	return binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint64(b[8:]), binary.LittleEndian.Uint64(b[16:]), true
}

// writeSlot records (durSeq, durOff) in the slot not holding the newest
// valid state. Called with r.mu held (or before the ring is shared).
func (r *Ring) writeSlot() {
	r.gen++
	b := r.mem[ringSlot0+int(r.gen%2)*ringSlotSize : ringSlot0+int(r.gen%2+1)*ringSlotSize]
	binary.LittleEndian.PutUint64(b, r.gen)
	binary.LittleEndian.PutUint64(b[8:], r.durSeq)
	binary.LittleEndian.PutUint64(b[16:], r.durOff)
	binary.LittleEndian.PutUint32(b[24:], crc32.Checksum(b[:24], ringCRC))
}

func ringRecLen(n int) uint64 { return uint64(ringRecHeader+n+7) &^ 7 }

// record appends a request and returns its sequence number and the logical
// offset after it. It waits while the ring is full (the records not yet
// durable fill it). The caller holds Device.mu: records are in journal
// order.
func (r *Ring) record(kind int, off, length int64, data []byte) (seq, end uint64, err error) {
	need := ringRecLen(len(data))
	r.mu.Lock()
	defer r.mu.Unlock()
	if need+ringRecHeader > r.size/2 {
		return 0, 0, fmt.Errorf("%w: a %d-byte record does not fit a %d-byte ring", ErrRing, need, r.size)
	}
	for {
		if r.closed {
			return 0, 0, fmt.Errorf("%w: closed", ErrRing)
		}
		if r.failed != nil {
			return 0, 0, fmt.Errorf("%w: %w", ErrRing, r.failed)
		}
		pos := r.head
		if phys := pos % r.size; r.size-phys < need {
			pos += r.size - phys // wrap: the tail of the area is skipped
		}
		if pos+need-r.durOff <= r.size {
			if pos != r.head && r.size-r.head%r.size >= ringRecHeader {
				r.putHeader(r.head%r.size, ringKindWrap, 0, 0, 0, nil)
			}
			seq = r.nextSeq
			phys := pos % r.size
			copy(r.data[phys+ringRecHeader:], data)
			r.putHeader(phys, kind, seq, off, length, data)
			r.nextSeq++
			r.head = pos + need
			return seq, r.head, nil
		}
		r.cond.Wait()
	}
}

// putHeader writes a record header at phys; data is already in place
// after it (the crc covers both).
func (r *Ring) putHeader(phys uint64, kind int, seq uint64, off, length int64, data []byte) {
	h := r.data[phys : phys+ringRecHeader]
	binary.LittleEndian.PutUint32(h[0:], ringRecMagic)
	h[4] = byte(kind)
	h[5], h[6], h[7] = 0, 0, 0
	binary.LittleEndian.PutUint64(h[8:], seq)
	binary.LittleEndian.PutUint64(h[16:], uint64(off))
	binary.LittleEndian.PutUint64(h[24:], uint64(length))
	binary.LittleEndian.PutUint32(h[32:], uint32(len(data)))
	c := crc32.Update(crc32.Checksum(h[:36], ringCRC), ringCRC, data)
	binary.LittleEndian.PutUint32(h[36:], c)
}

// durable records that every request up to seq (whose record ends at
// logical offset end) is durable in the journal; their space is reused.
func (r *Ring) durable(seq, end uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || seq <= r.durSeq {
		return
	}
	r.durSeq, r.durOff = seq, end
	r.writeSlot()
	r.cond.Broadcast()
	r.punchLocked()
}

// fail wakes and fails the records waiting for room: the journal failed,
// nothing more becomes durable. What the ring holds stays for a successor.
func (r *Ring) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failed == nil {
		r.failed = err
	}
	r.cond.Broadcast()
}

// punchLocked gives the memory of whole durable chunks back (a ring costs
// about what is not yet durable, not its size).
func (r *Ring) punchLocked() {
	to := r.durOff &^ (ringPunchChunk - 1)
	if to <= r.punched || r.size < 4*ringPunchChunk {
		return
	}
	from := r.punched
	if to-from >= r.size {
		from = to - r.size
	}
	for from < to {
		phys := from % r.size
		n := min(to-from, r.size-phys)
		_ = unix.Fallocate(int(r.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(ringHeaderSize+phys), int64(n))
		from += n
	}
	r.punched = to
}

// scan returns the records past the durable position, in order: from
// durOff, each record must be valid and carry the next sequence number;
// the first that is not ends the scan (a torn record, or an older one).
func (r *Ring) scan() []RingRecord {
	var out []RingRecord
	pos, want := r.durOff, r.durSeq+1
	for pos-r.durOff < r.size {
		phys := pos % r.size
		if r.size-phys < ringRecHeader {
			pos += r.size - phys
			continue
		}
		h := r.data[phys : phys+ringRecHeader]
		if binary.LittleEndian.Uint32(h) != ringRecMagic {
			break
		}
		kind := int(h[4])
		if kind == ringKindWrap {
			pos += r.size - phys
			continue
		}
		seq := binary.LittleEndian.Uint64(h[8:])
		dlen := uint64(binary.LittleEndian.Uint32(h[32:]))
		if seq != want || phys+ringRecHeader+dlen > r.size || (kind != ringKindWrite && dlen != 0) || kind < ringKindWrite || kind > ringKindZero {
			break
		}
		data := r.data[phys+ringRecHeader : phys+ringRecHeader+dlen]
		if crc32.Update(crc32.Checksum(h[:36], ringCRC), ringCRC, data) != binary.LittleEndian.Uint32(h[36:]) {
			break // torn: never acknowledged
		}
		length := int64(binary.LittleEndian.Uint64(h[24:]))
		if kind == ringKindWrite && uint64(length) != dlen {
			break
		}
		pos += ringRecLen(int(dlen))
		out = append(out, RingRecord{Seq: seq, Kind: kind, Off: int64(binary.LittleEndian.Uint64(h[16:])), Length: length,
			Data: append([]byte(nil), data...), end: pos})
		want++
	}
	return out
}

// Pending returns the records past the durable position: requests that
// were acknowledged (or were about to be) but may not be in the journal.
func (r *Ring) Pending() []RingRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	return r.scan()
}

// RingStats: where the ring stands.
type RingStats struct {
	Size, Live       uint64 // data area, and the bytes not yet durable
	NextSeq, Durable uint64
}

// Stats returns the ring's position.
func (r *Ring) Stats() RingStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return RingStats{Size: r.size, Live: r.head - r.durOff, NextSeq: r.nextSeq, Durable: r.durSeq}
}
