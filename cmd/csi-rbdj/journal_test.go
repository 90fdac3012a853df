package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/extentlog"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

// runJournalCmd runs `csi-rbdj journal ARGS` (this test binary as main).
func runJournalCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"journal"}, args...)...)
	cmd.Env = append(os.Environ(), "CSI_RBDJ_TEST_AS_MAIN=1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return stderr.String(), err
	}
	return string(out), nil
}

// TestJournalChangedExtentsCommand: the subcommands on a metadata-mode
// volume of the local backend list what the device wrote.
func TestJournalChangedExtentsCommand(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "cluster")
	b, err := storage.OpenLocal(storage.LocalOptions{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	st, err := b.Storage(ctx, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := st.EnsurePool(ctx, "rbd")
	if err != nil {
		t.Fatal(err)
	}
	if err := image.Create(ctx, pool, "vol", 16<<20, image.CreateOptions{Features: clsrbd.FeatureLayering | clsrbd.FeatureExclusiveLock}); err != nil {
		t.Fatal(err)
	}
	vid := volume.VolumeID{Backend: storage.BackendLocal, Cluster: "default", Pool: "rbd", Image: "vol"}.String()
	flags := []string{"--backend", "local", "--local-dir", dir, "--volume", vid, "--consumer", "backup"}

	// Before the first open there is no extent log.
	if out, err := runJournalCmd(t, append([]string{"register-consumer"}, flags...)...); err == nil || !strings.Contains(out, "has no extent log") {
		t.Fatalf("register-consumer before the log exists: %v %s", err, out)
	}
	d, err := blockdev.Open(ctx, pool, "vol", blockdev.Options{JournalMode: blockdev.JournalMetadata})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := runJournalCmd(t, append([]string{"register-consumer"}, flags...)...); err != nil {
		t.Fatalf("register-consumer: %v %s", err, out)
	}
	for _, w := range []struct{ off, n int64 }{{0, 4096}, {1 << 20, 65536}, {4096, 4096}} {
		if _, err := d.WriteAt(ctx, make([]byte, w.n), w.off); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.CreateSnapshot(ctx, clsrbd.SnapshotNamespace{}, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(ctx, make([]byte, 4096), 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	b.Close()

	out, err := runJournalCmd(t, append([]string{"changed-extents"}, flags...)...)
	if err != nil {
		t.Fatalf("changed-extents: %v %s", err, out)
	}
	var got changedExtentsOutput
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	want := []extentlog.Extent{{Offset: 0, Length: 8192}, {Offset: 1 << 20, Length: 65536}, {Offset: 2 << 20, Length: 4096}}
	if got.Entries != 4 || !slices.Equal(got.Extents, want) || got.Bytes != 8192+65536+4096 || len(got.Ops) != 2 || got.Ops[0].Event != "SnapCreate" {
		t.Fatalf("changed-extents: %s, want extents %v and the snapshot's op entries", out, want)
	}
	last := got.Last
	out, err = runJournalCmd(t, append([]string{"changed-extents", "--to-snap", "s1"}, flags...)...)
	if err != nil {
		t.Fatalf("changed-extents --to-snap: %v %s", err, out)
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.Entries != 3 || !slices.Equal(got.Extents, want[:2]) {
		t.Fatalf("changed-extents --to-snap s1: %v %s, want extents %v", err, out, want[:2])
	}
	got.Last = last
	// Advance past everything: nothing is left to list.
	if out, err := runJournalCmd(t, append([]string{"advance-consumer", "--to", got.Last}, flags...)...); err != nil {
		t.Fatalf("advance-consumer: %v %s", err, out)
	}
	out, err = runJournalCmd(t, append([]string{"changed-extents"}, flags...)...)
	if err != nil || json.Unmarshal([]byte(out), &got) != nil || len(got.Extents) != 0 {
		t.Fatalf("changed-extents after advancing: %v %s", err, out)
	}
	if out, err := runJournalCmd(t, append([]string{"changed-extents", "--from", "x"}, flags...)...); err == nil || !strings.Contains(out, "TAG:ENTRY") {
		t.Errorf("bad --from: %v %s", err, out)
	}
}
