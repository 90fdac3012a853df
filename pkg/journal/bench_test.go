package journal

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkAppend measures durable appends on the local backend: every
// append is fsync'd before its future completes; group commit batches the
// appends that wait together. window is how many appends are outstanding,
// like a block device's queue depth.
func BenchmarkAppend(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10} {
		for _, window := range []int{1, 16, 128} {
			b.Run(fmt.Sprintf("%dKiB/window=%d", size>>10, window), func(b *testing.B) {
				pool := newPool(b)
				j, tag := newJournal(b, pool, "bench", 24)
				data := make([]byte, size)
				b.SetBytes(int64(size))
				b.ResetTimer()
				start := time.Now()
				inflight := make([]*Future, 0, window)
				for i := 0; i < b.N; i++ {
					if len(inflight) == window {
						if err := inflight[0].Wait(context.Background()); err != nil {
							b.Fatal(err)
						}
						j.Committed(inflight[0].CommitTid)
						inflight = inflight[1:]
					}
					inflight = append(inflight, j.Append(tag, data))
				}
				if err := j.Flush(context.Background()); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "appends/s")
			})
		}
	}
}

// BenchmarkReplay measures replay throughput of uncommitted entries.
func BenchmarkReplay(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			pool := newPool(b)
			j, tag := newJournal(b, pool, "bench", 24)
			const total = 64 << 20
			data := make([]byte, size)
			for i := 0; i < total/size; i++ {
				j.Append(tag, data)
			}
			if err := j.Close(context.Background()); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(total)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				j := openJournal(b, pool, "bench")
				n := 0
				if _, err := j.Replay(context.Background(), ReplayOptions{}, func(_ context.Context, e ReplayEntry) error {
					n++
					return nil
				}); err != nil {
					b.Fatal(err)
				}
				if n != total/size {
					b.Fatalf("replayed %d entries", n)
				}
				j.Close(context.Background())
			}
		})
	}
}
