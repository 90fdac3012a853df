//go:build linux

package fuseloop

import (
	"encoding/binary"
	"fmt"
	"syscall"
)

// The part of the FUSE wire protocol (include/uapi/linux/fuse.h) a loop
// device over one file needs. The package speaks it itself, rather than
// through go-fuse, because a connection handed over to a successor process
// needs three things go-fuse does not give: node ids and file handles fixed
// in advance (the kernel keeps using the ones the dead server handed out),
// serving a connection whose INIT was answered by another process, and
// writing FUSE_NOTIFY_RESEND before the first read.

var le = binary.LittleEndian

// Opcodes (enum fuse_opcode).
const (
	opcLookup      = 1
	opcForget      = 2
	opcGetattr     = 3
	opcSetattr     = 4
	opcOpen        = 14
	opcRead        = 15
	opcWrite       = 16
	opcStatfs      = 17
	opcRelease     = 18
	opcFsync       = 20
	opcFlush       = 25
	opcInit        = 26
	opcOpendir     = 27
	opcReleasedir  = 29
	opcInterrupt   = 36
	opcDestroy     = 38
	opcBatchForget = 42
	opcFallocate   = 43
	opcMax         = 64 // counted apart: every opcode from here on
)

var opcNames = map[uint32]string{
	opcLookup: "LOOKUP", opcForget: "FORGET", opcGetattr: "GETATTR", opcSetattr: "SETATTR",
	opcOpen: "OPEN", opcRead: "READ", opcWrite: "WRITE", opcStatfs: "STATFS", opcRelease: "RELEASE",
	opcFsync: "FSYNC", opcFlush: "FLUSH", opcInit: "INIT", opcOpendir: "OPENDIR",
	opcReleasedir: "RELEASEDIR", opcInterrupt: "INTERRUPT", opcDestroy: "DESTROY",
	opcBatchForget: "BATCH_FORGET", opcFallocate: "FALLOCATE",
}

func opcName(op uint32) string {
	if n, ok := opcNames[op]; ok {
		return n
	}
	if op >= opcMax {
		return "other"
	}
	return fmt.Sprintf("opcode-%d", op)
}

// Notification codes, written in fuse_out_header.error with unique 0.
const (
	notifyInvalInode = 2
	notifyResend     = 7
)

// INIT flags (64 bits: flags | flags2<<32, flags2 valid with initExt).
const (
	capAsyncRead        = uint64(1) << 0
	capBigWrites        = uint64(1) << 5
	capAsyncDIO         = uint64(1) << 15
	capParallelDirops   = uint64(1) << 18
	capMaxPages         = uint64(1) << 22
	capNoOpendirSupport = uint64(1) << 24
	capInitExt          = uint64(1) << 30
	capHasResend        = uint64(1) << 39
)

// Open flags in fuse_open_out.
const (
	fopenDirectIO             = 1 << 0
	fopenParallelDirectWrites = 1 << 6
)

const (
	fattrSize = 1 << 3 // fuse_setattr_in.valid

	// uniqueResend is set by the kernel in the unique of a request it hands
	// out again after FUSE_NOTIFY_RESEND (FUSE_UNIQUE_RESEND). The reply
	// carries the unique as received, bit included.
	uniqueResend = uint64(1) << 63
)

// Sizes of the structs used.
const (
	inHeaderSize  = 40
	outHeaderSize = 16
	attrSize      = 88
	entryOutSize  = 40 + attrSize
	attrOutSize   = 16 + attrSize
	openOutSize   = 16
	writeOutSize  = 8
	statfsOutSize = 80
	initOutSize   = 64
	readInSize    = 40
	writeInSize   = 40
	fsyncInSize   = 16
	fallocInSize  = 32
	setattrInSize = 88
	getattrInSize = 16
	openInSize    = 8
)

// Protocol limits of this server.
const (
	protoMajor    = 7
	minKernMinor  = 31 // Linux 5.10; fuse_init_out and the structs above as used here
	maxProtoMinor = 45 // the newest minor this server was tested with
	maxWrite      = 1 << 20
	maxPages      = maxWrite / 4096
	maxBackground = 64
	congestion    = 48
	// readBufSize holds the largest request: fuse_in_header, fuse_write_in
	// and maxWrite bytes (the kernel refuses smaller read buffers).
	readBufSize = maxWrite + 4096
	// payloadOff is where a READ reply's data goes in the request buffer
	// (the READ request itself is much shorter).
	payloadOff = 4096
)

// The fixed node ids and file handle of the one-file filesystem. They are
// part of the handover contract (Meta.Layout): a successor answers the ids
// the dead server handed out, so they never depend on the order of
// requests.
const (
	rootNodeID = 1 // FUSE_ROOT_ID
	diskNodeID = 2
	diskFH     = 7
	// layoutVersion names this set of ids and the meaning of Meta.
	layoutVersion = 1
)

