package blockdev

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop"
	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop/handovertest"
	"github.com/csi-rbdj/csi-rbdj/pkg/fuseholder"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local/localtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/testproc"
)

// TestHandoverServeHelper is the serving child of TestHandoverJournaled: it
// opens the journaled device (taking the lock over from a dead predecessor
// and replaying its journal, as after any crash), then adopts the FUSE
// connection the holder kept (fuseloop.Adopt: NOTIFY_RESEND, serve) or, the
// first time, attaches a new one and gives it to the holder.
func TestHandoverServeHelper(t *testing.T) {
	dir, policy := helperProcessEnv(t, "BLOCKDEV_HANDOVER", "serving child of TestHandoverJournaled")
	ctx := context.Background()
	c, pool := localtest.Open(t, dir, local.Options{})
	d, err := Open(ctx, pool, "vol", Options{AckPolicy: policy, Fencer: c})
	if err != nil {
		fmt.Fprintf(os.Stderr, "child: open: %v\n", err)
		os.Exit(3)
	}
	st := d.replayStats
	fmt.Fprintf(os.Stderr, "child: opened the journaled device, replay: %+v\n", st)
	// Both ack policies acknowledge a write only once its journal entry is
	// durable: a crash loses no acknowledged write (Meta.AcksDurable).
	var be fuseloop.Backend = d
	if s := os.Getenv("BLOCKDEV_HANDOVER_STALL"); s != "" {
		var off int64
		fmt.Sscan(s, &off)
		be = handovertest.StallAfterWrite(d, off)
	}
	os.Exit(handovertest.Serve(handovertest.Child{
		StateDir: os.Getenv("BLOCKDEV_HANDOVER_STATE"), Name: "vol", Socket: os.Getenv("BLOCKDEV_HANDOVER_SOCKET"),
	}, be, func() error { return d.Close(ctx) }))
}

// The journaled device behind a loop device with ext4 mounted survives
// SIGKILL and SIGTERM of its serving process: a successor opens the device
// (lock takeover + journal replay), adopts the FUSE connection from the
// holder and serves the requests the kernel resends. The writer sees no
// I/O error, no file is lost, e2fsck (xfs_repair -n) is clean. Why a resent write after
// the replay is safe: see fuseloop's handover_linux.go.
//
//	BLOCKDEV_HANDOVER_KILLS=N overrides the number of SIGKILLs (20; 4 with -short).
func TestHandoverJournaled(t *testing.T) {
	kerneltest.RequireRoot(t)
	for _, tc := range []struct {
		fs     string
		policy AckPolicy
	}{{"ext4", AckJournaled}, {"ext4", AckApplied}, {"xfs", AckJournaled}} {
		policy := tc.policy
		t.Run(tc.fs+"/"+policy.String(), func(t *testing.T) {
			kills, terms := 20, 5
			if testing.Short() {
				kills, terms = 4, 2
			}
			if s := os.Getenv("BLOCKDEV_HANDOVER_KILLS"); s != "" {
				fmt.Sscan(s, &kills)
			}
			h := newHandoverEnv(t, 512<<20, true)
			start := func(t *testing.T) *handovertest.Proc { return h.start(t, policy) }
			handovertest.Restarts(t, tc.fs, start, kills, terms, func() { handovertest.AbortMount(h.mnt) })
		})
	}
}

// The case the replay argument is about: the dead server journaled a write
// (and, with AckApplied, applied it) but died before answering it. The
// successor replays the journal (the write is in the image), then the
// kernel resends the WRITE and the successor journals and applies it
// again: same offset, same bytes, so the result is the same; the writer
// sees success and a later write to the block wins.
func TestHandoverResentWriteJournaled(t *testing.T) {
	kerneltest.RequireRoot(t)
	for _, policy := range []AckPolicy{AckJournaled, AckApplied} {
		t.Run(policy.String(), func(t *testing.T) {
			h := newHandoverEnv(t, 64<<20, false)
			const off = 12 << 20
			first := h.start(t, policy, fmt.Sprintf("BLOCKDEV_HANDOVER_STALL=%d", off))
			next := func(t *testing.T) *handovertest.Proc { return h.start(t, policy) }
			handovertest.ResentWrite(t, first, next, off, func() { handovertest.AbortMount(h.mnt) })
		})
	}
}

// A Block volume: raw O_DIRECT writers on the loop device across SIGKILL
// and SIGTERM restarts of the journaled device's server.
func TestHandoverJournaledRaw(t *testing.T) {
	kerneltest.RequireRoot(t)
	kills, terms := 20, 5
	if testing.Short() {
		kills, terms = 4, 2
	}
	h := newHandoverEnv(t, 64<<20, false)
	start := func(t *testing.T) *handovertest.Proc { return h.start(t, AckJournaled) }
	handovertest.RawRestarts(t, start, kills, terms, 4096, func() { handovertest.AbortMount(h.mnt) })
}

// handoverEnv is a local pool with image "vol" and a fuse-holder, for the
// handover tests' serving children (TestHandoverServeHelper).
type handoverEnv struct {
	dir, stateDir, sock string
	mnt                 string // the device's FUSE mount
}

// newHandoverEnv creates the image (size bytes) and starts the holder. At
// the end of the test the connection the holder keeps is dropped
// (dropHolder) or the FUSE mount aborted, then the device's leftovers are
// cleaned up.
func newHandoverEnv(t *testing.T, size int64, dropHolder bool) *handoverEnv {
	t.Helper()
	h := &handoverEnv{dir: t.TempDir(), stateDir: t.TempDir()}
	pool := openPool(t, h.dir)
	if err := image.Create(context.Background(), pool, "vol", size, image.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.mnt = filepath.Join(h.stateDir, "vol", "fuse")
	_, h.sock = handovertest.StartHolder(t)
	t.Cleanup(func() {
		if dropHolder {
			_ = fuseholder.NewClient(h.sock).Drop(context.Background(), "vol")
		} else {
			handovertest.AbortMount(h.mnt)
		}
		if err := fuseloop.Cleanup(context.Background(), h.stateDir, "vol"); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	})
	return h
}

// start runs a serving child with the ack policy and more environment.
func (h *handoverEnv) start(t *testing.T, policy AckPolicy, env ...string) *handovertest.Proc {
	return handovertest.Start(t, testproc.Command("^TestHandoverServeHelper$", append([]string{"BLOCKDEV_HANDOVER_DIR=" + h.dir,
		"BLOCKDEV_HANDOVER_STATE=" + h.stateDir, "BLOCKDEV_HANDOVER_SOCKET=" + h.sock, "BLOCKDEV_HANDOVER_POLICY=" + policy.String()}, env...)...))
}
