//go:build ceph && pacific

package ceph

// SetSyncOps makes p run every operation as a blocking call (the path
// before aio), for benchmarks that compare the two in one run.
func SetSyncOps(p *Pool, on bool) { p.syncOps = on }
