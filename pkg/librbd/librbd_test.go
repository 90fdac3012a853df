//go:build ceph && pacific

package librbd_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rbd"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/librbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local/localtest"
)

func TestMain(m *testing.M) { cephtest.Main(m) }

func imageName(t *testing.T) string {
	return fmt.Sprintf("librbdtest-%s-%d", strings.ReplaceAll(t.Name(), "/", "_"), time.Now().UnixNano())
}

// cleanup removes the image when the test ends (ignoring a missing one).
func cleanup(t *testing.T, pool objstore.Pool, name string) {
	t.Cleanup(func() {
		if err := librbd.Remove(context.Background(), pool, name); err != nil && !errors.Is(err, image.ErrNotFound) {
			t.Errorf("cleanup: %v", err)
		}
	})
}

// TestLifecycle creates a journaled image through librbd, checks what
// librbd made (header, journal with its order and splay width, client ""
// registered with tag 0, directory entry), resizes it and removes it with
// its journal.
func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	pool := cephtest.Pool(t)
	name := imageName(t)
	cleanup(t, pool, name)
	const size = 64 << 20
	if err := librbd.Create(ctx, pool, name, size, image.CreateOptions{Order: 20, JournalOrder: 21, JournalSplayWidth: 2}); err != nil {
		t.Fatal(err)
	}
	info, err := librbd.GetInfo(ctx, pool, name)
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != size || info.Order != 20 || info.Features != image.DefaultFeatures ||
		info.JournalOrder != 21 || info.JournalSplayWidth != 2 || info.ID == "" || info.ObjectPrefix != "rbd_data."+info.ID {
		t.Fatalf("info %+v", info)
	}
	if _, err := librbd.CheckJournaled(ctx, pool, name); err != nil {
		t.Fatal(err)
	}

	// Our journaler opens librbd's journal: client "" with an image client
	// meta, one tag of class 0.
	j, err := journal.Open(ctx, pool, info.ID, "", journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if j.Order() != 21 || j.SplayWidth() != 2 {
		t.Errorf("journal order %d splay %d", j.Order(), j.SplayWidth())
	}
	cl, err := j.Client()
	if err != nil {
		t.Fatalf("client \"\": %v", err)
	}
	tags, err := j.Tags(ctx, nil)
	if err != nil || len(tags) != 1 || tags[0].Tid != 0 || tags[0].TagClass != 0 {
		t.Fatalf("tags %+v, %v", tags, err)
	}
	t.Logf("librbd's journal: client %+v, tag %+v", cl, tags[0])
	if err := j.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// pkg/image reads librbd's image the same way.
	img, err := image.Open(ctx, pool, name)
	if err != nil {
		t.Fatal(err)
	}
	if img.ID() != info.ID || img.Size() != size || img.Features() != info.Features {
		t.Fatalf("pkg/image sees id %s size %d features %#x", img.ID(), img.Size(), img.Features())
	}

	list, err := librbd.List(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range list {
		found = found || e == image.ListEntry{Name: name, ID: info.ID}
	}
	if !found {
		t.Fatalf("list %+v lacks %s", list, name)
	}

	for _, newSize := range []int64{128 << 20, 8 << 20} {
		if err := librbd.Resize(ctx, pool, name, newSize); err != nil {
			t.Fatal(err)
		}
		if info, err := librbd.GetInfo(ctx, pool, name); err != nil || info.Size != newSize {
			t.Fatalf("after resize to %d: %+v, %v", newSize, info, err)
		}
	}

	if err := librbd.Remove(ctx, pool, name); err != nil {
		t.Fatal(err)
	}
	for _, prefix := range []string{journal.HeaderOID(info.ID), journal.DataOIDPrefix(pool.ID(), info.ID),
		clsrbd.HeaderOID(info.ID), "rbd_data." + info.ID, clsrbd.IDOID(name)} {
		if left, err := pool.List(ctx, prefix); err != nil || len(left) != 0 {
			t.Errorf("after remove: %q left (%v)", left, err)
		}
	}
	if _, err := librbd.GetInfo(ctx, pool, name); !errors.Is(err, image.ErrNotFound) {
		t.Fatalf("info after remove: %v", err)
	}
}

// TestErrors checks the management errors callers branch on.
func TestErrors(t *testing.T) {
	ctx := context.Background()
	c := cephtest.Connect(t)
	pool := cephtest.PoolOf(t, c)
	name := imageName(t)
	cleanup(t, pool, name)
	if err := librbd.Create(ctx, pool, name, 1<<20, image.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	check := func(what string, err error, want ...error) {
		t.Helper()
		for _, w := range want {
			if !errors.Is(err, w) {
				t.Errorf("%s: %v, want %v", what, err, w)
				return
			}
		}
		t.Logf("%s: %v", what, err)
	}
	check("create existing", librbd.Create(ctx, pool, name, 1<<20, image.CreateOptions{}), image.ErrExists)
	check("remove missing", librbd.Remove(ctx, pool, name+"-missing"), image.ErrNotFound)
	check("resize missing", librbd.Resize(ctx, pool, name+"-missing", 1<<20), image.ErrNotFound)
	_, err := librbd.GetInfo(ctx, pool, name+"-missing")
	check("info missing", err, image.ErrNotFound)
	check("bad order", librbd.Create(ctx, pool, name+"-o", 1<<20, image.CreateOptions{Order: 40}), image.ErrInvalid)
	check("journaling without exclusive-lock",
		librbd.Create(ctx, pool, name+"-j", 1<<20, image.CreateOptions{Features: clsrbd.FeatureLayering | clsrbd.FeatureJournaling}),
		image.ErrInvalid)
	check("bad journal order", librbd.Create(ctx, pool, name+"-jo", 1<<20, image.CreateOptions{JournalOrder: 40}), image.ErrInvalid)
	check("negative size", librbd.Create(ctx, pool, name+"-s", -1, image.CreateOptions{}), image.ErrInvalid)

	// The wrong pool: it does not exist.
	_, err = c.Pool(ctx, "no-such-pool")
	check("wrong pool", err, ceph.ErrPoolNotFound, objstore.ErrNotFound)

	// A pool of another backend.
	_, lp := localtest.Open(t, t.TempDir(), local.Options{})
	check("local pool", librbd.Create(ctx, lp, name, 1<<20, image.CreateOptions{}), librbd.ErrNotCeph)

	// A pre-provisioned image without journaling.
	plain := name + "-plain"
	cleanup(t, pool, plain)
	if err := librbd.Create(ctx, pool, plain, 1<<20, image.CreateOptions{Features: clsrbd.FeatureLayering | clsrbd.FeatureExclusiveLock}); err != nil {
		t.Fatal(err)
	}
	info, err := librbd.CheckJournaled(ctx, pool, plain)
	check("image without journaling", err, librbd.ErrNotJournaled, image.ErrUnsupported)
	if info.JournalOrder != 0 || info.Journaled() {
		t.Errorf("info %+v", info)
	}

	// An image open elsewhere is busy.
	img, err := rbd.OpenImage(pool.IOContext(), name, rbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	check("remove open image", librbd.Remove(ctx, pool, name), image.ErrBusy)
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}

	// A cancelled context.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	check("cancelled", librbd.Create(cctx, pool, name+"-c", 1<<20, image.CreateOptions{}), context.Canceled)
}

// TestConnectErrors checks what the controller sees when the cluster
// configuration is wrong: monitors that do not answer, a wrong key.
func TestConnectErrors(t *testing.T) {
	ctx := context.Background()
	key := cephtest.AdminKey(t)
	_, err := ceph.Connect(ctx, ceph.Config{MonHosts: []string{"127.0.0.1:9"}, User: "admin", Key: key, ConnectTimeout: time.Second})
	if !errors.Is(err, ceph.ErrMonUnreachable) {
		t.Fatalf("unreachable monitors: %v", err)
	}
	b := []byte(key)
	b[20] ^= 1 // still base64, another secret
	_, err = ceph.Connect(ctx, ceph.Config{MonHosts: []string{cephtest.MonHost(t)}, Key: string(b), ConnectTimeout: 5 * time.Second})
	if !errors.Is(err, ceph.ErrAuth) || strings.Contains(err.Error(), string(b)) {
		t.Fatalf("wrong key: %v", err)
	}
}