// inHeader is the decoded fuse_in_header.
type inHeader struct {
	len    uint32
	opcode uint32
	unique uint64
	nodeid uint64
}

func parseInHeader(b []byte) (inHeader, bool) {
	if len(b) < inHeaderSize {
		return inHeader{}, false
	}
	h := inHeader{
		len:    le.Uint32(b[0:]),
		opcode: le.Uint32(b[4:]),
		unique: le.Uint64(b[8:]),
		nodeid: le.Uint64(b[16:]),
	}
	return h, int(h.len) == len(b)
}

// outHeader encodes a fuse_out_header for a reply of bodyLen bytes.
func outHeader(b []byte, unique uint64, errno syscall.Errno, bodyLen int) {
	le.PutUint32(b[0:], uint32(outHeaderSize+bodyLen))
	le.PutUint32(b[4:], uint32(-int32(errno)))
	le.PutUint64(b[8:], unique)
}

// notifyHeader encodes the header of a notification (unique 0, the code in
// the error field).
func notifyHeader(b []byte, code int32, bodyLen int) {
	le.PutUint32(b[0:], uint32(outHeaderSize+bodyLen))
	le.PutUint32(b[4:], uint32(code))
	le.PutUint64(b[8:], 0)
}

// putAttr encodes a fuse_attr.
func putAttr(b []byte, ino uint64, mode uint32, size int64) {
	le.PutUint64(b[0:], ino)
	le.PutUint64(b[8:], uint64(size))
	le.PutUint64(b[16:], uint64(size)/512) // blocks
	le.PutUint32(b[60:], mode)
	le.PutUint32(b[64:], 1) // nlink
	le.PutUint32(b[80:], 4096)
}

// putValid encodes a (seconds, nanoseconds) validity of one hour.
func putValid(b []byte, nsecOff int) {
	le.PutUint64(b, 3600)
	le.PutUint32(b[nsecOff:], 0)
}

// InitParams are the parameters of a connection negotiated in INIT, which
// the kernel sends once per connection: a successor gets them from the
// holder.
type InitParams struct {
	Major uint32 `json:"major"`
	Minor uint32 `json:"minor"` // the minor both sides use (min of kernel's and ours)
	// KernelMinor and KernelFlags are what the kernel offered.
	KernelMinor  uint32 `json:"kernelMinor"`
	KernelFlags  uint64 `json:"kernelFlags"`
	Flags        uint64 `json:"flags"` // negotiated (replied) flags
	MaxWrite     uint32 `json:"maxWrite"`
	MaxPages     uint16 `json:"maxPages"`
	MaxReadahead uint32 `json:"maxReadahead"`
}

// HasResend reports whether the kernel supports FUSE_NOTIFY_RESEND (Linux
// 6.9 and later): without it a request read by a dead server is never
// answered, so such a connection must not be adopted.
func (p InitParams) HasResend() bool { return p.KernelFlags&capHasResend != 0 }

// negotiateInit decodes a fuse_init_in and builds the fuse_init_out body.
func negotiateInit(body []byte) (InitParams, []byte, error) {
	if len(body) < 16 {
		return InitParams{}, nil, errShortInit
	}
	p := InitParams{
		Major:        le.Uint32(body[0:]),
		KernelMinor:  le.Uint32(body[4:]),
		MaxReadahead: le.Uint32(body[8:]),
		KernelFlags:  uint64(le.Uint32(body[12:])),
	}
	if p.KernelFlags&capInitExt != 0 && len(body) >= 20 {
		p.KernelFlags |= uint64(le.Uint32(body[16:])) << 32
	}
	if p.Major != protoMajor || p.KernelMinor < minKernMinor {
		return p, nil, errUnsupportedKernel
	}
	p.Minor = min(p.KernelMinor, maxProtoMinor)
	want := capAsyncRead | capBigWrites | capAsyncDIO | capParallelDirops | capMaxPages |
		capNoOpendirSupport | capInitExt | capHasResend
	p.Flags = want & p.KernelFlags
	p.MaxWrite = maxWrite
	p.MaxPages = maxPages
	p.MaxReadahead = min(p.MaxReadahead, maxWrite)
	o := make([]byte, initOutSize)
	le.PutUint32(o[0:], protoMajor)
	le.PutUint32(o[4:], p.Minor)
	le.PutUint32(o[8:], p.MaxReadahead)
	le.PutUint32(o[12:], uint32(p.Flags))
	le.PutUint16(o[16:], maxBackground)
	le.PutUint16(o[18:], congestion)
	le.PutUint32(o[20:], p.MaxWrite)
	le.PutUint32(o[24:], 1) // time_gran
	le.PutUint16(o[28:], p.MaxPages)
	le.PutUint32(o[32:], uint32(p.Flags>>32))
	return p, o, nil
}
