//go:build ceph && pacific

// See radosops.h.

#include "radosops.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <condition_variable>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <vector>

#include <rados/librados.hpp>

using librados::bufferlist;

struct csi_ioctx {
  librados::IoCtx io;
};

struct csi_wop {
  librados::ObjectWriteOperation op;
  ceph::bufferptr gathered;  // the data of the next vectored step
};

namespace {

enum StepKind { kNone, kRead, kStat, kOmap, kXattr, kXattrs, kExec, kAssert };

struct ReadStep {
  StepKind kind = kNone;
  int rval = 0;
  bufferlist bl;
  std::map<std::string, bufferlist> kv;
  bool more = false;
  uint64_t size = 0;
  struct timespec mtime = {0, 0};
  std::string encoded;  // what csi_rop_bytes returns for map results
};

// call_errno runs f and returns its result, or the negative errno of what
// it threw: no C++ exception may unwind into Go.
template <typename F>
int call_errno(F &&f) {
  try {
    return f();
  } catch (const std::bad_alloc &) {
    return -ENOMEM;
  } catch (...) {
    return -EIO;
  }
}

// new_or_null returns a new T set up by init, or null if either throws
// (the T is freed then).
template <typename T, typename F>
T *new_or_null(F &&init) {
  try {
    std::unique_ptr<T> v(new T);
    init(v.get());
    return v.release();
  } catch (...) {
    return nullptr;
  }
}

void put_u32(std::string *s, uint32_t v) {
  char b[4] = {char(v), char(v >> 8), char(v >> 16), char(v >> 24)};
  s->append(b, 4);
}

void put_u64(std::string *s, uint64_t v) {
  put_u32(s, uint32_t(v));
  put_u32(s, uint32_t(v >> 32));
}

uint32_t get_u32(const char *p) {
  const unsigned char *u = reinterpret_cast<const unsigned char *>(p);
  return uint32_t(u[0]) | uint32_t(u[1]) << 8 | uint32_t(u[2]) << 16 | uint32_t(u[3]) << 24;
}

// next_string reads {u32 length, bytes} at *p (bounded by end).
bool next_string(const char **p, const char *end, std::string *out) {
  if (end - *p < 4) return false;
  uint32_t n = get_u32(*p);
  *p += 4;
  if (uint64_t(end - *p) < n) return false;
  out->assign(*p, n);
  *p += n;
  return true;
}

// parse_keys reads the strings packed in [keys, keys+len) as next_string
// reads them into *out; false if they are malformed.
bool parse_keys(const char *keys, size_t len, std::set<std::string> *out) {
  const char *p = keys, *end = keys + len;
  while (p < end) {
    std::string k;
    if (!next_string(&p, end, &k)) return false;
    out->insert(k);
  }
  return true;
}

bufferlist to_bl(const char *buf, size_t len) {
  bufferlist bl;
  if (len > 0) bl.append(buf, len);
  return bl;
}

// take_gathered returns op's gathered data as a list and leaves none.
bufferlist take_gathered(csi_wop *op) {
  bufferlist bl;
  if (op->gathered.length() > 0) bl.push_back(std::move(op->gathered));
  op->gathered = ceph::bufferptr();
  return bl;
}

}  // namespace

// Exported by watch.go.
extern "C" void csiWatchNotify(uint64_t token, uint64_t notify_id, uint64_t cookie, uint64_t notifier_id,
                               char *data, size_t len);
extern "C" void csiWatchError(uint64_t token, uint64_t cookie, int err);

namespace {

class WatchCtx : public librados::WatchCtx2 {
 public:
  explicit WatchCtx(uint64_t token) : token_(token) {}
  void handle_notify(uint64_t notify_id, uint64_t cookie, uint64_t notifier_id, bufferlist &bl) override {
    csiWatchNotify(token_, notify_id, cookie, notifier_id, bl.length() ? bl.c_str() : nullptr, bl.length());
  }
  void handle_error(uint64_t cookie, int err) override { csiWatchError(token_, cookie, err); }

 private:
  uint64_t token_;
};

}  // namespace

struct csi_watch {
  explicit csi_watch(uint64_t token) : ctx(token) {}
  WatchCtx ctx;
  uint64_t handle = 0;
};

