// Package objstore defines a RADOS-shaped object store: a pool of named
// objects, each with byte data, an ordered omap and xattrs, changed by
// compound operations that apply atomically, extended by object-class
// methods, and observed through watch/notify.
//
// Two backends implement it: objstore/local (a directory on one machine) and
// objstore/ceph (a real cluster through librados). The journal, the image
// layer and the lock code are written against Pool only, so they run the same
// on both.
//
// Errors carry Ceph's errno semantics: a backend returns errors that wrap a
// syscall.Errno (ENOENT for a missing object or key, EEXIST, EOVERFLOW,
// ESTALE, EINVAL, EBUSY, ESHUTDOWN for a blocklisted client), so callers branch
// with errors.Is(err, objstore.ErrNotFound) and friends.
package objstore

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"
)

// Errno values callers branch on. They are syscall.Errno so that they match
// what librados returns (negated) and what errors.Is expects.
const (
	ErrNotFound    = syscall.ENOENT
	ErrExists      = syscall.EEXIST
	ErrOverflow    = syscall.EOVERFLOW
	ErrStale       = syscall.ESTALE
	ErrInvalid     = syscall.EINVAL
	ErrBusy        = syscall.EBUSY
	ErrRange       = syscall.ERANGE
	ErrTimedOut    = syscall.ETIMEDOUT
	ErrBlocklisted = syscall.ESHUTDOWN
	ErrNotSupp     = syscall.EOPNOTSUPP
	ErrPerm        = syscall.EPERM
)

// ErrMismatch: a CmpExt step found other bytes than expected. librados
// reports it as -MAX_ERRNO minus the offset of the first difference, no
// errno, hence a sentinel of its own.
var ErrMismatch = errors.New("compared extent mismatch")

// OpError is the error a backend returns for a failed operation on an object.
type OpError struct {
	Op  string // "write", "read", "exec journal.client_commit", "watch", ...
	OID string
	Err error // wraps a syscall.Errno where one applies
}

func (e *OpError) Error() string { return fmt.Sprintf("%s %s: %v", e.Op, e.OID, e.Err) }
func (e *OpError) Unwrap() error { return e.Err }

// Errno returns the errno an error carries, or 0 if it carries none.
func Errno(err error) syscall.Errno {
	var en syscall.Errno
	if errors.As(err, &en) {
		return en
	}
	return 0
}

// Result is err as a Ceph operation's result, as librbd reports it in
// notifications and journal events: 0 for nil, otherwise the negated errno
// err carries, -EIO when it carries none.
func Result(err error) int32 {
	if err == nil {
		return 0
	}
	en := Errno(err)
	if en == 0 {
		en = syscall.EIO
	}
	return -int32(en)
}

// Pool is one pool (an I/O context): a flat namespace of objects.
// All methods are safe for concurrent use.
type Pool interface {
	// ID is the pool's numeric id (journal data objects embed it in their names).
	ID() int64
	// Name is the pool's name.
	Name() string
	// Operate applies every step of op to object oid atomically: either all
	// steps take effect and are durable when Operate returns nil, or none do.
	Operate(ctx context.Context, oid string, op *WriteOp) error
	// Read runs the steps of op against object oid and fills their results.
	// It fails with the first failing step's error.
	Read(ctx context.Context, oid string, op *ReadOp) error
	// List returns the names of the pool's objects that start with prefix,
	// in no particular order.
	List(ctx context.Context, prefix string) ([]string, error)
	// Watch registers h for notifications sent to oid. The watch lives until
	// Close or until it is lost; a lost watch is reported to
	// h.HandleWatchError once, after which the caller must re-register (and
	// treat the gap as missed notifications).
	Watch(ctx context.Context, oid string, h WatchHandler) (Watch, error)
	// Notify sends payload to every watcher of oid and waits up to timeout for
	// their acknowledgements.
	Notify(ctx context.Context, oid string, payload []byte, timeout time.Duration) (NotifyResult, error)
	// ListWatchers returns the watches currently registered on oid.
	ListWatchers(ctx context.Context, oid string) ([]WatcherInfo, error)
	// Client identifies this handle the way Ceph identifies a client
	// instance: lock owners and watchers are recorded under it, and fencing
	// (blocklisting) targets its address.
	Client() ClientInfo
}

