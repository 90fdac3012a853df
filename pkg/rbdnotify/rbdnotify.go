// Package rbdnotify encodes and decodes librbd's watch-notify messages: the
// payloads clients of an image send to each other through notifications on
// the image header (rbd_header.<id>), and the replies they acknowledge them
// with.
//
// The encodings are those of Ceph Pacific (16.2.x), src/librbd/
// WatchNotifyTypes.{h,cc} and src/librbd/watcher/Types.cc:
//
//	NotifyMessage   ENCODE_START(7, 1) { u32 notify op, payload }
//	ResponseMessage ENCODE_START(1, 1) { s32 result }
//	ClientId        { u64 gid, u64 handle }            (no envelope)
//	AsyncRequestId  { ClientId, u64 request id }       (no envelope)
//
// A payload's fields depend on the message's struct version (older writers
// left some out), exactly as librbd decodes them. An empty notification is
// librbd's legacy header update. An op this package does not know decodes as
// Unknown, as librbd does; a lock owner answers it with -EOPNOTSUPP.
package rbdnotify

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"syscall"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
)

// Versions of the envelopes this package writes (Pacific's).
const (
	NotifyMessageVersion   = 7
	NotifyMessageCompat    = 1
	ResponseMessageVersion = 1
)

// ErrUnsupported: an encoding this package cannot write (Unknown payloads).
var ErrUnsupported = errors.New("rbdnotify: payload cannot be encoded")

// Op is librbd's NotifyOp.
type Op uint32

// librbd's notify ops (watch_notify::NotifyOp).
const (
	OpAcquiredLock     Op = 0
	OpReleasedLock     Op = 1
	OpRequestLock      Op = 2
	OpHeaderUpdate     Op = 3
	OpAsyncProgress    Op = 4
	OpAsyncComplete    Op = 5
	OpFlatten          Op = 6
	OpResize           Op = 7
	OpSnapCreate       Op = 8
	OpSnapRemove       Op = 9
	OpRebuildObjectMap Op = 10
	OpSnapRename       Op = 11
	OpSnapProtect      Op = 12
	OpSnapUnprotect    Op = 13
	OpRename           Op = 14
	OpUpdateFeatures   Op = 15
	OpMigrate          Op = 16
	OpSparsify         Op = 17
	OpQuiesce          Op = 18
	OpUnquiesce        Op = 19
)

// String is librbd's name of the op ("AcquiredLock", "Unknown (42)").
func (o Op) String() string {
	switch o {
	case OpAcquiredLock:
		return "AcquiredLock"
	case OpReleasedLock:
		return "ReleasedLock"
	case OpRequestLock:
		return "RequestLock"
	case OpHeaderUpdate:
		return "HeaderUpdate"
	case OpAsyncProgress:
		return "AsyncProgress"
	case OpAsyncComplete:
		return "AsyncComplete"
	case OpFlatten:
		return "Flatten"
	case OpResize:
		return "Resize"
	case OpSnapCreate:
		return "SnapCreate"
	case OpSnapRemove:
		return "SnapRemove"
	case OpRebuildObjectMap:
		return "RebuildObjectMap"
	case OpSnapRename:
		return "SnapRename"
	case OpSnapProtect:
		return "SnapProtect"
	case OpSnapUnprotect:
		return "SnapUnprotect"
	case OpRename:
		return "Rename"
	case OpUpdateFeatures:
		return "UpdateFeatures"
	case OpMigrate:
		return "Migrate"
	case OpSparsify:
		return "Sparsify"
	case OpQuiesce:
		return "Quiesce"
	case OpUnquiesce:
		return "Unquiesce"
	}
	return "Unknown (" + strconv.FormatUint(uint64(o), 10) + ")"
}

// ClientID identifies a watcher: the client's global id and its watch handle
// on the header (librbd's watcher::ClientId).
type ClientID struct {
	GID    uint64
	Handle uint64
}

// IsValid reports whether c names a client (the zero value names none).
func (c ClientID) IsValid() bool { return c != ClientID{} }

