//go:build linux

package fuseloop

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
)

// What Adopt refuses, quickly and with the right error: a file that is not
// /dev/fuse, a /dev/fuse never mounted, a connection the kernel aborted,
// metadata of another layout or a kernel without resend, stale metadata.
func TestAdoptFaults(t *testing.T) {
	kerneltest.RequireRoot(t)
	b := newMemBackend(16*MiB, 16*MiB)
	d := attach(t, b, Options{RequestTimeout: 30 * time.Second})
	good := d.Meta(true)
	if !good.Init.HasResend() {
		t.Fatalf("kernel did not offer FUSE_HAS_RESEND (flags %#x); handover impossible here", good.Init.KernelFlags)
	}
	dupOf := func(t *testing.T) *os.File {
		f, err := d.DupFile()
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	pr, pw, _ := os.Pipe()
	defer pw.Close()
	unmounted, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	ro, err := os.OpenFile("/dev/fuse", os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	mod := func(f func(*Meta)) Meta { m := good; f(&m); return m }
	for _, tc := range []struct {
		name string
		file func(t *testing.T) *os.File
		meta Meta
		want error
	}{
		{"pipe", func(*testing.T) *os.File { return pr }, good, ErrNotFuseFD},
		{"read-only /dev/fuse", func(*testing.T) *os.File { return ro }, good, ErrNotFuseFD},
		{"never mounted", func(*testing.T) *os.File { return unmounted }, good, ErrConnDead},
		{"nil file", func(*testing.T) *os.File { return nil }, good, ErrNotFuseFD},
		{"other layout", dupOf, mod(func(m *Meta) { m.DiskFH = 9 }), ErrStaleMeta},
		{"no resend", dupOf, mod(func(m *Meta) { m.Init.KernelFlags &^= capHasResend }), ErrNoResend},
		{"acks not durable", dupOf, mod(func(m *Meta) { m.AcksDurable = false }), ErrStaleMeta},
		{"other connection", dupOf, mod(func(m *Meta) { m.Conn++ }), ErrStaleMeta},
		{"other loop device", dupOf, mod(func(m *Meta) { m.LoopIndex += 100 }), ErrStaleMeta},
		{"backend too small", dupOf, mod(func(m *Meta) { m.Size = 32 * MiB }), ErrStaleMeta},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			_, err := Adopt(context.Background(), tc.file(t), tc.meta, b, AdoptOptions{})
			if !errors.Is(err, tc.want) {
				t.Fatalf("Adopt: %v, want %v", err, tc.want)
			}
			if time.Since(start) > 2*time.Second {
				t.Errorf("Adopt took %s to fail", time.Since(start))
			}
			t.Logf("%v", err)
		})
	}
	if d.Err() != nil {
		t.Fatalf("the served device was disturbed: %v", d.Err())
	}
	// Finally the connection is aborted: a dup of it cannot be adopted.
	f := dupOf(t)
	if err := abortConn(d.conn, d.mnt); err != nil {
		t.Fatal(err)
	}
	if _, err := Adopt(context.Background(), f, good, b, AdoptOptions{}); !errors.Is(err, ErrConnDead) {
		t.Fatalf("Adopt of an aborted connection: %v, want ErrConnDead", err)
	}
}

// In one process: Handoff stops serving without tearing down; a dup of the
// connection kept aside (the holder's role) is adopted; the adopted device
// serves, resizes and closes cleanly (loop detached, FUSE unmounted).
func TestHandoffAdoptInProcess(t *testing.T) {
	kerneltest.RequireRoot(t)
	b := newMemBackend(32*MiB, 64*MiB)
	stateDir := t.TempDir()
	d := attach(t, b, Options{StateDir: stateDir, RequestTimeout: 30 * time.Second})
	kept, err := d.DupFile()
	if err != nil {
		t.Fatal(err)
	}
	f := openDirect(t, d.Path())
	w := kerneltest.AlignedBuf(4096)
	copy(w, "before handoff")
	if _, err := f.WriteAt(w, 4096); err != nil {
		t.Fatal(err)
	}
	meta := d.Meta(true)
	if err := d.Handoff(context.Background()); err != nil {
		t.Fatalf("Handoff: %v", err)
	}
	if !errors.Is(d.Err(), ErrHandedOff) {
		t.Fatalf("Err after Handoff: %v", d.Err())
	}
	// Nobody serves now: a write waits (it does not fail).
	done := make(chan error, 1)
	copy(w, "while nobody serves")
	go func() { _, err := f.WriteAt(w, 8192); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("write while handed off returned: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	b2 := b // the same backend: a successor process would reopen it
	d2, err := Adopt(context.Background(), kept, meta, b2, AdoptOptions{RequestTimeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	if err := within(t, 10*time.Second, "the waiting write", func() error { return <-done }); err != nil {
		t.Fatalf("the waiting write: %v", err)
	}
	if d2.Path() != d.Path() {
		t.Errorf("adopted %s, served %s", d2.Path(), d.Path())
	}
	if got := string(b.bytesAt(8192, 19)); got != "while nobody serves" {
		t.Errorf("backend holds %q", got)
	}
	r := kerneltest.AlignedBuf(4096)
	if _, err := f.ReadAt(r, 4096); err != nil || string(r[:14]) != "before handoff" {
		t.Errorf("read through the adopted device: %q %v", r[:14], err)
	}
	b.grow(48 * MiB)
	if err := d2.Resize(context.Background(), 48*MiB); err != nil {
		t.Errorf("Resize of the adopted device: %v", err)
	}
	f.Close()
	if err := d2.Close(context.Background()); err != nil {
		t.Fatalf("Close of the adopted device: %v", err)
	}
	assertNoLeftovers(t, stateDir, meta.Name, meta.Conn)
}

// TestLoopIsOursByDevice: a loop device whose backing path the kernel can no
// longer name (opened in the mount namespace of a dead container: sysfs
// shows "/disk") is still recognised by the FUSE superblock and node id it
// recorded, and only for the right connection.
func TestLoopIsOursByDevice(t *testing.T) {
	kerneltest.RequireRoot(t)
	d := attach(t, newMemBackend(4*MiB, 4*MiB), Options{RequestTimeout: 30 * time.Second})
	for _, tc := range []struct {
		name string
		file string
		conn uint64
		want bool
	}{
		{"same path", d.file, 0, true},
		{"path unreachable, right connection", "/elsewhere/" + diskFileName, d.conn, true},
		{"path unreachable, connection unknown", "/elsewhere/" + diskFileName, 0, false},
		{"path unreachable, other connection", "/elsewhere/" + diskFileName, d.conn + 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Asking about another path than the one sysfs shows takes
			// the device-number path, as "/disk" would.
			if got := loopIsOurs(d.loopIdx, tc.file, tc.conn); got != tc.want {
				t.Errorf("loopIsOurs(%d, %q, %d) = %v, want %v", d.loopIdx, tc.file, tc.conn, got, tc.want)
			}
		})
	}
}
