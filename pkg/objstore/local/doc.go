// Package local is the embedded objstore backend: a directory on one machine
// holding a RADOS-like cluster of pools, each a flat namespace of objects
// with byte data, an ordered omap and xattrs, changed by compound operations
// that apply atomically and durably, extended by object classes written in
// Go, and observed through watch/notify. Several clients — goroutines of one
// process and several processes — may use one directory at once.
//
//	c, err := local.Open(dir, local.Options{Classes: map[string]objstore.Class{"journal": clsjournal.Class()}})
//	pool, err := c.Pool(ctx, "rbd") // created with the next id (1, 2, ...) if missing
//	defer c.Close()
//
// Each Open is one client instance with a unique ClientInfo (a global id
// allocated in the directory, and an address "local:0/<random nonce>").
//
// # On disk
//
//	<dir>/cluster.json            pool registry (name → id) and the next pool and client ids
//	<dir>/blocklist.json          fenced client addresses and their expiry
//	<dir>/wal                     the write-ahead log (header block, then records)
//	<dir>/shm                     shared memory of the live clients (mmap'ed; not durable)
//	<dir>/open.lock, commit.lock  flock files
//	<dir>/clients/<nonce>.lock    held (flock) by each live client; .sock: its unix socket
//	<dir>/pools/<id>/data/<name>  object data; the file exists iff the object exists;
//	                              its size is the object's size, its mtime the object's mtime
//	<dir>/pools/<id>/meta/<name>  the object's omap and xattrs (CRC-checked), absent if empty
//	<dir>/pools/<id>/names/<name> the full object name, for names too long to be file names
//	<dir>/pools/<id>/watch/<name>/<client id>.<nonce>.<cookie>   one empty file per watch
//	<dir>/pools/<id>/snaps.json   self-managed snapshot ids: the last allocated, the removed
//	                              (objects' snapsets and clones are hidden objects: snap.go)
//
// Object names are escaped for file names (bytes outside [A-Za-z0-9_.-]
// become %XX); an escaped name longer than 200 bytes is replaced by "~" and
// its SHA-256.
//
// # Commit: write-ahead log and group commit
//
// Every client has one committer goroutine. Operate queues the operation
// and waits; the committer takes everything queued as one batch and, under
// the commit lock (an in-process mutex, then an exclusive flock on
// commit.lock, both waited for with the caller's context):
//
//  1. checks that this client is not blocklisted (ESHUTDOWN otherwise);
//  2. runs every operation's steps, class methods included, against a
//     transactional view of its object (the files plus the mutations of the
//     earlier operations of the batch and of its own earlier steps); an
//     operation that fails at any step contributes nothing;
//  3. expresses each successful operation's effect as one record of
//     idempotent, absolute mutations — "remove the object", "create it
//     empty", "these bytes at this offset", "size from A to B (zero-filling
//     [A,B))", "zero this range", "the meta is now exactly these bytes",
//     "mtime is T" — framed with a magic, a length, a log sequence number
//     and a CRC-32C, and appends all records with one write and one
//     fdatasync (group commit: concurrent callers share the fsync);
//  4. applies the records to the object files (no fsync), then completes
//     the operations.
//
// Because every mutation is absolute, applying the log's records in order
// over object files that hold any mix of their effects (a crash in the middle
// of an apply, or a power loss that kept some of the unsynced file writes
// and not others) produces exactly the state after the last record. Recovery
// therefore replays the log's valid prefix: it stops at the first record
// that is short, fails its CRC or breaks the LSN sequence (a torn tail, which
// only an unacknowledged batch can leave), and truncates the log there so
// that no stale record can ever follow a later one.
//
// A batch of lazy operations only (objstore.WriteOp.SetLazy) is written
// and applied without the fdatasync; the client's next non-lazy operation
// syncs the log, and with it those records, even if it logs nothing (one
// that fails, or the pool's Sync). A record is durable only with every
// record logged before it. SubmitBackground queues operations whose
// completion nobody answers at once with new ones: the committer does not
// wait for company after them (the gather after a batch).
//
// The log grows in 4 MiB chunks of written zeros, so a batch overwrites
// allocated blocks and its fdatasync has no file metadata to commit. When
// the log passes Options.MaxLogBytes a committer checkpoints: syncfs (every
// applied change is now durable in the object files), then it rewrites the
// log header with the next LSN and reuses the file from the start (older
// records left behind carry lower LSNs and are never replayed).
//
// Recovery runs in two cases. The first client to open a directory that no
// client has open (it gets open.lock exclusively; live clients hold it
// shared) replays the whole log since the last checkpoint: this covers power
// loss. And a client that takes the commit lock and finds the "busy" word of
// shared memory set knows the previous holder died in the middle of a batch:
// it replays that batch's valid records (syncing them first) and cuts the
// log after them.
//
// # Reads
//
// Reads take no lock and never wait for an fsync: each object name hashes to
// one of 4096 seqlock words in shared memory, which a committer makes odd
// while it applies a record to an object of that bucket. A reader retries if
// the word was odd or changed while it read the files. A word that stays odd
// belongs to a committer that died while applying; a reader that sees the
// commit lock free then runs the recovery itself.
//
// # Watch/notify
//
// A watch is an empty registration file named after the client and cookie.
// Notify reads the registrations of the object and delivers the payload to
// each watcher, directly when the watching client is in the same process and
// over its unix socket otherwise; the watcher's per-watch dispatcher calls
// WatchHandler.HandleNotify serially and Notification.Ack sends the reply
// back. A watcher whose client no longer holds its liveness flock is dead:
// it counts as timed out at once and its registration is removed. Like
// librados, Notify returns ETIMEDOUT (with the result filled in) when some
// watcher did not acknowledge in time. Removing an object disconnects its
// watchers (HandleWatchError with ENOTCONN), as an OSD does.
//
// # Fencing
//
// Cluster.Blocklist writes the address to blocklist.json under the commit
// lock and bumps a version word in shared memory. Every operation of a
// client checks the blocklist (an atomic load unless the version changed);
// for writes the check happens under the commit lock, so a write racing
// Blocklist is either committed before Blocklist returns or fails with
// ESHUTDOWN. A blocklisted client's watches are unregistered and reported
// lost (HandleWatchError with ESHUTDOWN) within about 50 ms.
//
// # Differences from Ceph
//
//   - GetXattr of a missing xattr returns ENOENT (Ceph: ENODATA), as the
//     objstore contract says.
//   - A read-only class method that tries to write gets EPERM from the
//     MethodContext (Ceph reports EIO to the caller); calling a write method
//     from a ReadOp fails with EINVAL.
//   - Omap listings with max <= 0 return up to 131072 entries (Ceph's
//     osd_max_omap_entries_per_request).
//   - Updating omap or xattrs rewrites the object's whole meta file and logs
//     it whole, so very large omaps make their updates proportionally dearer.
//   - Watches do not time out while their client lives; there is no watch
//     ping.
package local
