// Package ceph is the objstore backend for a real Ceph cluster, through
// librados (go-ceph v0.34.0 and a small C++ shim for what go-ceph's C API
// lacks: compound operations with every step the contract needs, whole-object
// reads, list_watchers, notify replies).
//
// It is built only with the build tags `ceph pacific` (go-ceph needs
// `pacific` to link against Debian 12's Ceph 16 libraries; `ceph` selects
// this project's Ceph code). Without them the package is empty, so the rest
// of the module builds and tests with no Ceph libraries installed:
//
//	go test -tags ceph,pacific ./pkg/objstore/ceph/
//
// Connect opens a client instance (Config: a ceph.conf and/or monitor
// addresses, a cephx user id and key; the key is never logged); its Pool
// implements objstore.Pool: WriteOp and ReadOp steps map one to one onto a
// librados compound operation (atomic, as on the OSD), errors are
// *objstore.OpError wrapping the syscall.Errno librados returned, watches
// dispatch notifications to the handler one at a time, and Blocklist fences
// another client (its operations then fail with ESHUTDOWN).
//
// Every call honours its context: librados calls block, so they run on a
// goroutine owned by the Cluster and a done context returns ctx.Err() at
// once; rados_osd_op_timeout and rados_mon_op_timeout (Config.OpTimeout)
// bound how long such an abandoned call can run, and Close waits for them.
package ceph
