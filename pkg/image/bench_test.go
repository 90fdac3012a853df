package image

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local/localtest"
)

// benchImage creates a 64 MiB image with 4 MiB objects on a local cluster,
// with fsync (durable, as in production) or without.
func benchImage(b *testing.B, sync bool) *Image {
	b.Helper()
	_, p := localtest.Open(b, b.TempDir(), local.Options{NoSync: !sync})
	return mustCreate(b, p, "bench", 64<<20, CreateOptions{})
}

// BenchmarkWriteAt writes sequentially through the image, wrapping around.
func BenchmarkWriteAt(b *testing.B) {
	for _, sync := range []bool{true, false} {
		for _, size := range []int{4 << 10, 64 << 10} {
			b.Run(fmt.Sprintf("%dK/sync=%v", size>>10, sync), func(b *testing.B) {
				img := benchImage(b, sync)
				ctx := context.Background()
				buf := make([]byte, size)
				for i := range buf {
					buf[i] = byte(i)
				}
				sequential(b, img.Size(), buf, func(off int64) error {
					_, err := img.WriteAt(ctx, buf, off)
					return err
				})
			})
		}
	}
}

// BenchmarkReadAt reads sequentially through a fully written image.
func BenchmarkReadAt(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("%dK", size>>10), func(b *testing.B) {
			img := benchImage(b, false)
			ctx := context.Background()
			fill := make([]byte, 4<<20)
			for off := int64(0); off < img.Size(); off += int64(len(fill)) {
				if _, err := img.WriteAt(ctx, fill, off); err != nil {
					b.Fatal(err)
				}
			}
			buf := make([]byte, size)
			sequential(b, img.Size(), buf, func(off int64) error {
				_, err := img.ReadAt(ctx, buf, off)
				return err
			})
		})
	}
}

// sequential times io of buf at consecutive offsets of an image of size
// bytes, wrapping around, one call per iteration.
func sequential(b *testing.B, size int64, buf []byte, io func(off int64) error) {
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	off := int64(0)
	for b.Loop() {
		if err := io(off); err != nil {
			b.Fatal(err)
		}
		off = (off + int64(len(buf))) % size
	}
}

// BenchmarkWriteAtParallel writes 4K blocks from 16 goroutines at once,
// durably: the local backend commits concurrent operations together.
func BenchmarkWriteAtParallel(b *testing.B) {
	img := benchImage(b, true)
	ctx := context.Background()
	const size = 4 << 10
	var next atomic.Int64
	b.SetBytes(size)
	b.SetParallelism(16 / runtime.GOMAXPROCS(0))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, size)
		for pb.Next() {
			off := next.Add(size) % img.Size()
			if _, err := img.WriteAt(ctx, buf, off); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
