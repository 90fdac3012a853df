// Package fuseholder keeps FUSE connections alive while the process that
// serves them restarts.
//
// The kernel aborts a FUSE connection when the last open file of /dev/fuse
// for it is closed, which happens when the serving process dies. The holder
// is a separate, tiny process that keeps one more reference to each
// connection's open file (a dup received over a unix socket with
// SCM_RIGHTS), together with the opaque metadata the successor needs to
// serve it (for fuseloop: volume, loop device, negotiated INIT parameters,
// fixed node ids). A successor asks for the file back (Get), serves it, and
// the holder keeps its copy; when the volume goes away the plugin Drops it.
//
// The holder holds no credentials and no data of its own (a write-back
// ring, below, is memory it keeps open, never maps), never reads or writes a
// FUSE file, and answers one request per connection, each bounded by a
// deadline: a stuck or malicious client cannot stall it, and a client never
// waits for a stuck holder longer than its own timeout.
//
// Wire protocol (unix SOCK_SEQPACKET, one request and one response per
// connection): a JSON request message, with one file descriptor attached
// (SCM_RIGHTS) for "put"; a JSON response, with the file attached for a
// successful "get".
//
// A "put" may attach a second file: a write-back ring (a sealed memfd,
// pkg/blockdev wbring.go) that holds the writes the plugin acknowledged
// before they were durable; the holder keeps it with the connection and a
// "get" returns both (response "ring": true), so that a successor
// re-journals them before it serves. The holder never reads or writes the
// ring either. Messages with one file are the format before rings and
// still work both ways; a client that expects one file refuses an entry
// with a ring (Get), so that a ring is never silently left behind.
package fuseholder

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"
)

// Errors callers branch on.
var (
	// ErrUnavailable: no holder answers at the socket (missing, dead, slow).
	ErrUnavailable = errors.New("fuseholder: holder unavailable")
	// ErrNotFound: the holder has no connection under that key.
	ErrNotFound = errors.New("fuseholder: no connection held under that key")
	// ErrRejected: the holder refused the request (bad key, bad metadata,
	// a file that is not /dev/fuse, ...).
	ErrRejected = errors.New("fuseholder: request rejected")
	// ErrProtocol: a malformed message.
	ErrProtocol = errors.New("fuseholder: protocol error")
)

// Limits.
const (
	// MaxMetaSize bounds the metadata kept per connection.
	MaxMetaSize = 16 << 10
	// maxMsgSize bounds one message (request or response).
	maxMsgSize = 1 << 20
	// DefaultTimeout bounds one request, client and holder side.
	DefaultTimeout = 5 * time.Second
)

var keyRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,252}$`)

// ValidKey reports whether key can name a held connection.
func ValidKey(key string) error {
	if !keyRE.MatchString(key) {
		return fmt.Errorf("%w: invalid key %q", ErrRejected, key)
	}
	return nil
}

// Operations.
const (
	opPut  = "put"
	opGet  = "get"
	opDrop = "drop"
	opList = "list"
)

type request struct {
	Op   string          `json:"op"`
	Key  string          `json:"key,omitempty"`
	Meta json.RawMessage `json:"meta,omitempty"`
}

// Error codes in responses, mapped to the sentinel errors.
const (
	codeNotFound = "NotFound"
	codeRejected = "Rejected"
	codeProtocol = "Protocol"
)

type response struct {
	Code    string          `json:"code,omitempty"`
	Error   string          `json:"error,omitempty"`
	Meta    json.RawMessage `json:"meta,omitempty"`
	Alive   bool            `json:"alive,omitempty"`
	Entries []Entry         `json:"entries,omitempty"`
	// Ring: the second file of a "get" is the entry's write-back ring.
	Ring bool `json:"ring,omitempty"`
}

// Entry describes a held connection (List).
type Entry struct {
	Key  string          `json:"key"`
	Meta json.RawMessage `json:"meta"`
	// Alive is false when the kernel reports the connection aborted or the
	// file not mounted (POLLERR): adopting it would fail.
	Alive bool `json:"alive"`
	// Since is when the holder received the file.
	Since time.Time `json:"since"`
	// Ring: a write-back ring is held with the connection.
	Ring bool `json:"ring,omitempty"`
}

func codeErr(code, msg string) error {
	switch code {
	case codeNotFound:
		return fmt.Errorf("%w: %s", ErrNotFound, msg)
	case codeRejected:
		return fmt.Errorf("%w: %s", ErrRejected, msg)
	default:
		return fmt.Errorf("%w: %s: %s", ErrProtocol, code, msg)
	}
}