func (c ClientID) String() string { return fmt.Sprintf("[%d,%d]", c.GID, c.Handle) }

// Encode writes c.
func (c ClientID) Encode(e *cephenc.Encoder) {
	e.U64(c.GID)
	e.U64(c.Handle)
}

// Decode reads c.
func (c *ClientID) Decode(d *cephenc.Decoder) error {
	c.GID = d.U64()
	c.Handle = d.U64()
	return d.Err()
}

// AsyncRequestID names a maintenance request proxied to the lock owner: the
// requester's ClientID and its request sequence number.
type AsyncRequestID struct {
	Client    ClientID
	RequestID uint64
}

// IsValid reports whether r names a request (librbd's operator bool).
func (r AsyncRequestID) IsValid() bool { return r != AsyncRequestID{} }

func (r AsyncRequestID) String() string {
	return fmt.Sprintf("[%d,%d,%d]", r.Client.GID, r.Client.Handle, r.RequestID)
}

// Encode writes r.
func (r AsyncRequestID) Encode(e *cephenc.Encoder) {
	r.Client.Encode(e)
	e.U64(r.RequestID)
}

// Decode reads r.
func (r *AsyncRequestID) Decode(d *cephenc.Decoder) error {
	r.Client.Decode(d)
	r.RequestID = d.U64()
	return d.Err()
}

// Payload is the body of a NotifyMessage.
type Payload interface {
	Op() Op
	// CheckForRefresh reports whether librbd refreshes the image before
	// handling the payload (it changes image metadata).
	CheckForRefresh() bool
	encode(e *cephenc.Encoder)
}

// payloadDecoder is implemented by pointers to the payload types: decode
// reads the payload as written in a message of struct version v.
type payloadDecoder interface {
	decode(v uint8, d *cephenc.Decoder)
}

// AcquiredLock announces a new lock owner.
type AcquiredLock struct{ Client ClientID }

// ReleasedLock announces that the owner released the lock.
type ReleasedLock struct{ Client ClientID }

// RequestLock asks the owner to release the lock. Force is set by forced
// mirror promotion.
type RequestLock struct {
	Client ClientID
	Force  bool
}

// HeaderUpdate says the header changed: watchers refresh the image.
type HeaderUpdate struct{}

// AsyncProgress reports the progress of a proxied request.
type AsyncProgress struct {
	Request       AsyncRequestID
	Offset, Total uint64
}

// AsyncComplete reports the end of a proxied request (Result: 0 or -errno).
type AsyncComplete struct {
	Request AsyncRequestID
	Result  int32
}

// Flatten asks the owner to flatten the (cloned) image.
type Flatten struct{ Request AsyncRequestID }

// Resize asks the owner to resize the image.
type Resize struct {
	Request     AsyncRequestID
	Size        uint64
	AllowShrink bool
}

// SnapCreate asks the owner to create a snapshot.
type SnapCreate struct {
	Request   AsyncRequestID
	Namespace SnapshotNamespace
	Name      string
	Flags     uint64
}

// SnapRemove asks the owner to remove a snapshot. Pacific 16.2.15's
// librbd sends an async request id (and then waits for AsyncComplete);
// earlier ones did not (and wait for the owner's answer).
type SnapRemove struct {
	Namespace SnapshotNamespace
	Name      string
	Request   AsyncRequestID
}

// SnapRename asks the owner to rename snapshot SnapID to Name.
type SnapRename struct {
	SnapID    uint64
	Namespace SnapshotNamespace
	Name      string
}

// SnapProtect asks the owner to protect a snapshot.
type SnapProtect struct {
	Namespace SnapshotNamespace
	Name      string
}

// SnapUnprotect asks the owner to unprotect a snapshot.
type SnapUnprotect struct {
	Namespace SnapshotNamespace
	Name      string
}

// RebuildObjectMap asks the owner to rebuild the object map.
type RebuildObjectMap struct{ Request AsyncRequestID }

// Rename asks the owner to rename the image.
type Rename struct{ ImageName string }

