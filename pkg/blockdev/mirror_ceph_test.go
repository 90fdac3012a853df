//go:build ceph && pacific

package blockdev

import (
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph"
)

// TestRBDMirrorReplicatesServedImageCeph: rbd-mirror (journal mode)
// replicates an image while this process serves it: its bootstrap creates
// a sync-point snapshot on the primary through the lock owner (and removes
// it later), which the owner now performs, and the copy on the second
// cluster catches up with the writes made while served.
//
// Opt-in: it needs the two clusters and the rbd-mirror daemon of
// /work/shared/recipes/rbd-mirror (two-clusters-up.sh, mirror-setup.sh);
// CSI_RBDJ_MIRROR_DIR names their MIRROR_DIR.
func TestRBDMirrorReplicatesServedImageCeph(t *testing.T) {
	dir := os.Getenv("CSI_RBDJ_MIRROR_DIR")
	if dir == "" {
		t.Skip("CSI_RBDJ_MIRROR_DIR is not set (two clusters with rbd-mirror, see /work/shared/recipes/rbd-mirror)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	name := fmt.Sprintf("served-mirror-%d", time.Now().UnixNano()%1e6)
	spec := "rbd/" + name
	command := func(ctx context.Context, site string, args ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, "rbd", append([]string{"--cluster", site}, args...)...)
		cmd.Env = append(os.Environ(), "CEPH_CONF="+filepath.Join(dir, "conf", "$cluster.conf"), "CEPH_ARGS=--admin-socket=")
		return cmd
	}
	rbd := func(ctx context.Context, site string, args ...string) (string, error) {
		out, err := command(ctx, site, args...).CombinedOutput()
		return string(out), err
	}
	// export returns the image on site-b as rbd export writes it.
	export := func() ([]byte, string, error) {
		cmd := command(ctx, "site-b", "export", "--no-progress", spec, "-")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		return out, stderr.String(), err
	}
	must := func(site string, args ...string) string {
		t.Helper()
		out, err := rbd(ctx, site, args...)
		if err != nil {
			t.Fatalf("rbd --cluster %s %s: %v\n%s", site, strings.Join(args, " "), err, out)
		}
		return out
	}
	const size = 32 << 20
	must("site-a", "create", "--size", "32M", "--image-feature", "layering,exclusive-lock,journaling", spec)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		rbd(ctx, "site-a", "mirror", "image", "disable", "--force", spec)
		rbd(ctx, "site-a", "snap", "purge", "--no-progress", spec)
		if out, err := rbd(ctx, "site-a", "rm", "--no-progress", spec); err != nil {
			t.Logf("rbd rm %s on site-a: %v\n%s", spec, err, out)
		}
	})
	c, err := ceph.Connect(ctx, ceph.Config{ConfigFile: filepath.Join(dir, "conf", "site-a.conf"), ConnectTimeout: 20 * time.Second, OpTimeout: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	pool, err := c.OpenPool(ctx, "rbd")
	if err != nil {
		t.Fatal(err)
	}
	d, err := Open(ctx, pool, name, Options{AckPolicy: AckJournaled})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(context.Background())
	model := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	write := func(n int) {
		t.Helper()
		for range n {
			off := rng.IntN(size/4096) * 4096
			buf := make([]byte, 4096*(1+rng.IntN(16)))
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
			buf = buf[:min(len(buf), size-off)]
			if _, err := d.WriteAt(ctx, buf, int64(off)); err != nil {
				t.Fatal(err)
			}
			copy(model[off:], buf)
		}
		if err := d.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	write(200)
	// Mirroring is enabled while the volume is served, as a user would.
	enabled := time.Now()
	must("site-a", "mirror", "image", "enable", spec, "journal")
	// Keep writing while rbd-mirror bootstraps (sync point, image sync).
	for range 10 {
		write(50)
		time.Sleep(300 * time.Millisecond)
	}
	want := sha256.Sum256(model)
	var last string
	deadline := time.Now().Add(90 * time.Second)
	for {
		out, stderr, err := export()
		if err == nil && sha256.Sum256(out) == want {
			break
		}
		if err != nil {
			last = fmt.Sprintf("%v: %s", err, lastLines(stderr, 3))
		} else {
			last = fmt.Sprintf("%d bytes, differs", len(out))
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "mirror", "rbd-mirror.b.log"))
			var hits []string
			for _, l := range strings.Split(string(log), "\n") {
				if strings.Contains(l, name) && (strings.Contains(l, "failed") || strings.Contains(l, "error")) {
					hits = append(hits, l)
				}
			}
			t.Fatalf("site-b's copy did not catch up with the served image within 90 s of mirroring (last: %s)\nrbd-mirror errors for the image:\n%s", last, lastLines(strings.Join(hits, "\n"), 10))
		}
		time.Sleep(time.Second)
	}
	t.Logf("site-b's copy equals the served image %v after mirroring was enabled (while served)", time.Since(enabled).Round(100*time.Millisecond))
	// Still served: more writes reach site-b too.
	write(100)
	want = sha256.Sum256(model)
	start := time.Now()
	for {
		out, _, err := export()
		if err == nil && sha256.Sum256(out) == want {
			break
		}
		if time.Since(start) > 60*time.Second {
			t.Fatalf("later writes did not reach site-b within 60 s")
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("later writes replicated within %v", time.Since(start).Round(100*time.Millisecond))
	// The sync point snapshot was created through the owner and pruned
	// again (through the owner too).
	if out := must("site-a", "snap", "ls", "--all", spec); strings.Contains(out, ".rbd-mirror.") {
		t.Errorf("rbd-mirror's sync point snapshot was not removed:\n%s", out)
	}
}
