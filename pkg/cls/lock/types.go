package clslock

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
)

// ErrSyntax is returned (wrapped) for text that is not an entity name or an
// entity address.
var ErrSyntax = errors.New("clslock: invalid syntax")

// LockType is Ceph's ClsLockType, encoded as a u8.
type LockType uint8

// Lock types of Ceph 16 (cls_lock_types.h).
const (
	LockNone               LockType = 0
	LockExclusive          LockType = 1
	LockShared             LockType = 2
	LockExclusiveEphemeral LockType = 3 // the object is removed when the last locker goes
)

// String returns the name Ceph prints (cls_lock_type_str).
func (t LockType) String() string {
	switch t {
	case LockNone:
		return "none"
	case LockExclusive:
		return "exclusive"
	case LockShared:
		return "shared"
	case LockExclusiveEphemeral:
		return "exclusive-ephemeral"
	}
	return "<unknown>"
}

func (t LockType) valid() bool {
	return t == LockExclusive || t == LockShared || t == LockExclusiveEphemeral
}

func (t LockType) exclusive() bool { return t == LockExclusive || t == LockExclusiveEphemeral }

// Flags modify a lock request.
type Flags uint8

// Lock flags of Ceph 16. At most one of them may be set.
const (
	// FlagMayRenew lets the current holder take the lock again (renewing
	// its expiration) instead of failing with objstore.ErrExists.
	FlagMayRenew Flags = 0x1
	// FlagMustRenew makes the request fail with objstore.ErrNotFound unless
	// the caller already holds the lock: a renewal that cannot turn into a
	// fresh acquisition after the lock expired or was broken.
	FlagMustRenew Flags = 0x2
)

// UTime is Ceph's utime_t, as cls_lock encodes it (expirations and
// durations).
type UTime = cephenc.UTime

// UTimeOf returns t as Ceph's clock reports it (cephenc.UTimeOf).
func UTimeOf(t time.Time) UTime { return cephenc.UTimeOf(t) }

// DurationUTime converts d as Ceph converts a duration to utime_t: negative
// durations become zero and seconds beyond the u32 range are capped.
func DurationUTime(d time.Duration) UTime {
	if d <= 0 {
		return UTime{}
	}
	return UTime{Sec: uint32(min(uint64(d/time.Second), math.MaxUint32)), Nsec: uint32(d % time.Second)}
}

// Entity types (CEPH_ENTITY_TYPE_*), the first byte of an entity name.
const (
	EntityTypeMon    uint8 = 0x01
	EntityTypeMDS    uint8 = 0x02
	EntityTypeOSD    uint8 = 0x04
	EntityTypeClient uint8 = 0x08
	EntityTypeMgr    uint8 = 0x10
	EntityTypeAuth   uint8 = 0x20
)

// EntityName is Ceph's entity_name_t, e.g. client.4123: a u8 type and an s64
// number. A lock holder is identified by its entity name and a cookie.
type EntityName struct {
	Type uint8
	Num  int64
}

// ClientName is the entity name of client id (objstore.ClientInfo.ID).
func ClientName(id uint64) EntityName {
	return EntityName{Type: EntityTypeClient, Num: int64(id)}
}

// entityTypeName is ceph_entity_type_name.
func entityTypeName(t uint8) string {
	switch t {
	case EntityTypeMon:
		return "mon"
	case EntityTypeMDS:
		return "mds"
	case EntityTypeOSD:
		return "osd"
	case EntityTypeClient:
		return "client"
	case EntityTypeMgr:
		return "mgr"
	case EntityTypeAuth:
		return "auth"
	}
	return "unknown"
}

// String formats n as Ceph does: "client.4123", or "client.?" for a negative
// number.
func (n EntityName) String() string {
	if n.Num < 0 {
		return entityTypeName(n.Type) + ".?"
	}
	return entityTypeName(n.Type) + "." + strconv.FormatInt(n.Num, 10)
}