// UpdateFeatures asks the owner to enable or disable features.
type UpdateFeatures struct {
	Features uint64
	Enabled  bool
}

// Migrate asks the owner to run a live migration.
type Migrate struct{ Request AsyncRequestID }

// Sparsify asks the owner to sparsify the image.
type Sparsify struct {
	Request    AsyncRequestID
	SparseSize uint64
}

// Quiesce asks every watcher to quiesce I/O before a snapshot.
type Quiesce struct{ Request AsyncRequestID }

// Unquiesce ends a Quiesce.
type Unquiesce struct{ Request AsyncRequestID }

// Unknown is a payload of an op this package does not know; Data holds its
// undecoded bytes.
type Unknown struct {
	Code Op
	Data []byte
}

func (AcquiredLock) Op() Op     { return OpAcquiredLock }
func (ReleasedLock) Op() Op     { return OpReleasedLock }
func (RequestLock) Op() Op      { return OpRequestLock }
func (HeaderUpdate) Op() Op     { return OpHeaderUpdate }
func (AsyncProgress) Op() Op    { return OpAsyncProgress }
func (AsyncComplete) Op() Op    { return OpAsyncComplete }
func (Flatten) Op() Op          { return OpFlatten }
func (Resize) Op() Op           { return OpResize }
func (SnapCreate) Op() Op       { return OpSnapCreate }
func (SnapRemove) Op() Op       { return OpSnapRemove }
func (SnapRename) Op() Op       { return OpSnapRename }
func (SnapProtect) Op() Op      { return OpSnapProtect }
func (SnapUnprotect) Op() Op    { return OpSnapUnprotect }
func (RebuildObjectMap) Op() Op { return OpRebuildObjectMap }
func (Rename) Op() Op           { return OpRename }
func (UpdateFeatures) Op() Op   { return OpUpdateFeatures }
func (Migrate) Op() Op          { return OpMigrate }
func (Sparsify) Op() Op         { return OpSparsify }
func (Quiesce) Op() Op          { return OpQuiesce }
func (Unquiesce) Op() Op        { return OpUnquiesce }
func (u Unknown) Op() Op        { return u.Code }

func (AcquiredLock) CheckForRefresh() bool     { return false }
func (ReleasedLock) CheckForRefresh() bool     { return false }
func (RequestLock) CheckForRefresh() bool      { return false }
func (HeaderUpdate) CheckForRefresh() bool     { return false }
func (AsyncProgress) CheckForRefresh() bool    { return false }
func (AsyncComplete) CheckForRefresh() bool    { return false }
func (Flatten) CheckForRefresh() bool          { return true }
func (Resize) CheckForRefresh() bool           { return true }
func (SnapCreate) CheckForRefresh() bool       { return true }
func (SnapRemove) CheckForRefresh() bool       { return true }
func (SnapRename) CheckForRefresh() bool       { return true }
func (SnapProtect) CheckForRefresh() bool      { return true }
func (SnapUnprotect) CheckForRefresh() bool    { return true }
func (RebuildObjectMap) CheckForRefresh() bool { return true }
func (Rename) CheckForRefresh() bool           { return true }
func (UpdateFeatures) CheckForRefresh() bool   { return true }
func (Migrate) CheckForRefresh() bool          { return true }
func (Sparsify) CheckForRefresh() bool         { return true }
func (Quiesce) CheckForRefresh() bool          { return false }
func (Unquiesce) CheckForRefresh() bool        { return false }
func (Unknown) CheckForRefresh() bool          { return false }

// The lock payloads carry the client id since version 2 (RequestLock's
// force flag since version 3).

func (p AcquiredLock) encode(e *cephenc.Encoder) { p.Client.Encode(e) }
func (p *AcquiredLock) decode(v uint8, d *cephenc.Decoder) {
	if v >= 2 {
		p.Client.Decode(d)
	}
}

func (p ReleasedLock) encode(e *cephenc.Encoder) { p.Client.Encode(e) }
func (p *ReleasedLock) decode(v uint8, d *cephenc.Decoder) {
	if v >= 2 {
		p.Client.Decode(d)
	}
}

