//go:build ceph && pacific

package blockdev

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
)

// TestCloneCrashCeph runs testCloneCrash on a clone librbd made: `rbd
// import` of the parent's data, `rbd snap create` + `protect`, `rbd clone`
// with journaling; the parent's head changes after the snapshot (`rbd
// bench`).
func TestCloneCrashCeph(t *testing.T) {
	be := cephBackend(t)
	conf := cephtest.Conf(t)
	ctx := context.Background()
	img := fmt.Sprintf("clone-crash-%d", time.Now().UnixNano()%1e6)
	parent := img + "-parent"
	p := cephtest.PoolName + "/"
	rbd := func(args ...string) {
		t.Helper()
		c, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		if out, err := rbdCLI(c, conf, args...); err != nil {
			t.Fatalf("rbd %v: %v\n%s", args, err, out)
		}
	}
	model := pattern(7, cloneSize, false)
	file := filepath.Join(t.TempDir(), "parent")
	if err := os.WriteFile(file, model, 0o644); err != nil {
		t.Fatal(err)
	}
	rbd("import", "--no-progress", "--image-feature", "layering", file, p+parent)
	t.Cleanup(func() { _, _ = rbdCLI(ctx, conf, "rm", "--no-progress", p+parent) })
	rbd("snap", "create", p+parent+"@base")
	rbd("snap", "protect", p+parent+"@base")
	t.Cleanup(func() {
		_, _ = rbdCLI(ctx, conf, "snap", "unprotect", p+parent+"@base")
		_, _ = rbdCLI(ctx, conf, "snap", "rm", "--no-progress", p+parent+"@base")
	})
	rbd("bench", "--io-type", "write", "--io-size", "4M", "--io-total", "32M", "--io-pattern", "seq", p+parent)
	rbd("clone", "--image-feature", "layering,exclusive-lock,journaling", p+parent+"@base", p+img)
	t.Cleanup(func() {
		for i := 0; i < 60; i++ { // a killed node's watch lingers up to 30 s
			if _, err := rbdCLI(ctx, conf, "rm", "--no-progress", p+img); err == nil {
				return
			}
			time.Sleep(time.Second)
		}
	})
	testCloneCrash(t, be, img, model)
}
