package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"golang.org/x/sync/errgroup"
)

func TestDataOID(t *testing.T) {
	tests := []struct {
		n    uint64
		want string
	}{
		{0, "rbd_data.102770f22d36.0000000000000000"},
		{0x2a, "rbd_data.102770f22d36.000000000000002a"},
		{math.MaxUint64, "rbd_data.102770f22d36.ffffffffffffffff"},
	}
	for _, tt := range tests {
		if got := dataOID("rbd_data.102770f22d36", tt.n); got != tt.want {
			t.Errorf("dataOID(%d) = %s, want %s", tt.n, got, tt.want)
		}
		if n, ok := objectNumber("rbd_data.102770f22d36", tt.want); !ok || n != tt.n {
			t.Errorf("objectNumber(%s) = %d, %v", tt.want, n, ok)
		}
	}
	for _, bad := range []string{"rbd_data.102770f22d36.00000000000000", "rbd_data.102770f22d36.000000000000002A",
		"rbd_data.102770f22d36x000000000000002a", "rbd_data.x.000000000000002a", "rbd_data.102770f22d36.00000000000000-1"} {
		if _, ok := objectNumber("rbd_data.102770f22d36", bad); ok {
			t.Errorf("objectNumber accepted %s", bad)
		}
	}
}

// model is the reference an image's contents are checked against.
type model struct {
	b []byte
}

func (m *model) write(p []byte, off int64) { copy(m.b[off:], p) }
func (m *model) zero(off, n int64)         { clear(m.b[off : off+n]) }

// TestIOModel runs random reads, writes, discards and write-zeroes over
// small objects (so that most of them cross object boundaries) and checks
// every read against a byte slice that models the image, then the data
// objects themselves: none past the image's end, none larger than an
// object, and each one's bytes where the model says.
func TestIOModel(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			p := newPool(t)
			ctx := ctxT(t)
			const order = 12
			const obj = 1 << order
			size := int64(16*obj + 1000) // the last object is partial
			img := mustCreate(t, p, "vol", size, CreateOptions{Order: order, Features: clsrbd.FeatureLayering})
			m := &model{b: make([]byte, size)}
			rng := rand.New(rand.NewPCG(seed, 0))
			// Offsets and lengths cluster around object boundaries.
			point := func() int64 {
				switch rng.IntN(3) {
				case 0:
					return rng.Int64N(size + 1)
				default:
					o := rng.Int64N(size/obj+1)*obj + rng.Int64N(9) - 4
					return min(max(o, 0), size)
				}
			}
			extent := func() (int64, int64) {
				a, b := point(), point()
				if rng.IntN(4) == 0 {
					b = a + rng.Int64N(3*obj)
				}
				a, b = min(a, b), max(a, b)
				return a, min(b, size) - a
			}
			for i := range 600 {
				off, n := extent()
				switch op := rng.IntN(10); {
				case op < 4:
					buf := make([]byte, n)
					for j := range buf {
						buf[j] = byte(rng.IntN(255) + 1)
					}
					if _, err := img.WriteAt(ctx, buf, off); err != nil {
						t.Fatalf("op %d write [%d,+%d): %v", i, off, n, err)
					}
					m.write(buf, off)
				case op < 6:
					if err := img.Discard(ctx, off, n); err != nil {
						t.Fatalf("op %d discard [%d,+%d): %v", i, off, n, err)
					}
					m.zero(off, n)
				case op < 7:
					if err := img.WriteZeroes(ctx, off, n); err != nil {
						t.Fatalf("op %d write zeroes [%d,+%d): %v", i, off, n, err)
					}
					m.zero(off, n)
				default:
					buf := make([]byte, n)
					for j := range buf {
						buf[j] = 0xee // must be overwritten, zeros included
					}
					if _, err := img.ReadAt(ctx, buf, off); err != nil {
						t.Fatalf("op %d read [%d,+%d): %v", i, off, n, err)
					}
					if !bytes.Equal(buf, m.b[off:off+n]) {
						t.Fatalf("op %d read [%d,+%d) differs from the model", i, off, n)
					}
				}
			}
			all := make([]byte, size)
			if _, err := img.ReadAt(ctx, all, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(all, m.b) {
				t.Fatal("image differs from the model")
			}
			last := uint64((size - 1) / obj)
			for _, oid := range objects(t, p, "rbd_data.") {
				n, ok := objectNumber(img.ObjectPrefix(), oid)
				if !ok || n > last {
					t.Fatalf("stray data object %s", oid)
				}
				d, _ := data(t, p, oid)
				start := int64(n) * obj
				if int64(len(d)) > obj || start+int64(len(d)) > size && !allZero(d[size-start:]) {
					t.Fatalf("object %s is %d bytes", oid, len(d))
				}
				if !bytes.Equal(d, m.b[start:start+int64(len(d))]) {
					t.Fatalf("object %s holds other bytes than the model", oid)
				}
			}
		})
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func TestSparseRead(t *testing.T) {
	ctx := ctxT(t)
	const obj = 1 << 12
	p, img := newTestImage(t, 4*obj)
	buf := bytes.Repeat([]byte{0xee}, 4*obj)
	if _, err := img.ReadAt(ctx, buf, 0); err != nil || !allZero(buf) {
		t.Fatalf("fresh image: %v, zero %v", err, allZero(buf))
	}
	if len(objects(t, p, "rbd_data.")) != 0 {
		t.Fatal("a read created objects")
	}
	// A short object (10 bytes written at 100) reads as zeros around them.
	if _, err := img.WriteAt(ctx, []byte("0123456789"), obj+100); err != nil {
		t.Fatal(err)
	}
	if d, _ := data(t, p, img.DataOID(1)); len(d) != 110 {
		t.Fatalf("object 1 is %d bytes, want 110", len(d))
	}
	buf = bytes.Repeat([]byte{0xee}, 3*obj)
	if _, err := img.ReadAt(ctx, buf, 100); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 3*obj)
	copy(want[obj:], "0123456789")
	if !bytes.Equal(buf, want) {
		t.Fatal("sparse read differs")
	}
}

