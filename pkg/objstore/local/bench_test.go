package local

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// BenchmarkAppend measures durable appends (each Operate returns after its
// record is synced): 4 KiB and 64 KiB, from 1 and 16 goroutines appending to
// 16 objects (as the journal and the block device above do); concurrent
// callers share fsyncs through group commit.
func BenchmarkAppend(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10} {
		for _, par := range []int{1, 16} {
			b.Run(fmt.Sprintf("%dKiB/goroutines=%d", size>>10, par), func(b *testing.B) {
				c := openT(b, b.TempDir(), testOptions())
				p := poolT(b, c, "rbd")
				data := make([]byte, size)
				for i := range data {
					data[i] = byte(i)
				}
				b.SetBytes(int64(size))
				b.ResetTimer()
				var next atomic.Int64
				work := func(id int64) {
					op := &objstore.WriteOp{}
					op.Append(data)
					oid := fmt.Sprintf("bench.%d", id%16)
					if err := p.Operate(context.Background(), oid, op); err != nil {
						b.Error(err)
					}
				}
				if par == 1 {
					for i := 0; i < b.N; i++ {
						work(int64(i))
					}
				} else {
					runParallel(b, par, func() { work(next.Add(1)) })
				}
				b.StopTimer()
			})
		}
	}
}

// runParallel runs fn b.N times from exactly n goroutines.
func runParallel(b *testing.B, n int, fn func()) {
	var left atomic.Int64
	left.Store(int64(b.N))
	done := make(chan struct{})
	for g := 0; g < n; g++ {
		go func() {
			defer func() { done <- struct{}{} }()
			for left.Add(-1) >= 0 {
				fn()
			}
		}()
	}
	for g := 0; g < n; g++ {
		<-done
	}
}

// BenchmarkRead measures 4 KiB and 64 KiB reads at random offsets of 4 MiB
// objects, from 1 and 16 goroutines (no locks, no fsync).
func BenchmarkRead(b *testing.B) {
	c := openT(b, b.TempDir(), testOptions())
	p := poolT(b, c, "rbd")
	obj := make([]byte, 4<<20)
	for i := range obj {
		obj[i] = byte(i * 7)
	}
	for i := 0; i < 4; i++ {
		op := &objstore.WriteOp{}
		op.WriteFull(obj)
		if err := p.Operate(context.Background(), fmt.Sprintf("rbd_data.%d", i), op); err != nil {
			b.Fatal(err)
		}
	}
	for _, size := range []int{4 << 10, 64 << 10} {
		for _, par := range []int{1, 16} {
			b.Run(fmt.Sprintf("%dKiB/goroutines=%d", size>>10, par), func(b *testing.B) {
				b.SetBytes(int64(size))
				var next atomic.Int64
				work := func() {
					i := next.Add(1)
					op := &objstore.ReadOp{}
					r := op.Read(uint64((i*7919)%(int64(len(obj)-size))), uint64(size))
					if err := p.Read(context.Background(), fmt.Sprintf("rbd_data.%d", i%4), op); err != nil || len(r.Data()) != size {
						b.Fatal(err)
					}
				}
				b.ResetTimer()
				if par == 1 {
					for i := 0; i < b.N; i++ {
						work()
					}
				} else {
					runParallel(b, par, work)
				}
			})
		}
	}
}
