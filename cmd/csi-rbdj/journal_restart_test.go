package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/fsprobe"
)

// TestRestartMetadataMode: a journalMode metadata volume (ext4, xfs) is
// written with fsynced files while the node plugin is SIGKILLed several
// times; each restarted plugin re-serves it from its staging record (in
// metadata mode: the mode comes from the record) and every file whose
// fsync returned reads back at the publish path.
func TestRestartMetadataMode(t *testing.T) {
	kills := 5
	if testing.Short() {
		kills = 1
	}
	if v := os.Getenv("CSI_RBDJ_KILLS"); v != "" {
		fmt.Sscan(v, &kills)
	}
	forEachFS(t, func(t *testing.T, fs string) { testRestartMetadataMode(t, fs, kills) })
}

func metaFile(seq int) []byte {
	return bytes.Repeat([]byte(fmt.Sprintf("file %d of the metadata-mode restart test\n", seq)), 100+seq%300)
}

func testRestartMetadataMode(t *testing.T, fs string, kills int) {
	e := newEnv(t)
	e.startNode()
	ctx := context.Background()
	rw := e.path("pods", "a", "vol")
	files := fsprobe.Files{Dir: rw, Prefix: "m", Content: metaFile}
	v := e.createPublished(ctx, "meta-"+fs, mountCap(fs), 320<<20, map[string]string{"journalMode": "metadata"}, rw)

	var durable []int
	next := 0
	for kill := 0; kill < kills; kill++ {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var got []int
		wg.Add(1)
		go func() {
			defer wg.Done()
			files.WriteUntil(next, stop, func(seq int) { got = append(got, seq) })
		}()
		time.Sleep(700 * time.Millisecond)
		e.killNode()
		close(stop)
		wg.Wait()
		durable = append(durable, got...)
		next += len(got) + 1000
		e.startNode()
		for _, seq := range durable {
			b, err := os.ReadFile(files.Path(seq))
			if err != nil || !bytes.Equal(b, metaFile(seq)) {
				t.Fatalf("kill %d: fsynced file m%06d lost or damaged: %v", kill, seq, err)
			}
		}
		st, err := e.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.id, VolumePath: rw})
		e.must(err)
		if c := st.GetVolumeCondition(); c.GetAbnormal() || !strings.Contains(c.GetMessage(), "journal mode metadata") {
			t.Fatalf("kill %d: volume condition %v", kill, c)
		}
		t.Logf("kill %d: %d files fsynced in this round, %d verified after the restart (%s)", kill, len(got), len(durable), st.GetVolumeCondition().GetMessage())
	}
	e.unstage(ctx, v)
	if n := len(filesNamed(e.path("cluster"), "csi_rbdj_journal")); n == 0 {
		t.Errorf("no extent log objects in the cluster directory before DeleteVolume")
	}
	e.deleteVolume(ctx, v)
	waitNoLoops(t, e.dir)
	if left := filesNamed(e.path("cluster"), "csi_rbdj_journal"); len(left) > 0 {
		t.Errorf("extent log objects left after DeleteVolume: %v", left)
	}
}

// filesNamed lists the files under dir whose name contains s.
func filesNamed(dir, s string) []string {
	var out []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(d.Name(), s) {
			out = append(out, p)
		}
		return nil
	})
	return out
}
