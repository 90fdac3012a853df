package blockdev

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local/localtest"
)

// BenchmarkWrite measures writes through the device (no kernel path):
// journaled with each ack policy and unjournaled, queue depth 1 and 16;
// the run ends with a Flush (write-back writes count once durable).
func BenchmarkWrite(b *testing.B) {
	modes := []struct {
		name string
		o    Options
	}{
		{"journaled-applied", Options{AckPolicy: AckApplied}},
		{"journaled-journaled", Options{AckPolicy: AckJournaled}},
		{"journaled-writeback", Options{AckPolicy: AckWriteBack}},
		{"unjournaled", Options{Unjournaled: true}},
	}
	for _, size := range []int{4 << 10, 1 << 20} {
		for _, qd := range []int{1, 16} {
			for _, m := range modes {
				b.Run(fmt.Sprintf("%dK/qd%d/%s", size>>10, qd, m.name), func(b *testing.B) {
					ctx := context.Background()
					c, pool := localtest.Open(b, b.TempDir(), local.Options{})
					newImage(b, pool, "vol", 22)
					d := openDevice(b, pool, "vol", m.o)
					b.SetBytes(int64(size))
					b.ResetTimer()
					var wg sync.WaitGroup
					per := (b.N + qd - 1) / qd
					for w := 0; w < qd; w++ {
						wg.Add(1)
						go func(w int) {
							defer wg.Done()
							r := rand.New(rand.NewPCG(uint64(w), 1))
							buf := make([]byte, size)
							for i := 0; i < per; i++ {
								off := r.Int64N(testSize/int64(size)) * int64(size)
								if _, err := d.WriteAt(ctx, buf, off); err != nil {
									b.Error(err)
									return
								}
							}
						}(w)
					}
					wg.Wait()
					// Write-back writes count once durable.
					if err := d.Flush(ctx); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					st := c.Stats()
					b.ReportMetric(float64(st.Syncs)/float64(per*qd), "syncs/write")
					b.ReportMetric(float64(st.Ops)/float64(max(st.Batches, 1)), "ops/batch")
				})
			}
		}
	}
}