struct csi_rop {
  librados::ObjectReadOperation op;
  std::vector<ReadStep> steps;
  bufferlist out;  // the operation's output buffer (aio reads)
};

// A completion queue: librados completion callbacks push (token, return
// value) pairs, one Go goroutine takes them in batches (csi_cq_wait). It
// replaces one blocked thread per operation in flight by one per cluster.
struct csi_cq {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::pair<uint64_t, int>> done;
  bool shutdown = false;
  bool waiting = false;
};

namespace {

// The callback argument of one aio operation.
struct AioArg {
  csi_cq *cq;
  uint64_t token;
  csi_rop *rop;  // a read whose results are encoded on completion, or null
};

void encode_rop_results(csi_rop *op);

void aio_done(librados::completion_t c, void *arg) {
  AioArg *a = static_cast<AioArg *>(arg);
  // c is the completion's implementation, which the C API takes.
  int r = rados_aio_get_return_value(static_cast<rados_completion_t>(c));
  if (a->rop != nullptr && r >= 0) {
    try {
      encode_rop_results(a->rop);
    } catch (...) {
      r = -ENOMEM;
    }
  }
  csi_cq *cq = a->cq;
  uint64_t token = a->token;
  delete a;
  bool wake;
  {
    std::lock_guard<std::mutex> l(cq->mu);
    cq->done.emplace_back(token, r);
    wake = cq->waiting;
  }
  if (wake) cq->cv.notify_one();
}

}  // namespace