// ParseEntityName parses what entity_name_t::parse accepts: mon., osd.,
// mds., client. or mgr. followed by a decimal number.
func ParseEntityName(s string) (EntityName, error) {
	typ, num, _ := strings.Cut(s, ".")
	var n EntityName
	switch typ {
	case "mon":
		n.Type = EntityTypeMon
	case "mds":
		n.Type = EntityTypeMDS
	case "osd":
		n.Type = EntityTypeOSD
	case "client":
		n.Type = EntityTypeClient
	case "mgr":
		n.Type = EntityTypeMgr
	default:
		return EntityName{}, fmt.Errorf("entity name %q: %w", s, ErrSyntax)
	}
	var err error
	if n.Num, err = strconv.ParseInt(num, 10, 64); err != nil {
		return EntityName{}, fmt.Errorf("entity name %q: %w", s, ErrSyntax)
	}
	return n, nil
}

// denc codes n as entity_name_t: u8 type, s64 number.
func (n *EntityName) denc(c cephenc.Coder) {
	c.U8(&n.Type)
	c.S64(&n.Num)
}

// Encode writes n as entity_name_t.
func (n EntityName) Encode(e *cephenc.Encoder) { n.denc(cephenc.Encoding(e)) }

// Decode reads an entity_name_t.
func (n *EntityName) Decode(d *cephenc.Decoder) error { return cephenc.DecodeWith(d, n.denc) }

// compare orders entity names as entity_name_t's operator<: by type, then
// number.
func (n EntityName) compare(o EntityName) int {
	return cmp.Or(cmp.Compare(n.Type, o.Type), cmp.Compare(n.Num, o.Num))
}

// LockerID is Ceph's locker_id_t: who holds a lock.
type LockerID struct {
	Locker EntityName
	Cookie string
}

// compare is locker_id_t's operator<, the order of a lock's lockers map.
func (id LockerID) compare(o LockerID) int {
	return cmp.Or(id.Locker.compare(o.Locker), strings.Compare(id.Cookie, o.Cookie))
}

// denc codes id as ENCODE_START(1, 1){entity_name_t locker, string cookie}.
func (id *LockerID) denc(c cephenc.Coder) {
	c.Struct(1, 1, func() {
		c.Value(&id.Locker)
		c.String(&id.Cookie)
	})
}

// Encode writes id as locker_id_t.
func (id LockerID) Encode(e *cephenc.Encoder) { id.denc(cephenc.Encoding(e)) }

// Decode reads a locker_id_t.
func (id *LockerID) Decode(d *cephenc.Decoder) error { return cephenc.DecodeWith(d, id.denc) }

// LockerInfo is Ceph's locker_info_t: what is known about one holder.
type LockerInfo struct {
	// Expiration is when the lock lapses; zero means never.
	Expiration UTime
	// Addr is the holder's address when it locked, of type v1 (Ceph
	// records every holder's address as a legacy one).
	Addr EntityAddr
	// Description is the holder's free-form text.
	Description string
}

// denc codes i as ENCODE_START(1, 1){utime_t expiration, entity_addr_t
// addr, string description}.
func (i *LockerInfo) denc(c cephenc.Coder) {
	c.Struct(1, 1, func() {
		c.Value(&i.Expiration)
		c.Value(&i.Addr)
		c.String(&i.Description)
	})
}

// Encode writes i as locker_info_t, with the address in the form an OSD
// writes for a Nautilus or later client.
func (i LockerInfo) Encode(e *cephenc.Encoder) { i.denc(cephenc.Encoding(e)) }

// Decode reads a locker_info_t; the address may be in either encoding.
func (i *LockerInfo) Decode(d *cephenc.Decoder) error { return cephenc.DecodeWith(d, i.denc) }

// LockInfo is the state of one lock: Ceph's lock_info_t, stored in the
// object's xattr "lock.<name>", and cls_lock_get_info_reply, which get_info
// returns and which has the same encoding.
type LockInfo struct {
	Lockers map[LockerID]LockerInfo
	Type    LockType
	Tag     string
}