func (p RequestLock) encode(e *cephenc.Encoder) {
	p.Client.Encode(e)
	e.Bool(p.Force)
}
func (p *RequestLock) decode(v uint8, d *cephenc.Decoder) {
	if v >= 2 {
		p.Client.Decode(d)
	}
	if v >= 3 {
		p.Force = d.Bool()
	}
}

func (HeaderUpdate) encode(*cephenc.Encoder)         {}
func (*HeaderUpdate) decode(uint8, *cephenc.Decoder) {}

func (p AsyncProgress) encode(e *cephenc.Encoder) {
	p.Request.Encode(e)
	e.U64(p.Offset)
	e.U64(p.Total)
}
func (p *AsyncProgress) decode(_ uint8, d *cephenc.Decoder) {
	p.Request.Decode(d)
	p.Offset = d.U64()
	p.Total = d.U64()
}

func (p AsyncComplete) encode(e *cephenc.Encoder) {
	p.Request.Encode(e)
	e.S32(p.Result)
}
func (p *AsyncComplete) decode(_ uint8, d *cephenc.Decoder) {
	p.Request.Decode(d)
	p.Result = d.S32()
}

func (p Flatten) encode(e *cephenc.Encoder)                    { p.Request.Encode(e) }
func (p *Flatten) decode(_ uint8, d *cephenc.Decoder)          { p.Request.Decode(d) }
func (p RebuildObjectMap) encode(e *cephenc.Encoder)           { p.Request.Encode(e) }
func (p *RebuildObjectMap) decode(_ uint8, d *cephenc.Decoder) { p.Request.Decode(d) }
func (p Migrate) encode(e *cephenc.Encoder)                    { p.Request.Encode(e) }
func (p *Migrate) decode(_ uint8, d *cephenc.Decoder)          { p.Request.Decode(d) }
func (p Quiesce) encode(e *cephenc.Encoder)                    { p.Request.Encode(e) }
func (p *Quiesce) decode(_ uint8, d *cephenc.Decoder)          { p.Request.Decode(d) }
func (p Unquiesce) encode(e *cephenc.Encoder)                  { p.Request.Encode(e) }
func (p *Unquiesce) decode(_ uint8, d *cephenc.Decoder)        { p.Request.Decode(d) }

// Resize: the size first, then the request id; allow_shrink since version 4.
func (p Resize) encode(e *cephenc.Encoder) {
	e.U64(p.Size)
	p.Request.Encode(e)
	e.Bool(p.AllowShrink)
}
func (p *Resize) decode(v uint8, d *cephenc.Decoder) {
	p.Size = d.U64()
	p.Request.Decode(d)
	p.AllowShrink = true // librbd's default for older requesters
	if v >= 4 {
		p.AllowShrink = d.Bool()
	}
}

// The snapshot payloads (SnapPayloadBase): the name, then the namespace
// since version 6.
func encodeSnap(e *cephenc.Encoder, ns SnapshotNamespace, name string) {
	e.String(name)
	ns.Encode(e)
}

func decodeSnap(v uint8, d *cephenc.Decoder, ns *SnapshotNamespace, name *string) {
	*name = d.Str()
	if v >= 6 {
		ns.Decode(d)
	}
}

func (p SnapCreate) encode(e *cephenc.Encoder) {
	encodeSnap(e, p.Namespace, p.Name)
	p.Request.Encode(e)
	e.U64(p.Flags)
}

// decode follows librbd: version 5 wrote the namespace after the name (and
// its base class did not read it yet); version 7 added the request id and
// flags.
func (p *SnapCreate) decode(v uint8, d *cephenc.Decoder) {
	decodeSnap(v, d, &p.Namespace, &p.Name)
	if v == 5 {
		p.Namespace.Decode(d)
	}
	if v >= 7 {
		p.Request.Decode(d)
		p.Flags = d.U64()
	}
}

