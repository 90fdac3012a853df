package image

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// extent is the part of an image extent that falls in one data object.
type extent struct {
	objNo  uint64
	objOff uint64 // offset in the object
	length uint64
	bufOff int64 // offset from the start of the image extent
}

// checkRange validates the image extent [off, off+length) against size.
func (img *Image) checkRange(op string, off, length int64) (size int64, err error) {
	img.mu.RLock()
	size = img.size
	img.mu.RUnlock()
	if off < 0 || length < 0 || off > size || length > size-off {
		return 0, fmt.Errorf("%s image %q [%d, +%d): %w (size %d)", op, img.name, off, length, ErrOutOfRange, size)
	}
	return size, nil
}

// checkWritable refuses writes to images that must not be written.
func (img *Image) checkWritable(op string) error {
	img.mu.RLock()
	ro := img.readOnly
	img.mu.RUnlock()
	if ro != nil {
		return fmt.Errorf("%s image %q: %w", op, img.name, ro)
	}
	return nil
}

// forEachExtent calls fn for every per-object piece of [off, off+length),
// in parallel (at most maxParallel at once) when there are several. It
// returns the first error; after one, pieces not yet started are skipped.
func (img *Image) forEachExtent(ctx context.Context, off, length int64, fn func(ctx context.Context, e extent) error) error {
	// Backends may complete fast operations without looking at ctx.
	if err := ctx.Err(); err != nil || length == 0 {
		return err
	}
	first := uint64(off) >> img.order
	last := (uint64(off) + uint64(length) - 1) >> img.order
	piece := func(n uint64) extent {
		start := max(uint64(off), n<<img.order)
		end := min(uint64(off)+uint64(length), (n+1)<<img.order)
		return extent{objNo: n, objOff: start - n<<img.order, length: end - start, bufOff: int64(start) - off}
	}
	if first == last {
		return fn(ctx, piece(first))
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	sem := make(chan struct{}, maxParallel)
	stopped := false
	for n := first; n <= last && !stopped; n++ {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if stopped = ctx.Err() != nil; stopped {
			break
		}
		wg.Add(1)
		go func(e extent) {
			defer wg.Done()
			defer func() { <-sem }()
			if err := fn(ctx, e); err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
					cancel()
				}
				mu.Unlock()
			}
		}(piece(n))
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if stopped {
		return ctx.Err()
	}
	return nil
}

// ReadAt reads len(p) bytes at off. Parts of the image never written (or
// discarded) read as zeros. It returns len(p) or an error.
func (img *Image) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if _, err := img.checkRange("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	return img.readAt(ctx, p, off, 0)
}

// readAt reads the data objects as of snapshot snapID (0: the head).
func (img *Image) readAt(ctx context.Context, p []byte, off int64, snapID uint64) (int, error) {
	err := img.forEachExtent(ctx, off, int64(len(p)), func(ctx context.Context, e extent) error {
		buf := p[e.bufOff : e.bufOff+int64(e.length)]
		oid := img.DataOID(e.objNo)
		var op objstore.ReadOp
		op.SetSnap(snapID)
		r := op.Read(e.objOff, e.length)
		err := img.pool.Read(ctx, oid, &op)
		if errors.Is(err, objstore.ErrNotFound) {
			if p := img.parentOf(); p != nil { // a clone: the parent's data
				return img.readParent(ctx, p, buf, int64(e.objNo<<img.order+e.objOff))
			}
			clear(buf)
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", oid, err)
		}
		n := copy(buf, r.Data())
		clear(buf[n:])
		return nil
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteAt writes p at off. Each object's part is durable when WriteAt
// returns nil (see SetLazyWrites); after an error some parts may have been
// written.
func (img *Image) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	if _, err := img.checkRange("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	if err := img.checkWritable("write"); err != nil {
		return 0, err
	}
	err := img.forEachExtent(ctx, off, int64(len(p)), func(ctx context.Context, e extent) error {
		return img.writes.write(ctx, img, e.objNo, e.objOff, p[e.bufOff:e.bufOff+int64(e.length)])
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// Discard deallocates [off, off+length): afterwards it reads as zeros. As
// librbd's object discard does, an object the range covers entirely (or up
// to the end of the image) is removed, one whose tail it covers is
// truncated, and a range inside an object is zeroed. Missing objects stay
// missing.
func (img *Image) Discard(ctx context.Context, off, length int64) error {
	size, err := img.checkRange("discard", off, length)
	if err != nil {
		return err
	}
	if err := img.checkWritable("discard"); err != nil {
		return err
	}
	objSize := uint64(1) << img.order
	return img.forEachExtent(ctx, off, length, func(ctx context.Context, e extent) error {
		objStart := e.objNo << img.order
		// Bytes of an object past the end of the image are never read,
		// so a range reaching the image's end reaches the object's.
		toEnd := e.objOff+e.length == objSize || objStart+e.objOff+e.length >= uint64(size)
		clone := img.inOverlap(e.objNo, e.objOff)
		if clone {
			// Never expose the parent's data: copy it up, then cut.
			if err := img.copyupObject(ctx, e.objNo); err != nil {
				return fmt.Errorf("discard: %w", err)
			}
		}
		op := img.newWriteOp()
		switch {
		case e.objOff == 0 && toEnd && clone:
			op.AssertExists()
			op.Truncate(0)
		case e.objOff == 0 && toEnd:
			op.Remove()
		case toEnd:
			op.AssertExists()
			op.Truncate(e.objOff)
		default:
			op.AssertExists()
			op.Zero(e.objOff, e.length)
		}
		return img.operateIfExists(ctx, "discard", e.objNo, op)
	})
}

// WriteZeroes makes [off, off+length) read as zeros without deallocating:
// existing objects are zeroed in place, missing ones stay missing (they
// read as zeros already).
func (img *Image) WriteZeroes(ctx context.Context, off, length int64) error {
	if _, err := img.checkRange("write zeroes", off, length); err != nil {
		return err
	}
	if err := img.checkWritable("write zeroes"); err != nil {
		return err
	}
	return img.forEachExtent(ctx, off, length, func(ctx context.Context, e extent) error {
		if img.inOverlap(e.objNo, e.objOff) {
			if err := img.copyupObject(ctx, e.objNo); err != nil {
				return fmt.Errorf("write zeroes: %w", err)
			}
		}
		op := img.newWriteOp()
		op.AssertExists()
		op.Zero(e.objOff, e.length)
		return img.operateIfExists(ctx, "write zeroes", e.objNo, op)
	})
}

// operateIfExists applies op to data object n; a missing object is not an
// error (op starts with AssertExists or Remove).
func (img *Image) operateIfExists(ctx context.Context, what string, n uint64, op *objstore.WriteOp) error {
	oid := img.DataOID(n)
	if err := img.pool.Operate(ctx, oid, op); err != nil && !errors.Is(err, objstore.ErrNotFound) {
		return fmt.Errorf("%s %s: %w", what, oid, err)
	}
	return nil
}

// Flush returns once every write that returned before it is durable. The
// object store makes each operation durable before it returns, so there is
// nothing left to wait for; Flush exists for the block device interface.
func (img *Image) Flush(ctx context.Context) error { return ctx.Err() }
