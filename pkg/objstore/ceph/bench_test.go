//go:build ceph && pacific

package ceph_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
)

// BenchmarkRead4K reads 4 KiB at random offsets of 16 objects of 4 MiB
// from 1 and 16 goroutines, the shape of a 4K random-read fio job on an
// image: it measures what one object-store read costs this process and
// how well reads overlap, through the completion queue (aio) and, as the
// baseline in the same run, through one blocking call per read (sync).
// librados' own ceiling is fio's rados engine:
//
//	fio --ioengine=rados --pool=rbd --clientname=admin --rw=randread --bs=4k \
//	    --iodepth=16 --size=64m --time_based --runtime=5 --name=r
func BenchmarkRead4K(b *testing.B) {
	p := cephtest.Pool(b)
	ctx := context.Background()
	prefix := fmt.Sprintf("bench-read4k-%d.", time.Now().UnixNano())
	const objects, objSize = 16, 4 << 20
	data := make([]byte, objSize)
	for i := range objects {
		op := &objstore.WriteOp{}
		op.WriteFull(data)
		if err := p.Operate(ctx, fmt.Sprintf("%s%d", prefix, i), op); err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(func() {
		for i := range objects {
			op := &objstore.WriteOp{}
			op.Remove()
			_ = p.Operate(context.Background(), fmt.Sprintf("%s%d", prefix, i), op)
		}
	})
	for _, tc := range []struct {
		mode string
		qd   int
	}{{"sync", 1}, {"aio", 1}, {"sync", 16}, {"aio", 16}} {
		qd := tc.qd
		b.Run(fmt.Sprintf("%s/QD%d", tc.mode, qd), func(b *testing.B) {
			ceph.SetSyncOps(p, tc.mode == "sync")
			defer ceph.SetSyncOps(p, false)
			// Every read gets a cancellable context, like a device's
			// backend calls.
			rctx, cancel := context.WithCancel(ctx)
			defer cancel()
			var next atomic.Int64
			var wg sync.WaitGroup
			var failed atomic.Value
			start, cpu0 := time.Now(), cpuTime()
			for range qd {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						oid := fmt.Sprintf("%s%d", prefix, rand.IntN(objects))
						off := uint64(rand.IntN(objSize/4096)) * 4096
						op := &objstore.ReadOp{}
						r := op.Read(off, 4096)
						if err := p.Read(rctx, oid, op); err != nil {
							failed.Store(err)
							return
						}
						if len(r.Data()) != 4096 {
							failed.Store(fmt.Errorf("short read %d", len(r.Data())))
							return
						}
					}
				}()
			}
			wg.Wait()
			if err, _ := failed.Load().(error); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "IOPS")
			// On a shared machine throughput follows the load; the CPU
			// this process spends per read does much less.
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

// cpuTime is the CPU time (user and system) this process has used, all
// threads included (librados' too).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