// TestDiscardSemantics checks what discard and write-zeroes do to each
// object: librbd's choice between remove, truncate and zero.
func TestDiscardSemantics(t *testing.T) {
	const obj = 1 << 12
	size := int64(3*obj + 1000)
	type objState struct {
		exists bool
		size   int
	}
	tests := []struct {
		name      string
		zeroes    bool // WriteZeroes instead of Discard
		off, n    int64
		obj       uint64
		want      objState
		readStart int64
	}{
		{"whole object", false, obj, obj, 1, objState{false, 0}, 0},
		{"tail of object", false, obj + 100, obj - 100, 1, objState{true, 100}, 0},
		{"middle of object", false, obj + 100, 200, 1, objState{true, obj}, 0},
		{"head of object", false, obj, 200, 1, objState{true, obj}, 0},
		{"spanning two objects", false, obj + 100, obj, 1, objState{true, 100}, 0},
		{"last partial object to the end", false, 3 * obj, 1000, 3, objState{false, 0}, 0},
		{"tail of last partial object", false, 3*obj + 10, 990, 3, objState{true, 10}, 0},
		{"write zeroes whole object", true, obj, obj, 1, objState{true, obj}, 0},
		{"write zeroes middle", true, obj + 100, 200, 1, objState{true, obj}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctxT(t)
			p, img := newTestImage(t, size)
			fill := bytes.Repeat([]byte{0x5a}, int(size))
			if _, err := img.WriteAt(ctx, fill, 0); err != nil {
				t.Fatal(err)
			}
			var err error
			if tt.zeroes {
				err = img.WriteZeroes(ctx, tt.off, tt.n)
			} else {
				err = img.Discard(ctx, tt.off, tt.n)
			}
			if err != nil {
				t.Fatal(err)
			}
			d, ok := data(t, p, img.DataOID(tt.obj))
			if got := (objState{ok, len(d)}); got != tt.want {
				t.Fatalf("object %d: %+v, want %+v", tt.obj, got, tt.want)
			}
			got := make([]byte, size)
			if _, err := img.ReadAt(ctx, got, 0); err != nil {
				t.Fatal(err)
			}
			clear(fill[tt.off : tt.off+tt.n])
			if !bytes.Equal(got, fill) {
				t.Fatal("image contents differ")
			}
		})
	}

	// Discarding or zeroing missing objects does not create them.
	ctx := ctxT(t)
	p, img := newTestImage(t, size)
	for _, r := range [][2]int64{{0, size}, {100, 200}, {obj + 10, obj}, {3*obj + 10, 990}} {
		if err := img.Discard(ctx, r[0], r[1]); err != nil {
			t.Fatal(err)
		}
		if err := img.WriteZeroes(ctx, r[0], r[1]); err != nil {
			t.Fatal(err)
		}
	}
	if objs := objects(t, p, "rbd_data."); len(objs) != 0 {
		t.Fatalf("discard created %v", objs)
	}
}

