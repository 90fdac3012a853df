//go:build ceph && pacific

package librbd_test

import (
	"context"
	"errors"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/librbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
)

// TestMirrorStateUnmirrored: on the single test cluster, an image without
// mirroring reports the disabled state and no rbd-mirror status of its own
// (librbd's "status not found"); a missing image is image.ErrNotFound.
// (Replication itself needs two clusters: blockdev's mirror test.)
func TestMirrorStateUnmirrored(t *testing.T) {
	ctx := context.Background()
	pool := cephtest.Pool(t)
	name := imageName(t)
	cleanup(t, pool, name)
	if err := librbd.Create(ctx, pool, name, 8<<20, image.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if mi, err := librbd.GetMirrorInfo(ctx, pool, name); err != nil || mi.Enabled() || mi != (librbd.MirrorInfo{State: "disabled"}) {
		t.Errorf("mirror info %+v, %v; want disabled", mi, err)
	}
	if st, err := librbd.MirrorLocalStatus(ctx, pool, name); err != nil || st.Up || st.Description != "status not found" {
		t.Errorf("mirror status %+v, %v; want none reported", st, err)
	}
	if mi, err := librbd.GetMirrorInfo(ctx, pool, "missing-"+name); !errors.Is(err, image.ErrNotFound) || mi != (librbd.MirrorInfo{}) {
		t.Errorf("mirror info of a missing image: %+v, %v", mi, err)
	}
	if st, err := librbd.MirrorLocalStatus(ctx, pool, "missing-"+name); !errors.Is(err, image.ErrNotFound) || st.Known {
		t.Errorf("mirror status of a missing image: %+v, %v", st, err)
	}
}
