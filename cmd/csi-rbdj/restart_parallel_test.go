package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// TestRestartSeveralVolumes: a node plugin serving several volumes is
// restarted; its successor re-serves them at once (nodeserver.recoverAll
// runs them in parallel) and a planned stop hands them off at once. With
// the holder every volume is adopted (same mounts) after SIGKILL and after
// SIGTERM; without it every volume goes through the fallback. Each volume
// keeps what was written before and takes new writes.
func TestRestartSeveralVolumes(t *testing.T) {
	const n = 4
	for _, tc := range []struct {
		name   string
		holder bool
		term   bool   // SIGTERM (planned stop) instead of SIGKILL
		line   string // logged once per volume by the successor
	}{
		{"holder/kill", true, false, "Volume adopted after restart"},
		{"holder/term", true, true, "Volume adopted after restart"},
		{"fallback/kill", false, false, "Volume re-served after restart"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			if tc.holder {
				e.startHolder()
			}
			e.startNode()
			ctx := context.Background()
			vc := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
				AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
			type vol struct{ id, staging, target string }
			var vols []vol
			for i := range n {
				r, err := e.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: fmt.Sprintf("several-%d", i), VolumeCapabilities: []*csi.VolumeCapability{vc},
					CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}})
				e.must(err)
				v := vol{r.GetVolume().GetVolumeId(), e.path(fmt.Sprintf("staging-%d", i)), e.path("pods", fmt.Sprint(i), "vol")}
				e.must(os.Mkdir(v.staging, 0o755))
				_, err = e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging, VolumeCapability: vc})
				e.must(err)
				_, err = e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging, TargetPath: v.target, VolumeCapability: vc})
				e.must(err)
				e.must(writeSync(filepath.Join(v.target, "before"), []byte(v.id)))
				vols = append(vols, v)
			}
			ids := make([]string, n)
			for i, v := range vols {
				ids[i] = strings.Join(mountIDs(v.target), ",")
			}
			logBefore, err := os.ReadFile(e.path("node.log"))
			e.must(err)
			if tc.term {
				e.stopNode()
			} else {
				e.killNode()
			}
			e.startNode()
			logAll, err := os.ReadFile(e.path("node.log"))
			e.must(err)
			if got := strings.Count(string(logAll[len(logBefore):]), tc.line); got != n {
				t.Errorf("the successor logged %q %d times, want %d", tc.line, got, n)
			}
			for i, v := range vols {
				if b, err := os.ReadFile(filepath.Join(v.target, "before")); err != nil || string(b) != v.id {
					t.Errorf("volume %d: file written before the restart: %q, %v", i, b, err)
				}
				e.must(writeSync(filepath.Join(v.target, "after"), []byte("y")))
				if got := strings.Join(mountIDs(v.target), ","); tc.holder && got != ids[i] {
					t.Errorf("volume %d: publish mount ids %s, were %s: not adopted", i, got, ids[i])
				}
			}
			for _, v := range vols {
				_, err := e.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: v.target})
				e.must(err)
				_, err = e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging})
				e.must(err)
				_, err = e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id})
				e.must(err)
			}
			waitNoLoops(t, e.dir)
		})
	}
}