func TestOutOfRange(t *testing.T) {
	ctx := ctxT(t)
	const size = 10000
	_, img := newTestImage(t, size)
	tests := []struct {
		off, n int64
		ok     bool
	}{
		{0, size, true},
		{size, 0, true},
		{size - 1, 1, true},
		{0, 0, true},
		{size, 1, false},
		{size - 1, 2, false},
		{size + 1, 0, false},
		{-1, 1, false},
		{-1, 0, false},
		{0, size + 1, false},
		{math.MaxInt64, 1, false},
		{1, math.MaxInt64, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d+%d", tt.off, tt.n), func(t *testing.T) {
			ops := map[string]func() error{
				"discard":      func() error { return img.Discard(ctx, tt.off, tt.n) },
				"write zeroes": func() error { return img.WriteZeroes(ctx, tt.off, tt.n) },
			}
			if tt.n <= size+1 {
				ops["read"] = func() error { _, err := img.ReadAt(ctx, make([]byte, tt.n), tt.off); return err }
				ops["write"] = func() error { _, err := img.WriteAt(ctx, make([]byte, tt.n), tt.off); return err }
			}
			for name, op := range ops {
				err := op()
				if tt.ok && err != nil {
					t.Errorf("%s: %v", name, err)
				}
				if !tt.ok && !errors.Is(err, ErrOutOfRange) {
					t.Errorf("%s = %v, want ErrOutOfRange", name, err)
				}
			}
		})
	}
	if n, err := img.ReadAt(ctx, make([]byte, 20), size-10); n != 0 || !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("read across the end = %d, %v", n, err)
	}
}

