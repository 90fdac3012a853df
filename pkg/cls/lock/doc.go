// Package clslock is Ceph's "lock" object class (cls_lock): advisory locks
// on an object, held by clients identified by their entity name
// (client.<id>) and a cookie of their choosing.
//
// It has three parts:
//
//   - the encodings of cls_lock's types and method inputs and outputs
//     (LockInfo, LockOp, EntityName, EntityAddr, ...), byte for byte as Ceph
//     16 (Pacific) writes them;
//   - client calls (Lock, Unlock, BreakLock, AssertLocked, SetCookie add a
//     step to an objstore.WriteOp; GetLockInfo and ListLocks run a read),
//     which send what librados' cls_lock_client sends, so that on Ceph the
//     OSD's own class answers them;
//   - the class itself in Go (Class), for backends that run object classes
//     in-process, such as objstore/local.
//
// # On-object layout
//
// As in Ceph, each lock's state lives in one xattr of the locked object,
// "lock.<name>" (librbd's image lock is "lock.rbd_lock" on
// rbd_header.<image id>), holding an encoded LockInfo:
//
//	lock_info_t           ENCODE_START(1, 1)
//	  map<locker_id_t, locker_info_t> lockers   u32 count, entries in key order
//	    locker_id_t       ENCODE_START(1, 1) { entity_name_t {u8 type, s64 num}, string cookie }
//	    locker_info_t     ENCODE_START(1, 1) { utime_t expiration {u32 sec, u32 nsec},
//	                                           entity_addr_t addr, string description }
//	  u8 lock_type        0 none, 1 exclusive, 2 shared, 3 exclusive-ephemeral
//	  string tag
//
// entity_addr_t is written as an OSD writes it for any Nautilus or later
// client: u8 1, ENCODE_START(1, 1) { u32 type, u32 nonce, u32 sockaddr
// length, u16 family, the sockaddr's remaining bytes }; holders' addresses
// are always of type 1 (v1). The class never removes the xattr: a released
// lock keeps an xattr without holders (and list_locks still lists it),
// except an exclusive-ephemeral lock, whose release removes the object.
// Expired holders are dropped whenever a method reads the lock, and the
// methods that write it write them back dropped.
package clslock
