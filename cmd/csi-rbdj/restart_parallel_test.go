package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/fsprobe"
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
			var vols []*testVolume
			for i := range n {
				v := e.createStaged(ctx, fmt.Sprintf("several-%d", i), mountCap("ext4"), 64<<20, nil, e.path(fmt.Sprintf("staging-%d", i)))
				e.publish(ctx, v, e.path("pods", fmt.Sprint(i), "vol"), false)
				e.must(fsprobe.WriteSync(filepath.Join(v.targets[0], "before"), []byte(v.id)))
				vols = append(vols, v)
			}
			ids := make([]string, n)
			for i, v := range vols {
				ids[i] = strings.Join(mountIDs(v.targets[0]), ",")
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
				target := v.targets[0]
				if b, err := os.ReadFile(filepath.Join(target, "before")); err != nil || string(b) != v.id {
					t.Errorf("volume %d: file written before the restart: %q, %v", i, b, err)
				}
				e.must(fsprobe.WriteSync(filepath.Join(target, "after"), []byte("y")))
				if got := strings.Join(mountIDs(target), ","); tc.holder && got != ids[i] {
					t.Errorf("volume %d: publish mount ids %s, were %s: not adopted", i, got, ids[i])
				}
			}
			for _, v := range vols {
				e.unstage(ctx, v)
				e.deleteVolume(ctx, v)
			}
			waitNoLoops(t, e.dir)
		})
	}
}