// Equal reports whether two lock states are the same (nil and empty locker
// maps are equal).
func (li LockInfo) Equal(o LockInfo) bool {
	return li.Type == o.Type && li.Tag == o.Tag && maps.Equal(li.Lockers, o.Lockers)
}

// minLockerSize is the smallest encoding of one lockers map entry: a
// locker_id_t (6 + 9 + 4 bytes) and a locker_info_t (6 + 8 + 19 + 4).
const minLockerSize = 19 + 37

// Encode writes li as ENCODE_START(1, 1){map<locker_id_t, locker_info_t>
// lockers, u8 lock_type, string tag}, the lockers in locker_id_t order.
func (li LockInfo) Encode(e *cephenc.Encoder) {
	m := e.Start(1, 1)
	ids := slices.SortedFunc(maps.Keys(li.Lockers), LockerID.compare)
	e.U32(uint32(len(ids)))
	for _, id := range ids {
		id.Encode(e)
		li.Lockers[id].Encode(e)
	}
	e.U8(uint8(li.Type))
	e.String(li.Tag)
	e.Finish(m)
}

// Decode reads a lock_info_t or cls_lock_get_info_reply. As Ceph's map
// decoding, a repeated locker keeps the last value.
func (li *LockInfo) Decode(d *cephenc.Decoder) error {
	s := d.Start(1)
	n := d.Count(minLockerSize)
	li.Lockers = make(map[LockerID]LockerInfo, n)
	for range n {
		var id LockerID
		var info LockerInfo
		if id.Decode(d) != nil || info.Decode(d) != nil {
			break
		}
		li.Lockers[id] = info
	}
	li.Type = LockType(d.U8())
	li.Tag = d.Str()
	d.Finish(s)
	return d.Err()
}

// LockOp is cls_lock_lock_op, the input of lock.lock.
type LockOp struct {
	Name        string
	Type        LockType
	Cookie      string
	Tag         string
	Description string
	Duration    UTime // zero: the lock never expires
	Flags       Flags
}

// denc codes op as ENCODE_START(1, 1){string name, u8 type, string
// cookie, string tag, string description, utime_t duration, u8 flags}.
func (op *LockOp) denc(c cephenc.Coder) {
	c.Struct(1, 1, func() {
		c.String(&op.Name)
		c.U8((*uint8)(&op.Type))
		c.String(&op.Cookie)
		c.String(&op.Tag)
		c.String(&op.Description)
		c.Value(&op.Duration)
		c.U8((*uint8)(&op.Flags))
	})
}

// Encode writes op as cls_lock_lock_op.
func (op LockOp) Encode(e *cephenc.Encoder) { op.denc(cephenc.Encoding(e)) }

// Decode reads a cls_lock_lock_op.
func (op *LockOp) Decode(d *cephenc.Decoder) error { return cephenc.DecodeWith(d, op.denc) }

// UnlockOp is cls_lock_unlock_op, the input of lock.unlock.
type UnlockOp struct {
	Name   string
	Cookie string
}

// denc codes op as ENCODE_START(1, 1){string name, string cookie}.
func (op *UnlockOp) denc(c cephenc.Coder) {
	c.Struct(1, 1, func() {
		c.String(&op.Name)
		c.String(&op.Cookie)
	})
}

// Encode writes op as cls_lock_unlock_op.
func (op UnlockOp) Encode(e *cephenc.Encoder) { op.denc(cephenc.Encoding(e)) }

// Decode reads a cls_lock_unlock_op.
func (op *UnlockOp) Decode(d *cephenc.Decoder) error { return cephenc.DecodeWith(d, op.denc) }

// BreakOp is cls_lock_break_op, the input of lock.break_lock.
type BreakOp struct {
	Name   string
	Locker EntityName
	Cookie string
}

// denc codes op as ENCODE_START(1, 1){string name, entity_name_t locker,
// string cookie}.
func (op *BreakOp) denc(c cephenc.Coder) {
	c.Struct(1, 1, func() {
		c.String(&op.Name)
		c.Value(&op.Locker)
		c.String(&op.Cookie)
	})
}

