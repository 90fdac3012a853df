package blockdev

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/testwait"
)

// gatedPool holds back (or fails) the writes to journal data objects while
// its gate is closed: the journal's appends then stay in flight.
type gatedPool struct {
	objstore.Pool
	mu   sync.Mutex
	gate chan struct{} // nil: open
	fail error
}

func (p *gatedPool) Operate(ctx context.Context, oid string, op *objstore.WriteOp) error {
	if strings.HasPrefix(oid, "journal_data.") {
		p.mu.Lock()
		gate, fail := p.gate, p.fail
		p.mu.Unlock()
		if gate != nil {
			select {
			case <-gate:
			case <-ctx.Done():
				return ctx.Err()
			}
			p.mu.Lock()
			fail = p.fail
			p.mu.Unlock()
		}
		if fail != nil {
			return &objstore.OpError{Op: "operate", OID: oid, Err: fail}
		}
	}
	return p.Pool.Operate(ctx, oid, op)
}

func (p *gatedPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gate == nil {
		p.gate = make(chan struct{})
	}
}

func (p *gatedPool) open(fail error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fail = fail
	if p.gate != nil {
		close(p.gate)
		p.gate = nil
	}
}

func TestParseAckPolicy(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    AckPolicy
		wantErr bool
	}{
		{"applied", AckApplied, false},
		{"journaled", AckJournaled, false},
		{"writeback", AckWriteBack, false},
		{"write-back", 0, true},
		{"", 0, true},
		{"Writeback", 0, true},
	} {
		got, err := ParseAckPolicy(tc.in)
		if (err != nil) != tc.wantErr || (err == nil && got != tc.want) {
			t.Errorf("ParseAckPolicy(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), "applied, journaled or writeback") {
			t.Errorf("ParseAckPolicy(%q): error %q does not list the accepted values", tc.in, err)
		}
	}
	for _, p := range AckPolicies {
		if got, err := ParseAckPolicy(p.String()); err != nil || got != p {
			t.Errorf("round trip of %v: %v, %v", p, got, err)
		}
	}
}

// returnsWithin runs f and reports whether it returned within d (a
// functional check that f does not wait for something held back, not a
// speed assertion: d is generous).
func returnsWithin(d time.Duration, f func() error) (error, bool) {
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err, true
	case <-time.After(d):
		return nil, false
	}
}

// TestWriteBackAcksBeforeDurable: with the journal's appends held back, a
// write-back write is acknowledged, reads see it, the dirty bytes count
// it, and Flush waits until it is durable.
func TestWriteBackAcksBeforeDurable(t *testing.T) {
	ctx := context.Background()
	gp := &gatedPool{Pool: openPool(t, t.TempDir())}
	d := newDevice(t, gp, Options{AckPolicy: AckWriteBack})
	gp.close()
	t.Cleanup(func() { gp.open(nil) }) // before Close (cleanups run last first)

	data := bytes.Repeat([]byte{0xab}, 8192)
	if err, ok := returnsWithin(10*time.Second, func() error { _, err := d.WriteAt(ctx, data, 4096); return err }); !ok || err != nil {
		t.Fatalf("write-back write with the journal held back: returned %v, err %v", ok, err)
	}
	if got := readAll(t, d, 16384)[4096:12288]; !bytes.Equal(got, data) {
		t.Fatal("a read does not see the acknowledged write")
	}
	if st := d.Stats(); st.DirtyBytes != 8192 || st.MaxDirtyBytes != defaultMaxDirtyBytes {
		t.Fatalf("dirty bytes %d (bound %d), want 8192 (bound %d)", st.DirtyBytes, st.MaxDirtyBytes, defaultMaxDirtyBytes)
	}
	flushed := make(chan error, 1)
	go func() { flushed <- d.Flush(ctx) }()
	select {
	case err := <-flushed:
		t.Fatalf("Flush returned (%v) while the acknowledged write was not durable", err)
	case <-time.After(300 * time.Millisecond):
	}
	gp.open(nil)
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	// The write's own apply goroutine releases its dirty bytes when its
	// future completes, which Flush's future follows; it may run just
	// after Flush returned.
	testwait.For(t, 5*time.Second, "dirty bytes 0 after Flush", func() bool { return d.Stats().DirtyBytes == 0 })
}