extern "C" {

csi_ioctx *csi_ioctx_new(rados_ioctx_t p) {
  return new_or_null<csi_ioctx>([p](csi_ioctx *io) { librados::IoCtx::from_rados_ioctx_t(p, io->io); });
}

void csi_ioctx_free(csi_ioctx *io) { delete io; }

csi_wop *csi_wop_new(void) {
  return new_or_null<csi_wop>([](csi_wop *) {});
}

void csi_wop_free(csi_wop *op) { delete op; }

void csi_wop_create(csi_wop *op, int exclusive) { op->op.create(exclusive != 0); }
void csi_wop_remove(csi_wop *op) { op->op.remove(); }
void csi_wop_write(csi_wop *op, uint64_t off, const char *buf, size_t len) { op->op.write(off, to_bl(buf, len)); }
void csi_wop_write_full(csi_wop *op, const char *buf, size_t len) { op->op.write_full(to_bl(buf, len)); }
void csi_wop_append(csi_wop *op, const char *buf, size_t len) { op->op.append(to_bl(buf, len)); }
int csi_wop_gather(csi_wop *op, const char *buf, size_t len, size_t reserve) {
  return call_errno([&] {
    if (reserve > 0) {
      // buffer::create, as bufferlist::append allocates: malloc-like
      // alignment. (bufferlist::reserve allocates page-aligned, which
      // fragments the heap: the serving process's RSS grew by a fifth.)
      op->gathered = ceph::buffer::create(reserve);
      op->gathered.set_length(0);
    }
    if (len > op->gathered.unused_tail_length()) return -EINVAL;
    if (len > 0) op->gathered.append(buf, len);
    return 0;
  });
}
// The step takes the gathered buffer (no copy).
void csi_wop_write_gathered(csi_wop *op, uint64_t off) { op->op.write(off, take_gathered(op)); }
void csi_wop_append_gathered(csi_wop *op) { op->op.append(take_gathered(op)); }
void csi_wop_truncate(csi_wop *op, uint64_t size) { op->op.truncate(size); }
void csi_wop_zero(csi_wop *op, uint64_t off, uint64_t len) { op->op.zero(off, len); }

int csi_wop_omap_set(csi_wop *op, const char *kv, size_t len) {
  return call_errno([&] {
    std::map<std::string, bufferlist> m;
    const char *p = kv, *end = kv + len;
    while (p < end) {
      std::string k, v;
      if (!next_string(&p, end, &k) || !next_string(&p, end, &v)) return -EINVAL;
      m[k] = to_bl(v.data(), v.size());
    }
    op->op.omap_set(m);
    return 0;
  });
}

int csi_wop_omap_rm_keys(csi_wop *op, const char *keys, size_t len) {
  return call_errno([&] {
    std::set<std::string> s;
    if (!parse_keys(keys, len, &s)) return -EINVAL;
    op->op.omap_rm_keys(s);
    return 0;
  });
}

void csi_wop_omap_clear(csi_wop *op) { op->op.omap_clear(); }
void csi_wop_setxattr(csi_wop *op, const char *name, const char *buf, size_t len) {
  op->op.setxattr(name, to_bl(buf, len));
}
void csi_wop_rmxattr(csi_wop *op, const char *name) { op->op.rmxattr(name); }
void csi_wop_assert_exists(csi_wop *op) { op->op.assert_exists(); }

void csi_wop_exec(csi_wop *op, const char *cls, const char *method, const char *in, size_t len) {
  bufferlist bl = to_bl(in, len);
  op->op.exec(cls, method, bl);
}

int csi_wop_operate_snapc(csi_ioctx *io, const char *oid, size_t oid_len, csi_wop *op, uint64_t seq,
                          const uint64_t *snaps, size_t nsnaps) {
  return call_errno([&] {
    // The context is the operation's, not the shared I/O context's, so
    // that concurrent writers with different contexts cannot mix them up.
    std::vector<librados::snap_t> v(snaps, snaps + nsnaps);
    librados::AioCompletion *c = librados::Rados::aio_create_completion();
    int r = io->io.aio_operate(std::string(oid, oid_len), c, &op->op, seq, v);
    if (r == 0) {
      c->wait_for_complete();
      r = c->get_return_value();
    }
    c->release();
    return r;
  });
}

int csi_selfmanaged_snap_create(csi_ioctx *io, uint64_t *snapid) {
  return call_errno([&] {
    return io->io.selfmanaged_snap_create(snapid);
  });
}

int csi_selfmanaged_snap_remove(csi_ioctx *io, uint64_t snapid) {
  return call_errno([&] {
    return io->io.selfmanaged_snap_remove(snapid);
  });
}

int csi_wop_operate(csi_ioctx *io, const char *oid, size_t oid_len, csi_wop *op) {
  return call_errno([&] {
    return io->io.operate(std::string(oid, oid_len), &op->op);
  });
}

csi_rop *csi_rop_new(size_t nsteps) {
  // never resized again: librados keeps pointers into the steps
  return new_or_null<csi_rop>([nsteps](csi_rop *op) { op->steps.resize(nsteps); });
}

void csi_rop_free(csi_rop *op) { delete op; }

void csi_rop_read(csi_rop *op, size_t i, uint64_t off, uint64_t len) {
  ReadStep &s = op->steps[i];
  s.kind = kRead;
  // length 0 reads to the end of the object
  op->op.read(off, len, &s.bl, &s.rval);
}

void csi_rop_stat(csi_rop *op, size_t i) {
  ReadStep &s = op->steps[i];
  s.kind = kStat;
  op->op.stat2(&s.size, &s.mtime, &s.rval);
}

void csi_rop_omap_get_vals(csi_rop *op, size_t i, const char *after, size_t after_len,
                           const char *prefix, size_t prefix_len, uint64_t max) {
  ReadStep &s = op->steps[i];
  s.kind = kOmap;
  op->op.omap_get_vals2(std::string(after, after_len), std::string(prefix, prefix_len), max, &s.kv, &s.more,
                        &s.rval);
}

int csi_rop_omap_get_vals_by_keys(csi_rop *op, size_t i, const char *keys, size_t len) {
  return call_errno([&] {
    ReadStep &s = op->steps[i];
    s.kind = kOmap;
    std::set<std::string> set;
    if (!parse_keys(keys, len, &set)) return -EINVAL;
    op->op.omap_get_vals_by_keys(set, &s.kv, &s.rval);
    return 0;
  });
}

void csi_rop_getxattr(csi_rop *op, size_t i, const char *name) {
  ReadStep &s = op->steps[i];
  s.kind = kXattr;
  op->op.getxattr(name, &s.bl, &s.rval);
}

void csi_rop_getxattrs(csi_rop *op, size_t i) {
  ReadStep &s = op->steps[i];
  s.kind = kXattrs;
  op->op.getxattrs(&s.kv, &s.rval);
}

void csi_rop_assert_exists(csi_rop *op, size_t i) {
  op->steps[i].kind = kAssert;
  op->op.assert_exists();
}

void csi_rop_exec(csi_rop *op, size_t i, const char *cls, const char *method, const char *in, size_t len) {
  ReadStep &s = op->steps[i];
  s.kind = kExec;
  bufferlist bl = to_bl(in, len);
  op->op.exec(cls, method, bl, &s.bl, &s.rval);
}

int csi_rop_operate(csi_ioctx *io, const char *oid, size_t oid_len, csi_rop *op) {
  return csi_rop_operate_snap(io, oid, oid_len, op, LIBRADOS_SNAP_HEAD);
}

int csi_rop_operate_snap(csi_ioctx *io, const char *oid, size_t oid_len, csi_rop *op, uint64_t snapid) {
  return call_errno([&] {
    bufferlist out;
    int r;
    if (snapid == LIBRADOS_SNAP_HEAD) {
      r = io->io.operate(std::string(oid, oid_len), &op->op, &out);
    } else {
      // The snapshot is set on a private copy of the I/O context, not on
      // the shared one that concurrent readers use.
      librados::IoCtx snapio;
      snapio.dup(io->io);
      snapio.snap_set_read(snapid);
      r = snapio.operate(std::string(oid, oid_len), &op->op, &out);
    }
    encode_rop_results(op);
    return r;
  });
}

}  // extern "C"

