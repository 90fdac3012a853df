// C interface to the parts of librados' C++ API that the C API (and so
// go-ceph) lacks: compound write and read operations with every step the
// object store needs (append, truncate, zero, rmxattr, whole-object reads,
// stat with nanoseconds, single getxattr, omap listing with "more"), and
// list_watchers. Every function catches C++ exceptions; errors are negative
// errnos, as in librados.
#ifndef CSI_RBDJ_RADOSOPS_H
#define CSI_RBDJ_RADOSOPS_H

#include <stddef.h>
#include <stdint.h>
#include <rados/librados.h>

#ifdef __cplusplus
extern "C" {
#endif

// An IoCtx of the C++ API sharing the C handle's pool context.
typedef struct csi_ioctx csi_ioctx;
csi_ioctx *csi_ioctx_new(rados_ioctx_t io);
void csi_ioctx_free(csi_ioctx *io);

// Write operations. Data is copied when a step is added.
typedef struct csi_wop csi_wop;
typedef struct csi_rop csi_rop;
csi_wop *csi_wop_new(void);
void csi_wop_free(csi_wop *op);
void csi_wop_create(csi_wop *op, int exclusive);
void csi_wop_remove(csi_wop *op);
void csi_wop_write(csi_wop *op, uint64_t off, const char *buf, size_t len);
void csi_wop_write_full(csi_wop *op, const char *buf, size_t len);
void csi_wop_append(csi_wop *op, const char *buf, size_t len);
// Vectored steps: csi_wop_gather copies one piece of a step's data into
// one buffer, made by the first piece's call with reserve set to the step's
// total; csi_wop_write_gathered and csi_wop_append_gathered add the step
// with that buffer. Returns 0, -ENOMEM, or -EINVAL for a piece past the
// total.
int csi_wop_gather(csi_wop *op, const char *buf, size_t len, size_t reserve);
void csi_wop_write_gathered(csi_wop *op, uint64_t off);
void csi_wop_append_gathered(csi_wop *op);
void csi_wop_truncate(csi_wop *op, uint64_t size);
void csi_wop_zero(csi_wop *op, uint64_t off, uint64_t len);
// kv: n times {u32 key length, key, u32 value length, value} (little-endian)
int csi_wop_omap_set(csi_wop *op, const char *kv, size_t len);
// keys: n times {u32 length, key}
int csi_wop_omap_rm_keys(csi_wop *op, const char *keys, size_t len);
void csi_wop_omap_clear(csi_wop *op);
void csi_wop_setxattr(csi_wop *op, const char *name, const char *buf, size_t len);
void csi_wop_rmxattr(csi_wop *op, const char *name);
void csi_wop_assert_exists(csi_wop *op);
void csi_wop_exec(csi_wop *op, const char *cls, const char *method, const char *in, size_t len);
// Runs op on oid (blocking). Returns 0 or a negative errno.
int csi_wop_operate(csi_ioctx *io, const char *oid, size_t oid_len, csi_wop *op);
// Runs op on oid with the self-managed snapshot context {seq, snaps[0..n)}
// (newest first), so that the OSD clones the object first if seq is newer
// than the object's (blocking).
int csi_wop_operate_snapc(csi_ioctx *io, const char *oid, size_t oid_len, csi_wop *op, uint64_t seq,
                          const uint64_t *snaps, size_t nsnaps);

// cmpext: the operation fails (with -MAX_ERRNO - the offset of the first
// difference) unless the object's bytes at off equal buf (bytes past the
// end compare as zeroes).
void csi_wop_cmpext(csi_wop *op, uint64_t off, const char *buf, size_t len);

// Completion queues: an aio operation's completion is pushed to its queue
// as (token, return value); csi_cq_wait takes them.
typedef struct csi_cq csi_cq;
csi_cq *csi_cq_new(void);
void csi_cq_free(csi_cq *cq);
// Wakes the waiters; once the queue is empty csi_cq_wait returns -1.
void csi_cq_shutdown(csi_cq *cq);
// Blocks until a completion is queued (or shutdown); moves up to max of them
// into tokens and rvals and returns how many (-1 after shutdown, empty).
int csi_cq_wait(csi_cq *cq, uint64_t *tokens, int *rvals, int max);
// Submits op on oid (snapshot context {seq, snaps} when seq or nsnaps is
// not 0) without waiting; its completion goes to cq with token. Operations
// submitted one after the other on one object apply in that order. op must
// live until the completion. Returns 0 or a negative errno (then nothing is
// queued).
int csi_wop_aio_operate(csi_ioctx *io, const char *oid, size_t oid_len, csi_wop *op, uint64_t seq,
                        const uint64_t *snaps, size_t nsnaps, csi_cq *cq, uint64_t token);
// Submits a read of the head of oid; results are ready (csi_rop_rval,
// csi_rop_bytes, ...) once its completion is queued.
int csi_rop_aio_operate(csi_ioctx *io, const char *oid, size_t oid_len, csi_rop *op, csi_cq *cq,
                        uint64_t token);

// Read operations: steps are numbered 0..n-1 when added; their results are
// read after csi_rop_operate.
csi_rop *csi_rop_new(size_t nsteps);
void csi_rop_free(csi_rop *op);
void csi_rop_read(csi_rop *op, size_t i, uint64_t off, uint64_t len);
void csi_rop_stat(csi_rop *op, size_t i);
void csi_rop_omap_get_vals(csi_rop *op, size_t i, const char *after, size_t after_len,
                           const char *prefix, size_t prefix_len, uint64_t max);
int csi_rop_omap_get_vals_by_keys(csi_rop *op, size_t i, const char *keys, size_t len);
void csi_rop_getxattr(csi_rop *op, size_t i, const char *name);
void csi_rop_getxattrs(csi_rop *op, size_t i);
void csi_rop_assert_exists(csi_rop *op, size_t i);
void csi_rop_exec(csi_rop *op, size_t i, const char *cls, const char *method, const char *in, size_t len);
int csi_rop_operate(csi_ioctx *io, const char *oid, size_t oid_len, csi_rop *op);
// csi_rop_operate reading the object as of snapshot snapid.
int csi_rop_operate_snap(csi_ioctx *io, const char *oid, size_t oid_len, csi_rop *op, uint64_t snapid);
// The step's return value (0 or a negative errno; 0 also if it did not run).
int csi_rop_rval(csi_rop *op, size_t i);
// The step's bytes: data read, exec output, xattr value, or, for omap and
// xattrs steps, the entries encoded as {u8 more, u32 n, n times {u32 klen,
// key, u32 vlen, value}}. Valid until csi_rop_free.
void csi_rop_bytes(csi_rop *op, size_t i, const char **buf, size_t *len);
// The stat step's result.
void csi_rop_stat_result(csi_rop *op, size_t i, uint64_t *size, int64_t *sec, int64_t *nsec);

// list_watchers: the watchers of oid encoded as n times {u32 addr length,
// addr, i64 watcher id, u64 cookie, u32 timeout seconds}; free *out with
// csi_free.
int csi_list_watchers(csi_ioctx *io, const char *oid, size_t oid_len, char **out, size_t *out_len);
void csi_free(void *p);

// Self-managed snapshot ids of the pool (blocking).
int csi_selfmanaged_snap_create(csi_ioctx *io, uint64_t *snapid);
int csi_selfmanaged_snap_remove(csi_ioctx *io, uint64_t snapid);

// notify2: sends buf to the watchers of oid and waits up to timeout_ms
// (0: librados' default) for their acks. *out (free with csi_free) is
// librados' reply: {u32 n, n times {u64 gid, u64 cookie, u32 len, reply}},
// {u32 n, n times {u64 gid, u64 cookie}} (acks, then timeouts). Returns
// -ETIMEDOUT if a watcher did not ack; *out is set then too.
int csi_notify(csi_ioctx *io, const char *oid, size_t oid_len, const char *buf, size_t len,
               uint64_t timeout_ms, char **out, size_t *out_len);

// Watches. Callbacks go to the Go functions csiWatchNotify and
// csiWatchError (watch.go) with the token given to csi_watch; they must not
// block. After csi_unwatch, rados_watch_flush must run before
// csi_watch_free (callbacks may still be queued).
typedef struct csi_watch csi_watch;
int csi_watch_new(csi_ioctx *io, const char *oid, size_t oid_len, uint64_t token, uint32_t timeout_s,
              csi_watch **out);
uint64_t csi_watch_handle(csi_watch *w);
int csi_watch_check(csi_ioctx *io, csi_watch *w);
int csi_unwatch(csi_ioctx *io, csi_watch *w);
void csi_watch_free(csi_watch *w);
int csi_notify_ack(csi_ioctx *io, const char *oid, size_t oid_len, uint64_t notify_id, uint64_t cookie,
                   const char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