// ClientInfo identifies a client instance.
type ClientInfo struct {
	// ID is the global id of the client ("client.<ID>" in Ceph).
	ID uint64
	// Addr is the client's address ("127.0.0.1:0/3141592" in Ceph); it is
	// what a blocklist entry names.
	Addr string
}

// Name is the Ceph entity name, e.g. "client.4123".
func (c ClientInfo) Name() string { return fmt.Sprintf("client.%d", c.ID) }

// WatcherInfo describes one registered watch.
type WatcherInfo struct {
	Client ClientInfo
	Cookie uint64
}

// WatchHandler receives the events of a watch. Calls for one watch are
// serialised (backends run them through a Dispatcher); a handler must not
// block for long (it delays later events).
type WatchHandler interface {
	// HandleNotify is called for each notification. The handler must Ack it
	// (possibly later, from another goroutine) or the notifier times out.
	// ctx is the context of this call (see Watch.Close): it keeps the values
	// of the context Watch was called with and is cancelled once the watch
	// is closed.
	HandleNotify(ctx context.Context, n *Notification)
	// HandleWatchError reports that the watch was lost (for example the
	// client was disconnected or blocklisted). The Watch is dead afterwards.
	// ctx is as for HandleNotify.
	HandleWatchError(ctx context.Context, err error)
}

// Watch is a registered watch.
type Watch interface {
	// Cookie is the watch handle (librbd puts it in the lock cookie).
	Cookie() uint64
	// Check returns nil while the watch is established, else why it is not.
	Check() error
	// Close unregisters the watch. It waits for a running handler call,
	// except when ctx is the context that call received (Close from inside
	// the watch's own handler, which must not wait for itself). Close does
	// not give up when ctx is done: ctx only tells who is calling.
	Close(ctx context.Context) error
}

// Notification is one notify delivered to a watcher.
type Notification struct {
	NotifyID   uint64
	Cookie     uint64 // the watch it was delivered to
	NotifierID uint64 // the notifying client's id
	Payload    []byte

	ack func(reply []byte)
}

// NewNotification is for backends: ack is called once with the reply.
func NewNotification(notifyID, cookie, notifierID uint64, payload []byte, ack func([]byte)) *Notification {
	return &Notification{NotifyID: notifyID, Cookie: cookie, NotifierID: notifierID, Payload: payload, ack: ack}
}

// Ack acknowledges the notification with reply (may be nil). Only the first
// call has an effect.
func (n *Notification) Ack(reply []byte) {
	if f := n.ack; f != nil {
		n.ack = nil
		f(reply)
	}
}

// NotifyResult is what a notifier learns: who acknowledged (with their
// replies) and who did not answer in time.
type NotifyResult struct {
	Acks     []NotifyAck
	TimedOut []WatcherInfo
}

// NotifyAck is one watcher's acknowledgement.
type NotifyAck struct {
	Watcher WatcherInfo
	Reply   []byte
}

// BatchOp is one operation of a batch: op applied to object OID.
type BatchOp struct {
	OID string
	Op  *WriteOp
}

// Batcher is implemented by pools that can take several operations in one
// call: each still applies atomically on its own object and in the order
// given for the same object, but a backend with group commit can make them
// durable together. Operate is the fallback.
type Batcher interface {
	OperateBatch(ctx context.Context, ops []BatchOp) []error
}

// Submitter is implemented by pools that can queue operations without
// waiting for them: Submit queues ops (each applies atomically on its own
// object) and returns a function that waits for their outcomes, in the
// order of ops. Operations queued by successive Submit calls of one caller
// apply in that order on each object, whether or not the earlier ones have
// completed. The returned function must be called exactly once.
type Submitter interface {
	Submit(ctx context.Context, ops []BatchOp) (wait func() []error)
}
