package driver

import (
	"context"
	"path/filepath"
	"testing"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

// TestPlanLayered: which restores and clones are layered and which are
// full copies.
func TestPlanLayered(t *testing.T) {
	ctx := context.Background()
	b, err := storage.OpenLocal(storage.LocalOptions{Dir: filepath.Join(t.TempDir(), "cluster"), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	pool, err := b.EnsurePool(ctx, "rbd")
	if err != nil {
		t.Fatal(err)
	}
	// p (depth 0) and c, a clone of p@s (depth 1).
	if err := b.CreateImage(ctx, pool, "p", 1<<20, image.CreateOptions{Order: 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.CreateSnapshot(ctx, pool, "p", "s"); err != nil {
		t.Fatal(err)
	}
	if err := b.CloneImage(ctx, pool, "p", "s", "c", 1<<20, image.CreateOptions{Order: 20}); err != nil {
		t.Fatal(err)
	}
	params := func(mod func(p *volume.VolumeParams)) volume.VolumeParams {
		p, err := volume.ParseParams(nil)
		if err != nil {
			t.Fatal(err)
		}
		mod(&p)
		return p
	}
	for _, tc := range []struct {
		name    string
		parent  string
		params  volume.VolumeParams
		layered bool
		depth   int
	}{
		{"defaults", "p", params(func(*volume.VolumeParams) {}), true, 1},
		{"clone of a clone", "c", params(func(*volume.VolumeParams) {}), true, 2},
		{"hard limit reached", "c", params(func(p *volume.VolumeParams) { p.CloneDepthSoftLimit, p.CloneDepthHardLimit = 1, 1 }), false, 2},
		{"old record: default limits", "c", params(func(p *volume.VolumeParams) { p.CloneDepthSoftLimit, p.CloneDepthHardLimit = 0, 0 }), true, 2},
		{"no layering feature", "p", params(func(p *volume.VolumeParams) { p.Features &^= clsrbd.FeatureLayering }), false, 0},
		{"mirroring", "p", params(func(p *volume.VolumeParams) { p.Mirroring = storage.MirrorModeJournal }), false, 0},
	} {
		layered, depth, err := planLayered(ctx, pool, &contentSource{id: tc.name, parent: tc.parent}, tc.params)
		if err != nil || layered != tc.layered || depth != tc.depth {
			t.Errorf("%s: layered %v depth %d (%v), want %v %d", tc.name, layered, depth, err, tc.layered, tc.depth)
		}
	}
	if _, _, err := planLayered(ctx, pool, &contentSource{id: "gone", parent: "gone"}, params(func(*volume.VolumeParams) {})); err == nil {
		t.Error("a missing parent was planned")
	}
}