func (p SnapRemove) encode(e *cephenc.Encoder) {
	encodeSnap(e, p.Namespace, p.Name)
	p.Request.Encode(e)
}

// decode reads the request id that version 7 messages of recent librbd
// carry after the namespace (older version 7 writers end there).
func (p *SnapRemove) decode(v uint8, d *cephenc.Decoder) {
	decodeSnap(v, d, &p.Namespace, &p.Name)
	if v >= 7 && d.Err() == nil && d.Remaining() > 0 {
		p.Request.Decode(d)
	}
}
func (p SnapProtect) encode(e *cephenc.Encoder) { encodeSnap(e, p.Namespace, p.Name) }
func (p *SnapProtect) decode(v uint8, d *cephenc.Decoder) {
	decodeSnap(v, d, &p.Namespace, &p.Name)
}
func (p SnapUnprotect) encode(e *cephenc.Encoder) { encodeSnap(e, p.Namespace, p.Name) }
func (p *SnapUnprotect) decode(v uint8, d *cephenc.Decoder) {
	decodeSnap(v, d, &p.Namespace, &p.Name)
}

func (p SnapRename) encode(e *cephenc.Encoder) {
	e.U64(p.SnapID)
	encodeSnap(e, p.Namespace, p.Name)
}
func (p *SnapRename) decode(v uint8, d *cephenc.Decoder) {
	p.SnapID = d.U64()
	decodeSnap(v, d, &p.Namespace, &p.Name)
}

func (p Rename) encode(e *cephenc.Encoder)           { e.String(p.ImageName) }
func (p *Rename) decode(_ uint8, d *cephenc.Decoder) { p.ImageName = d.Str() }

func (p UpdateFeatures) encode(e *cephenc.Encoder) {
	e.U64(p.Features)
	e.Bool(p.Enabled)
}
func (p *UpdateFeatures) decode(_ uint8, d *cephenc.Decoder) {
	p.Features = d.U64()
	p.Enabled = d.Bool()
}

func (p Sparsify) encode(e *cephenc.Encoder) {
	p.Request.Encode(e)
	e.U64(p.SparseSize)
}
func (p *Sparsify) decode(_ uint8, d *cephenc.Decoder) {
	p.Request.Decode(d)
	p.SparseSize = d.U64()
}

// Unknown payloads are never sent (librbd aborts encoding one); encoding
// writes the raw bytes back so that tests can build such messages.
func (p Unknown) encode(e *cephenc.Encoder) { e.Raw(p.Data) }
func (p *Unknown) decode(_ uint8, d *cephenc.Decoder) {
	p.Data = bytes.Clone(d.Rest())
}

// payloadDecoders decode the payloads of the ops this package knows: each
// into an empty value of its type, which the message then holds (a value,
// not a pointer, so that callers switch on value types).
var payloadDecoders = map[Op]func(v uint8, d *cephenc.Decoder) Payload{
	OpAcquiredLock:     decodePayload[AcquiredLock],
	OpReleasedLock:     decodePayload[ReleasedLock],
	OpRequestLock:      decodePayload[RequestLock],
	OpHeaderUpdate:     decodePayload[HeaderUpdate],
	OpAsyncProgress:    decodePayload[AsyncProgress],
	OpAsyncComplete:    decodePayload[AsyncComplete],
	OpFlatten:          decodePayload[Flatten],
	OpResize:           decodePayload[Resize],
	OpSnapCreate:       decodePayload[SnapCreate],
	OpSnapRemove:       decodePayload[SnapRemove],
	OpRebuildObjectMap: decodePayload[RebuildObjectMap],
	OpSnapRename:       decodePayload[SnapRename],
	OpSnapProtect:      decodePayload[SnapProtect],
	OpSnapUnprotect:    decodePayload[SnapUnprotect],
	OpRename:           decodePayload[Rename],
	OpUpdateFeatures:   decodePayload[UpdateFeatures],
	OpMigrate:          decodePayload[Migrate],
	OpSparsify:         decodePayload[Sparsify],
	OpQuiesce:          decodePayload[Quiesce],
	OpUnquiesce:        decodePayload[Unquiesce],
}