// TestWriteBackAppendFailureFailsDevice: an append that fails after the
// write was acknowledged fails the device: the next Flush and later I/O
// return errors.
func TestWriteBackAppendFailureFailsDevice(t *testing.T) {
	ctx := context.Background()
	gp := &gatedPool{Pool: openPool(t, t.TempDir())}
	d := newDevice(t, gp, Options{AckPolicy: AckWriteBack})
	gp.close()
	t.Cleanup(func() { gp.open(nil) })
	if _, err := d.WriteAt(ctx, bytes.Repeat([]byte{1}, 4096), 0); err != nil {
		t.Fatalf("write-back write: %v", err)
	}
	gp.open(errors.New("injected append failure"))
	if err := d.Flush(ctx); err == nil {
		t.Fatal("Flush succeeded after an acknowledged write's append failed")
	}
	if _, err := d.WriteAt(ctx, make([]byte, 4096), 8192); err == nil {
		t.Fatal("a write succeeded on a device that lost acknowledged writes")
	}
	if err := d.Flush(ctx); err == nil {
		t.Fatal("a second Flush succeeded on a device that lost acknowledged writes")
	}
	if st := d.Stats(); st.State != StateFailed {
		t.Fatalf("state %s, want %s", st.State, StateFailed)
	}
}

// TestWriteBackDirtyBounds: writers wait at the device's dirty bound and
// at the node-wide one, which two devices share.
func TestWriteBackDirtyBounds(t *testing.T) {
	ctx := context.Background()
	gp := &gatedPool{Pool: openPool(t, t.TempDir())}
	newImage(t, gp, "a", 22)
	newImage(t, gp, "b", 22)
	node := NewNodeBudget(1<<20, 64<<10)
	a := openDevice(t, gp, "a", Options{AckPolicy: AckWriteBack, MaxDirtyBytes: 32 << 10, Node: node})
	b := openDevice(t, gp, "b", Options{AckPolicy: AckWriteBack, MaxDirtyBytes: 48 << 10, Node: node})
	gp.close()
	t.Cleanup(func() { gp.open(nil) })
	write := func(d *Device, off int64) error {
		wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, err := d.WriteAt(wctx, make([]byte, 16<<10), off)
		return err
	}
	for i := int64(0); i < 2; i++ {
		if err := write(a, i*16<<10); err != nil {
			t.Fatalf("device a write %d within its bound: %v", i, err)
		}
	}
	if err := write(a, 2*16<<10); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("device a past its 32 KiB dirty bound: %v, want it to wait", err)
	}
	if err := write(b, 0); err != nil {
		t.Fatalf("device b within the node bound: %v", err)
	}
	// 48 KiB of the node's 64 KiB are dirty; b's own bound has room for
	// two more, the node's for one.
	if err := write(b, 16<<10); err != nil {
		t.Fatalf("device b, last room of the node bound: %v", err)
	}
	if err := write(b, 32<<10); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("device b past the node-wide dirty bound: %v, want it to wait", err)
	}
	if st := node.Stats(); st.DirtyBytes != 64<<10 || st.MaxDirtyBytes != 64<<10 || st.PendingBytes != 64<<10 || st.Waits == 0 {
		t.Fatalf("node budget %+v, want 64 KiB dirty and pending of 64 KiB, some waits", st)
	}
	gp.open(nil)
	for _, d := range []*Device{a, b} {
		if err := d.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := write(b, 32<<10); err != nil {
		t.Fatalf("device b once the dirty bytes are durable: %v", err)
	}
}