namespace {

// encode_rop_results encodes the omap and xattr listings of a completed
// read for csi_rop_bytes.
void encode_rop_results(csi_rop *op) {
  for (ReadStep &s : op->steps) {
    if (s.kind == kOmap || s.kind == kXattrs) {
      s.encoded.clear();
      s.encoded.push_back(s.more ? 1 : 0);
      put_u32(&s.encoded, uint32_t(s.kv.size()));
      for (auto &e : s.kv) {
        put_u32(&s.encoded, uint32_t(e.first.size()));
        s.encoded.append(e.first);
        put_u32(&s.encoded, uint32_t(e.second.length()));
        s.encoded.append(e.second.c_str(), e.second.length());
      }
    }
  }
}

}  // namespace

extern "C" {

csi_cq *csi_cq_new(void) {
  return new_or_null<csi_cq>([](csi_cq *) {});
}

void csi_cq_free(csi_cq *cq) { delete cq; }

void csi_cq_shutdown(csi_cq *cq) {
  {
    std::lock_guard<std::mutex> l(cq->mu);
    cq->shutdown = true;
  }
  cq->cv.notify_all();
}

int csi_cq_wait(csi_cq *cq, uint64_t *tokens, int *rvals, int max) {
  std::unique_lock<std::mutex> l(cq->mu);
  cq->waiting = true;
  cq->cv.wait(l, [cq] { return !cq->done.empty() || cq->shutdown; });
  cq->waiting = false;
  int n = 0;
  while (n < max && !cq->done.empty()) {
    tokens[n] = cq->done.front().first;
    rvals[n] = cq->done.front().second;
    cq->done.pop_front();
    n++;
  }
  if (n == 0 && cq->shutdown) return -1;
  return n;
}

int csi_wop_aio_operate(csi_ioctx *io, const char *oid, size_t oid_len, csi_wop *op, uint64_t seq,
                        const uint64_t *snaps, size_t nsnaps, csi_cq *cq, uint64_t token) {
  AioArg *a = nullptr;
  return call_errno([&] {
    a = new AioArg{cq, token, nullptr};
    librados::AioCompletion *c = librados::Rados::aio_create_completion(a, aio_done);
    int r;
    if (seq != 0 || nsnaps != 0) {
      std::vector<librados::snap_t> v(snaps, snaps + nsnaps);
      r = io->io.aio_operate(std::string(oid, oid_len), c, &op->op, seq, v);
    } else {
      r = io->io.aio_operate(std::string(oid, oid_len), c, &op->op);
    }
    if (r < 0) delete a;  // never submitted: no callback
    c->release();
    return r;
  });
}

int csi_rop_aio_operate(csi_ioctx *io, const char *oid, size_t oid_len, csi_rop *op, csi_cq *cq,
                        uint64_t token) {
  return call_errno([&] {
    AioArg *a = new AioArg{cq, token, op};
    librados::AioCompletion *c = librados::Rados::aio_create_completion(a, aio_done);
    int r = io->io.aio_operate(std::string(oid, oid_len), c, &op->op, &op->out);
    if (r < 0) delete a;
    c->release();
    return r;
  });
}

void csi_wop_cmpext(csi_wop *op, uint64_t off, const char *buf, size_t len) {
  op->op.cmpext(off, to_bl(buf, len), nullptr);
}

int csi_rop_rval(csi_rop *op, size_t i) { return op->steps[i].rval; }

void csi_rop_bytes(csi_rop *op, size_t i, const char **buf, size_t *len) {
  ReadStep &s = op->steps[i];
  if (s.kind == kOmap || s.kind == kXattrs) {
    *buf = s.encoded.data();
    *len = s.encoded.size();
    return;
  }
  *len = s.bl.length();
  *buf = *len ? s.bl.c_str() : nullptr;
}

void csi_rop_stat_result(csi_rop *op, size_t i, uint64_t *size, int64_t *sec, int64_t *nsec) {
  ReadStep &s = op->steps[i];
  *size = s.size;
  *sec = s.mtime.tv_sec;
  *nsec = s.mtime.tv_nsec;
}

int csi_list_watchers(csi_ioctx *io, const char *oid, size_t oid_len, char **out, size_t *out_len) {
  return call_errno([&] {
    std::list<obj_watch_t> ws;
    int r = io->io.list_watchers(std::string(oid, oid_len), &ws);
    if (r < 0) return r;
    std::string enc;
    for (auto &w : ws) {
      size_t n = strnlen(w.addr, sizeof(w.addr));
      put_u32(&enc, uint32_t(n));
      enc.append(w.addr, n);
      put_u64(&enc, uint64_t(w.watcher_id));
      put_u64(&enc, w.cookie);
      put_u32(&enc, w.timeout_seconds);
    }
    *out_len = enc.size();
    *out = static_cast<char *>(malloc(enc.size() + 1));
    if (*out == nullptr) return -ENOMEM;
    memcpy(*out, enc.data(), enc.size());
    return 0;
  });
}

void csi_free(void *p) { free(p); }

int csi_notify(csi_ioctx *io, const char *oid, size_t oid_len, const char *buf, size_t len,
               uint64_t timeout_ms, char **out, size_t *out_len) {
  *out = nullptr;
  *out_len = 0;
  return call_errno([&] {
    bufferlist bl = to_bl(buf, len), reply;
    int r = io->io.notify2(std::string(oid, oid_len), bl, timeout_ms, &reply);
    if (reply.length() > 0) {
      *out = static_cast<char *>(malloc(reply.length()));
      if (*out == nullptr) return -ENOMEM;
      reply.begin().copy(reply.length(), *out);
      *out_len = reply.length();
    }
    return r;
  });
}

int csi_watch_new(csi_ioctx *io, const char *oid, size_t oid_len, uint64_t token, uint32_t timeout_s,
              csi_watch **out) {
  *out = nullptr;
  return call_errno([&] {
    csi_watch *w = new csi_watch(token);
    int r = io->io.watch3(std::string(oid, oid_len), &w->handle, &w->ctx, timeout_s);
    if (r < 0) {
      delete w;
      return r;
    }
    *out = w;
    return 0;
  });
}

uint64_t csi_watch_handle(csi_watch *w) { return w->handle; }

int csi_watch_check(csi_ioctx *io, csi_watch *w) {
  return call_errno([&] {
    return io->io.watch_check(w->handle);
  });
}

int csi_unwatch(csi_ioctx *io, csi_watch *w) {
  return call_errno([&] {
    return io->io.unwatch2(w->handle);
  });
}

void csi_watch_free(csi_watch *w) { delete w; }

int csi_notify_ack(csi_ioctx *io, const char *oid, size_t oid_len, uint64_t notify_id, uint64_t cookie,
                   const char *buf, size_t len) {
  return call_errno([&] {
    bufferlist bl = to_bl(buf, len);
    io->io.notify_ack(std::string(oid, oid_len), notify_id, cookie, bl);
    return 0;
  });
}

}  // extern "C"
