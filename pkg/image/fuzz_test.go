package image

import (
	"context"
	"sync"
	"testing"
)

// FuzzObjectNumber checks that objectNumber accepts exactly the names
// dataOID makes and returns their number.
func FuzzObjectNumber(f *testing.F) {
	f.Add("rbd_data.abc", "rbd_data.abc.000000000000002a", uint64(42))
	f.Add("rbd_data.abc", "rbd_data.abc.ffffffffffffffff", uint64(0))
	f.Add("p", "p.+00000000000002a", uint64(1))
	f.Fuzz(func(t *testing.T, prefix, oid string, n uint64) {
		if got, ok := objectNumber(prefix, dataOID(prefix, n)); !ok || got != n {
			t.Fatalf("objectNumber(dataOID(%q, %d)) = %d, %v", prefix, n, got, ok)
		}
		if got, ok := objectNumber(prefix, oid); ok && dataOID(prefix, got) != oid {
			t.Fatalf("objectNumber accepted %q as %d, which is named %q", oid, got, dataOID(prefix, got))
		}
	})
}

// FuzzExtents checks the mapping of an image extent onto objects: the
// pieces stay inside one object each, are contiguous in order, and cover
// the extent exactly.
func FuzzExtents(f *testing.F) {
	f.Add(uint8(12), int64(0), int64(1))
	f.Add(uint8(12), int64(4095), int64(2))
	f.Add(uint8(22), int64(1<<40-3), int64(9<<22+5))
	f.Fuzz(func(t *testing.T, order uint8, off, length int64) {
		order = MinOrder + order%(MaxOrder-MinOrder+1)
		if off < 0 || length < 0 || length > 64<<order || off > 1<<50 {
			return
		}
		img := &Image{order: order}
		next := off
		var (
			mu     sync.Mutex
			pieces []extent
		)
		err := img.forEachExtent(context.Background(), off, length, func(_ context.Context, e extent) error {
			mu.Lock()
			pieces = append(pieces, e)
			mu.Unlock()
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		// Pieces may arrive in any order when run in parallel.
		seen := map[uint64]extent{}
		for _, e := range pieces {
			seen[e.objNo] = e
		}
		if len(seen) != len(pieces) {
			t.Fatalf("object repeated in %+v", pieces)
		}
		objSize := uint64(1) << order
		for n := uint64(off) >> order; next < off+length; n++ {
			e, ok := seen[n]
			if !ok {
				t.Fatalf("no piece for object %d", n)
			}
			if e.objOff+e.length > objSize || e.length == 0 {
				t.Fatalf("piece %+v crosses its object of %d bytes", e, objSize)
			}
			if int64(n<<order+e.objOff) != next || off+e.bufOff != next {
				t.Fatalf("piece %+v does not start at %d", e, next)
			}
			next += int64(e.length)
			delete(seen, n)
		}
		if next != off+length || len(seen) != 0 {
			t.Fatalf("pieces cover up to %d, want %d; left over %+v", next, off+length, seen)
		}
	})
}