// Encode writes op as cls_lock_break_op.
func (op BreakOp) Encode(e *cephenc.Encoder) { op.denc(cephenc.Encoding(e)) }

// Decode reads a cls_lock_break_op.
func (op *BreakOp) Decode(d *cephenc.Decoder) error { return cephenc.DecodeWith(d, op.denc) }

// GetInfoOp is cls_lock_get_info_op, the input of lock.get_info.
type GetInfoOp struct {
	Name string
}

// denc codes op as ENCODE_START(1, 1){string name}.
func (op *GetInfoOp) denc(c cephenc.Coder) {
	c.Struct(1, 1, func() {
		c.String(&op.Name)
	})
}

// Encode writes op as cls_lock_get_info_op.
func (op GetInfoOp) Encode(e *cephenc.Encoder) { op.denc(cephenc.Encoding(e)) }

// Decode reads a cls_lock_get_info_op.
func (op *GetInfoOp) Decode(d *cephenc.Decoder) error { return cephenc.DecodeWith(d, op.denc) }

// ListLocksReply is cls_lock_list_locks_reply, the output of
// lock.list_locks: the names of the object's locks.
type ListLocksReply struct {
	Locks []string
}

// Encode writes r as ENCODE_START(1, 1){list<string> locks}.
func (r ListLocksReply) Encode(e *cephenc.Encoder) {
	m := e.Start(1, 1)
	e.U32(uint32(len(r.Locks)))
	for _, l := range r.Locks {
		e.String(l)
	}
	e.Finish(m)
}

// Decode reads a cls_lock_list_locks_reply.
func (r *ListLocksReply) Decode(d *cephenc.Decoder) error {
	s := d.Start(1)
	n := d.Count(4)
	r.Locks = make([]string, 0, n)
	for range n {
		r.Locks = append(r.Locks, d.Str())
	}
	d.Finish(s)
	if err := d.Err(); err != nil {
		r.Locks = nil
		return err
	}
	return nil
}

// AssertOp is cls_lock_assert_op, the input of lock.assert_locked.
type AssertOp struct {
	Name   string
	Type   LockType
	Cookie string
	Tag    string
}

// denc codes op as ENCODE_START(1, 1){string name, u8 type, string
// cookie, string tag}.
func (op *AssertOp) denc(c cephenc.Coder) {
	c.Struct(1, 1, func() {
		c.String(&op.Name)
		c.U8((*uint8)(&op.Type))
		c.String(&op.Cookie)
		c.String(&op.Tag)
	})
}

// Encode writes op as cls_lock_assert_op.
func (op AssertOp) Encode(e *cephenc.Encoder) { op.denc(cephenc.Encoding(e)) }

// Decode reads a cls_lock_assert_op.
func (op *AssertOp) Decode(d *cephenc.Decoder) error { return cephenc.DecodeWith(d, op.denc) }

// SetCookieOp is cls_lock_set_cookie_op, the input of lock.set_cookie.
type SetCookieOp struct {
	Name      string
	Type      LockType
	Cookie    string
	Tag       string
	NewCookie string
}

// denc codes op as ENCODE_START(1, 1){string name, u8 type, string
// cookie, string tag, string new_cookie}.
func (op *SetCookieOp) denc(c cephenc.Coder) {
	c.Struct(1, 1, func() {
		c.String(&op.Name)
		c.U8((*uint8)(&op.Type))
		c.String(&op.Cookie)
		c.String(&op.Tag)
		c.String(&op.NewCookie)
	})
}

// Encode writes op as cls_lock_set_cookie_op.
func (op SetCookieOp) Encode(e *cephenc.Encoder) { op.denc(cephenc.Encoding(e)) }

// Decode reads a cls_lock_set_cookie_op.
func (op *SetCookieOp) Decode(d *cephenc.Decoder) error { return cephenc.DecodeWith(d, op.denc) }
