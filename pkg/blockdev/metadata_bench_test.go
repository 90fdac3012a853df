package blockdev

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local/localtest"
)

// BenchmarkMetadataSeqWrite measures a sequential stream of writes with
// four in flight (fio's seqwrite QD4, without the kernel path) through a
// metadata-mode device and through the unjournaled device on the local
// backend: what metadata mode costs on top of writing the data in place.
// It reports the local store's syncs and operations per write.
func BenchmarkMetadataSeqWrite(b *testing.B) {
	const span = 256 << 20
	for _, size := range []int{64 << 10, 1 << 20} {
		for _, m := range []struct {
			name string
			o    Options
		}{
			{"unjournaled", Options{Unjournaled: true}},
			{"metadata", Options{JournalMode: JournalMetadata}},
		} {
			b.Run(fmt.Sprintf("%dK/qd4/%s", size>>10, m.name), func(b *testing.B) {
				ctx := context.Background()
				c, pool := localtest.Open(b, b.TempDir(), local.Options{})
				co := image.CreateOptions{Order: 22}
				if m.o.JournalMode == JournalMetadata {
					co.Features = metadataFeatures
				}
				if err := image.Create(ctx, pool, "vol", span, co); err != nil {
					b.Fatal(err)
				}
				o := m.o
				o.Journal.CommitAge = 0 // the default, as served
				d, err := Open(ctx, pool, "vol", o)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { d.Close(context.Background()) })
				before := c.Stats()
				b.SetBytes(int64(size))
				b.ResetTimer()
				var next atomic.Int64
				var wg sync.WaitGroup
				for w := 0; w < 4; w++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						buf := make([]byte, size)
						for i := range buf {
							buf[i] = byte(i*7 + w)
						}
						for {
							n := next.Add(1) - 1
							if n >= int64(b.N) {
								return
							}
							off := n * int64(size) % span
							if _, err := d.WriteAt(ctx, buf, off); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				b.StopTimer()
				st := c.Stats()
				ops, batches, syncs := st.Ops-before.Ops, st.Batches-before.Batches, st.Syncs-before.Syncs
				b.ReportMetric(float64(syncs)/float64(b.N), "syncs/write")
				b.ReportMetric(float64(ops)/float64(b.N), "ops/write")
				b.ReportMetric(float64(ops)/float64(max(batches, 1)), "ops/batch")
			})
		}
	}
}
