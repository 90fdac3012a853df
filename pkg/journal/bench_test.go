package journal

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
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

// BenchmarkPipelined measures durable appends with one and with two waves
// in flight (Settings.MaxInflightWaves; 1 is the baseline, measured in the
// same run) on the local backend, splay width 1 as the driver creates
// journals: window appends outstanding, like a block device's queue depth.
// The Ceph variant is BenchmarkCephPipelined.
func BenchmarkPipelined(b *testing.B) {
	benchPipelined(b, func(b *testing.B) objstore.Pool { return newPool(b) })
}

func benchPipelined(b *testing.B, newPool func(b *testing.B) objstore.Pool) {
	for _, c := range []struct{ size, window int }{{4 << 10, 1}, {4 << 10, 16}, {64 << 10, 4}} {
		for _, waves := range []int{1, 2} {
			b.Run(fmt.Sprintf("%dKiB/window=%d/waves=%d", c.size>>10, c.window, waves), func(b *testing.B) {
				pool := newPool(b)
				id := fmt.Sprintf("bench%x", time.Now().UnixNano())
				b.Cleanup(func() { _ = Remove(context.Background(), pool, nil, id) }) // after Close
				j, tag := newJournalWidth(b, pool, id, 1, Settings{MaxInflightWaves: waves})
				data := make([]byte, c.size)
				b.SetBytes(int64(c.size))
				b.ResetTimer()
				start := time.Now()
				inflight := make([]*Future, 0, c.window)
				var lat time.Duration
				starts := map[*Future]time.Time{}
				for i := 0; i < b.N; i++ {
					if len(inflight) == c.window {
						f := inflight[0]
						if err := f.Wait(context.Background()); err != nil {
							b.Fatal(err)
						}
						lat += time.Since(starts[f])
						delete(starts, f)
						j.Committed(f.CommitTid)
						inflight = inflight[1:]
					}
					f := j.Append(tag, data)
					starts[f] = time.Now()
					inflight = append(inflight, f)
				}
				if err := j.Flush(context.Background()); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "appends/s")
				if done := b.N - len(inflight); done > 0 {
					b.ReportMetric(float64(lat.Microseconds())/float64(done), "µs/append")
				}
				st := j.Stats()
				b.ReportMetric(float64(st.Pipelined)/float64(max(st.Waves, 1)), "pipelined/wave")
			})
		}
	}
}
