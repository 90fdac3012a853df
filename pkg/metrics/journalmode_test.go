package metrics

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local/localtest"
)

// TestNodeCollectorTornExtents: a metadata-mode device whose owner died
// with a logged write that something else then overwrote is taken over;
// the new owner's replay counts the torn extent and the collector
// exports it.
func TestNodeCollectorTornExtents(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	_, pool1 := localtest.Open(t, dir, local.Options{NoSync: true})
	if err := image.Create(ctx, pool1, "vol", 16<<20, image.CreateOptions{Order: 20, Features: clsrbd.FeatureLayering | clsrbd.FeatureExclusiveLock}); err != nil {
		t.Fatal(err)
	}
	// The commit position stays behind: the write remains past it.
	dev1, err := blockdev.Open(ctx, pool1, "vol", blockdev.Options{JournalMode: blockdev.JournalMetadata, Journal: journal.Settings{CommitAge: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev1.Close(context.Background()) })
	if _, err := dev1.WriteAt(ctx, bytes.Repeat([]byte{1}, 4096), 8192); err != nil {
		t.Fatal(err)
	}
	// A write's exact entry (extent and CRC) is durable by the next flush.
	if err := dev1.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// A write that was never acknowledged (no entry) overwrote half of it.
	img, err := image.Open(ctx, pool1, "vol")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt(ctx, bytes.Repeat([]byte{2}, 2048), 8192); err != nil {
		t.Fatal(err)
	}
	c2, pool2 := localtest.Open(t, dir, local.Options{NoSync: true})
	dev2, err := blockdev.Open(ctx, pool2, "vol", blockdev.Options{JournalMode: blockdev.JournalMetadata, Fencer: c2, DeadOwners: []string{pool1.Client().Addr}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev2.Close(context.Background()) })
	n := NewNode()
	n.Served(testVolume, dev2)
	if got := value(gather(t, n, "csi_rbdj_volume_replay_torn_extents")["volume_id="+testVolume]); got != 1 {
		t.Errorf("csi_rbdj_volume_replay_torn_extents = %v, want 1", got)
	}
}