// decodePayload decodes a payload of type T written in a message of struct
// version v.
func decodePayload[T Payload, P interface {
	*T
	payloadDecoder
}](v uint8, d *cephenc.Decoder) Payload {
	var p T
	P(&p).decode(v, d)
	return p
}

// NotifyMessage is a notification sent to the watchers of an image header.
// Payload holds a value type (AcquiredLock, Resize, ...), never a pointer.
type NotifyMessage struct {
	// Version is the struct version the message was decoded from
	// (NotifyMessageVersion for messages built here).
	Version uint8
	Payload Payload
}

// Encode writes m as Pacific's librbd does. It panics on an Unknown
// payload with no data, which librbd cannot send either.
func (m NotifyMessage) Encode(e *cephenc.Encoder) {
	s := e.Start(NotifyMessageVersion, NotifyMessageCompat)
	e.U32(uint32(m.Payload.Op()))
	m.Payload.encode(e)
	e.Finish(s)
}

// Decode reads a message. Bytes of the message its version does not
// explain are skipped, as DECODE_FINISH does.
func (m *NotifyMessage) Decode(d *cephenc.Decoder) error {
	s := d.Start(NotifyMessageCompat)
	op := Op(d.U32())
	if d.Err() != nil {
		return fmt.Errorf("decode notify message: %w", d.Err())
	}
	var p Payload
	if dec, ok := payloadDecoders[op]; ok {
		p = dec(s.Version, d)
	} else { // an op this package does not know
		u := Unknown{Code: op}
		u.decode(s.Version, d)
		p = u
	}
	d.Finish(s)
	if err := d.Err(); err != nil {
		return fmt.Errorf("decode notify message %v (v%d): %w", op, s.Version, err)
	}
	m.Version, m.Payload = s.Version, p
	return nil
}

// Marshal encodes a notification carrying p.
func Marshal(p Payload) []byte {
	return cephenc.Marshal(NotifyMessage{Payload: p})
}

// Parse decodes a notification's payload. An empty notification is
// librbd's legacy header update.
func Parse(b []byte) (NotifyMessage, error) {
	if len(b) == 0 {
		return NotifyMessage{Payload: HeaderUpdate{}}, nil
	}
	var m NotifyMessage
	err := cephenc.Unmarshal(b, &m)
	return m, err
}

// ResponseMessage is a watcher's answer to a notification it handles (the
// lock owner's answer to RequestLock and to proxied maintenance requests):
// 0 or a negative errno.
type ResponseMessage struct{ Result int32 }

// Encode writes r.
func (r ResponseMessage) Encode(e *cephenc.Encoder) {
	s := e.Start(ResponseMessageVersion, ResponseMessageVersion)
	e.S32(r.Result)
	e.Finish(s)
}

// Decode reads r.
func (r *ResponseMessage) Decode(d *cephenc.Decoder) error {
	s := d.Start(ResponseMessageVersion)
	r.Result = d.S32()
	d.Finish(s)
	if err := d.Err(); err != nil {
		return fmt.Errorf("decode response message: %w", err)
	}
	return nil
}

// Err returns nil for a result >= 0, else the errno it names.
func (r ResponseMessage) Err() error {
	if r.Result >= 0 {
		return nil
	}
	return syscall.Errno(-r.Result)
}

// Response encodes ResponseMessage{-errno} (0 for errno 0).
func Response(errno syscall.Errno) []byte {
	return cephenc.Marshal(ResponseMessage{Result: -int32(errno)})
}

// ParseResponse decodes a reply to a notification. An empty reply is not a
// ResponseMessage: the watcher acknowledged without answering (librbd's
// watchers that do not own the lock do that); ok is false then.
func ParseResponse(b []byte) (r ResponseMessage, ok bool, err error) {
	if len(b) == 0 {
		return ResponseMessage{}, false, nil
	}
	if err := cephenc.Unmarshal(b, &r); err != nil {
		return ResponseMessage{}, false, err
	}
	return r, true, nil
}