// TestOpenUnsupported opens images this package must not serve, or must
// only read, as they would be found on a Ceph cluster.
func TestOpenUnsupported(t *testing.T) {
	ctx := ctxT(t)
	overlap := func(e *cephenc.Encoder) {
		// cls_rbd_parent v2: pool 99 (not the image's), no namespace,
		// image "parent", snap 4, head overlap 4096.
		m := e.Start(2, 2)
		e.S64(99)
		e.String("")
		e.String("parent")
		e.U64(4)
		e.Bool(true)
		e.U64(4096)
		e.Finish(m)
	}
	tests := []struct {
		name      string
		omap      map[string][]byte
		openErr   error
		writeErr  error
		wantFlags uint64
	}{
		{"object map", map[string][]byte{"features": le64(clsrbd.FeatureLayering | clsrbd.FeatureExclusiveLock | clsrbd.FeatureObjectMap)}, ErrUnsupported, nil, 0},
		{"data pool", map[string][]byte{"features": le64(clsrbd.FeatureDataPool)}, ErrUnsupported, nil, 0},
		{"unknown incompatible feature", map[string][]byte{"features": le64(1 << 40)}, ErrUnsupported, nil, 0},
		{"clone of an image in another pool", map[string][]byte{"parent": cephenc.MarshalFunc(overlap)}, ErrUnsupported, nil, 0},
		{"fancy striping", map[string][]byte{"features": le64(clsrbd.FeatureLayering | clsrbd.FeatureStripingV2), "stripe_unit": le64(4096), "stripe_count": le64(4)}, ErrUnsupported, nil, 0},
		{"default striping", map[string][]byte{"features": le64(clsrbd.FeatureLayering | clsrbd.FeatureStripingV2)}, nil, nil, 0},
		{"snapshots (served: writes carry the snapshot context)", map[string][]byte{"snap_seq": le64(4), "snapshot_0000000000000004": nil}, nil, nil, 0},
		{"non-primary", map[string][]byte{"features": le64(clsrbd.FeatureLayering | clsrbd.FeatureExclusiveLock | clsrbd.FeatureJournaling | clsrbd.FeatureNonPrimary)}, nil, ErrUnsupported, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPool(t)
			img := mustCreate(t, p, "vol", 1<<20, CreateOptions{Features: clsrbd.FeatureLayering})
			var op objstore.WriteOp
			op.SetOmap(tt.omap)
			if err := p.Operate(ctx, clsrbd.HeaderOID(img.ID()), &op); err != nil {
				t.Fatal(err)
			}
			img, err := Open(ctx, p, "vol")
			if tt.openErr != nil {
				if !errors.Is(err, tt.openErr) {
					t.Fatalf("Open = %v, want %v", err, tt.openErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := img.ReadAt(ctx, make([]byte, 10), 0); err != nil {
				t.Fatalf("read: %v", err)
			}
			_, werr := img.WriteAt(ctx, []byte("x"), 0)
			for name, err := range map[string]error{"write": werr, "discard": img.Discard(ctx, 0, 1), "write zeroes": img.WriteZeroes(ctx, 0, 1)} {
				if tt.writeErr == nil && err != nil || tt.writeErr != nil && !errors.Is(err, tt.writeErr) {
					t.Errorf("%s = %v, want %v", name, err, tt.writeErr)
				}
			}
		})
	}

	p := newPool(t)
	if _, err := Open(ctx, p, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open of a missing image = %v, want ErrNotFound", err)
	}
	// An id object whose header is gone.
	var op objstore.WriteOp
	op.Create(true)
	clsrbd.SetID(&op, "abc")
	if err := p.Operate(ctx, clsrbd.IDOID("orphan"), &op); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, p, "orphan"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open without a header = %v, want ErrNotFound", err)
	}
}

// TestConcurrentIO writes disjoint stripes from many goroutines, each
// crossing object boundaries, and reads them back.
func TestConcurrentIO(t *testing.T) {
	ctx := ctxT(t)
	const obj = 1 << 12
	const writers = 8
	const stripe = 3*obj + 123
	p, img := newTestImage(t, writers*stripe)
	var g errgroup.Group
	for w := range writers {
		g.Go(func() error {
			buf := bytes.Repeat([]byte{byte(w + 1)}, stripe)
			for range 5 {
				if _, err := img.WriteAt(ctx, buf, int64(w*stripe)); err != nil {
					return err
				}
				got := make([]byte, stripe)
				if _, err := img.ReadAt(ctx, got, int64(w*stripe)); err != nil {
					return err
				}
				if !bytes.Equal(got, buf) {
					return fmt.Errorf("writer %d read back other data", w)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	// A discard of the whole image fans out over every object.
	if err := img.Discard(ctx, 0, img.Size()); err != nil {
		t.Fatal(err)
	}
	if objs := objects(t, p, "rbd_data."); len(objs) != 0 {
		t.Fatalf("objects after discarding everything: %v", objs)
	}
}

func TestCancelledIO(t *testing.T) {
	_, img := newTestImage(t, 1<<20)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := img.WriteAt(ctx, make([]byte, 3<<12), 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("WriteAt with a cancelled context = %v", err)
	}
	if _, err := img.ReadAt(ctx, make([]byte, 100), 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("ReadAt with a cancelled context = %v", err)
	}
	if err := img.Flush(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Flush with a cancelled context = %v", err)
	}
	if err := img.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}
