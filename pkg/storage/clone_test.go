package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"path/filepath"
	"strings"
	"testing"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
)

const cloneOrder, cloneObjects = 12, 6
const cloneSize = cloneObjects << cloneOrder

func openTestLocal(t *testing.T) (*LocalBackend, objstore.Pool) {
	t.Helper()
	b, err := OpenLocal(LocalOptions{Dir: filepath.Join(t.TempDir(), "cluster"), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	pool, err := b.EnsurePool(context.Background(), "rbd")
	if err != nil {
		t.Fatal(err)
	}
	return b, pool
}

// openTestImage is openTestLocal with an image name of size bytes (default
// options) in the pool.
func openTestImage(t *testing.T, name string, size int64) (*LocalBackend, objstore.Pool) {
	t.Helper()
	b, pool := openTestLocal(t)
	if err := b.CreateImage(context.Background(), pool, name, size, image.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return b, pool
}

func readImage(t *testing.T, pool objstore.Pool, name string) []byte {
	t.Helper()
	img, err := image.Open(context.Background(), pool, name)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, img.Size())
	if _, err := img.ReadAt(context.Background(), got, 0); err != nil {
		t.Fatal(err)
	}
	return got
}

func writeImage(t *testing.T, pool objstore.Pool, name string, p []byte, off int64) {
	t.Helper()
	img, err := image.Open(context.Background(), pool, name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt(context.Background(), p, off); err != nil {
		t.Fatal(err)
	}
}

// family makes p (random data, snapshot ps), c1 = clone of p@ps with its
// second object rewritten (snapshot cs), c2 = clone of c1@cs, 2 objects
// larger. It returns what c2 must read.
func family(t *testing.T, b *LocalBackend, pool objstore.Pool) []byte {
	t.Helper()
	ctx := context.Background()
	if err := b.CreateImage(ctx, pool, "p", cloneSize, image.CreateOptions{Order: cloneOrder}); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, cloneSize)
	rand.New(rand.NewSource(3)).Read(want)
	clear(want[3<<cloneOrder : 4<<cloneOrder]) // zeros: nothing to copy up
	writeImage(t, pool, "p", want, 0)
	if _, err := b.CreateSnapshot(ctx, pool, "p", "ps"); err != nil {
		t.Fatal(err)
	}
	writeImage(t, pool, "p", bytes.Repeat([]byte{0xee}, cloneSize), 0) // after the snapshot: unseen
	if err := b.CloneImage(ctx, pool, "p", "ps", "c1", cloneSize, image.CreateOptions{Order: cloneOrder}); err != nil {
		t.Fatal(err)
	}
	part := bytes.Repeat([]byte{0x5a}, 512)
	writeImage(t, pool, "c1", part, 1<<cloneOrder+100) // a partial write: copy-up first
	copy(want[1<<cloneOrder+100:], part)
	if _, err := b.CreateSnapshot(ctx, pool, "c1", "cs"); err != nil {
		t.Fatal(err)
	}
	writeImage(t, pool, "c1", bytes.Repeat([]byte{0xcc}, 4096), 0)
	if err := b.CloneImage(ctx, pool, "c1", "cs", "c2", cloneSize+2<<cloneOrder, image.CreateOptions{Order: cloneOrder}); err != nil {
		t.Fatal(err)
	}
	return append(want, make([]byte, 2<<cloneOrder)...)
}

// TestLocalCloneLayering: clones read through their parents at the
// snapshot, the parent's header lists them (children_list, child_count,
// op features), the depth counts the chain, and removing a snapshot with
// clones moves it to the trash namespace.
func TestLocalCloneLayering(t *testing.T) {
	ctx := context.Background()
	b, pool := openTestLocal(t)
	want := family(t, b, pool)
	if got := readImage(t, pool, "c2"); !bytes.Equal(got, want) {
		t.Fatal("c2 does not read its parents' data at their snapshots")
	}
	for name, depth := range map[string]int{"p": 0, "c1": 1, "c2": 2} {
		if d, err := ImageDepth(ctx, pool, name); err != nil || d != depth {
			t.Errorf("depth of %s: %d, %v; want %d", name, d, err, depth)
		}
	}
	pid, _ := ImageID(ctx, pool, "p")
	c1, _ := ImageID(ctx, pool, "c1")
	ps, err := b.Snapshot(ctx, pool, "p", "ps")
	if err != nil || ps.Children != 1 {
		t.Fatalf("p@ps: %+v, %v; want 1 child", ps, err)
	}
	kids, err := clsrbd.ChildrenList(ctx, pool, clsrbd.HeaderOID(pid), ps.ID)
	if err != nil || len(kids) != 1 || kids[0].ImageID != c1 || kids[0].PoolID != pool.ID() {
		t.Fatalf("children of p@ps: %+v, %v", kids, err)
	}
	if of, err := clsrbd.OpFeaturesGet(ctx, pool, clsrbd.HeaderOID(pid)); err != nil || of&clsrbd.OpFeatureCloneParent == 0 {
		t.Errorf("op features of p: %x, %v", of, err)
	}
	if of, err := clsrbd.OpFeaturesGet(ctx, pool, clsrbd.HeaderOID(c1)); err != nil || of&clsrbd.OpFeatureCloneChild == 0 {
		t.Errorf("op features of c1: %x, %v", of, err)
	}
	if err := b.RemoveSnapshot(ctx, pool, "p", "ps"); err != nil {
		t.Fatal(err)
	}
	f, err := FamilyOf(ctx, pool, "p")
	if err != nil || len(f.Snapshots) != 1 || f.Snapshots[0].Namespace.Type != rbdnotify.SnapNamespaceTrash || f.Children != 1 {
		t.Fatalf("p after removing ps: %+v, %v; want one trashed snapshot with a child", f, err)
	}
	if err := b.RemoveImage(ctx, pool, "p"); !errors.Is(err, ErrHasChildren) {
		t.Fatalf("RemoveImage of a parent: %v, want ErrHasChildren", err)
	}
	if got := readImage(t, pool, "c2"); !bytes.Equal(got, want) {
		t.Fatal("c2 changed when its grandparent's snapshot was removed")
	}
}

// TestLocalCloneDeleteAnyOrder deletes the family of TestLocalCloneLayering
// in every order the CO may choose (a volume with snapshots is parked, a
// snapshot removed; a removed snapshot of a parked image reaps it): c2
// reads the same until it goes, and nothing is left at the end.
func TestLocalCloneDeleteAnyOrder(t *testing.T) {
	steps := []string{"p@ps", "p", "c1@cs", "c1", "c2"}
	var orders [][]string
	var permute func(done []string, left []string)
	permute = func(done, left []string) {
		if len(left) == 0 {
			orders = append(orders, done)
			return
		}
		for i := range left {
			rest := append(append([]string{}, left[:i]...), left[i+1:]...)
			permute(append(append([]string{}, done...), left[i]), rest)
		}
	}
	permute(nil, steps)
	if testing.Short() {
		orders = orders[:10]
	}
	for _, order := range orders {
		t.Run(strings.Join(order, ","), func(t *testing.T) {
			ctx := context.Background()
			b, pool := openTestLocal(t)
			want := family(t, b, pool)
			ids := map[string]string{}
			for _, n := range []string{"p", "c1", "c2"} {
				ids[n], _ = ImageID(ctx, pool, n)
			}
			c2gone := false
			for _, step := range order {
				if img, snap, ok := strings.Cut(step, "@"); ok {
					name, err := ImageName(ctx, pool, img, ids[img])
					if err != nil {
						t.Fatalf("%s: %v", step, err)
					}
					if err := b.RemoveSnapshot(ctx, pool, name, snap); err != nil {
						t.Fatalf("remove snapshot %s: %v", step, err)
					}
					if err := ReapParked(ctx, b, pool, ids[img]); err != nil {
						t.Fatalf("reap after %s: %v", step, err)
					}
				} else {
					f, err := FamilyOf(ctx, pool, step)
					if err != nil {
						t.Fatalf("%s: %v", step, err)
					}
					if len(f.Snapshots) > 0 {
						if _, err := b.ParkImage(ctx, pool, step); err != nil {
							t.Fatalf("park %s: %v", step, err)
						}
					} else if err := b.RemoveImage(ctx, pool, step); err != nil {
						t.Fatalf("remove %s: %v", step, err)
					}
					c2gone = c2gone || step == "c2"
				}
				if !c2gone {
					if got := readImage(t, pool, "c2"); !bytes.Equal(got, want) {
						t.Fatalf("after %s c2 reads other data", step)
					}
				}
			}
			checkPoolEmpty(t, pool)
		})
	}
}

// checkPoolEmpty fails if an image, its objects or a directory entry is left.
func checkPoolEmpty(t *testing.T, pool objstore.Pool) {
	t.Helper()
	ctx := context.Background()
	imgs, err := image.List(ctx, pool)
	if err != nil || len(imgs) != 0 {
		t.Errorf("images left: %v, %v", imgs, err)
	}
	names, err := pool.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if n != clsrbd.DirectoryOID {
			t.Errorf("object left: %s", n)
		}
	}
}

// TestLocalFlatten: a flattened clone reads the same, has no parent, and
// its parent no longer lists it (a trashed snapshot kept for it goes, and
// a parked parent with it); a served clone or one with snapshots is not
// flattened.
func TestLocalFlatten(t *testing.T) {
	ctx := context.Background()
	b, pool := openTestLocal(t)
	want := family(t, b, pool)
	if err := b.FlattenImage(ctx, pool, "c1"); !errors.Is(err, ErrHasSnapshots) {
		t.Fatalf("flatten of a clone with snapshots: %v", err)
	}
	// A served clone (its header watched, as a node watches it) is not
	// flattened: ErrImageServed, retried later.
	c2id, _ := ImageID(ctx, pool, "c2")
	w, err := pool.Watch(ctx, clsrbd.HeaderOID(c2id), ignoreNotifies{})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.FlattenImage(ctx, pool, "c2"); !errors.Is(err, ErrImageServed) {
		t.Errorf("flatten of a served clone: %v, want ErrImageServed", err)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	before := readImage(t, pool, "c2")
	if err := b.RemoveSnapshot(ctx, pool, "c1", "cs"); err != nil { // trashed: c2 uses it
		t.Fatal(err)
	}
	if _, err := b.ParkImage(ctx, pool, "c1"); err != nil {
		t.Fatal(err)
	}
	if err := b.FlattenImage(ctx, pool, "c2"); err != nil {
		t.Fatal(err)
	}
	if got := readImage(t, pool, "c2"); !bytes.Equal(got, before) || !bytes.Equal(got, want) {
		t.Fatal("c2 reads other data after the flatten")
	}
	if d, err := ImageDepth(ctx, pool, "c2"); err != nil || d != 0 {
		t.Fatalf("depth after flatten: %d, %v", d, err)
	}
	c1, _ := ImageID(ctx, pool, "c1") // parked: no such name
	if c1 != "" {
		t.Errorf("c1 still has its name")
	}
	if imgs, _ := image.List(ctx, pool); len(imgs) != 2 { // p and c2: parked c1 went with its last snapshot
		t.Errorf("images after flatten: %v", imgs)
	}
	if err := b.FlattenImage(ctx, pool, "c2"); err != nil {
		t.Errorf("flatten of a flat image: %v", err)
	}
	if err := b.RemoveSnapshot(ctx, pool, "p", "ps"); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"p", "c2"} {
		if err := b.RemoveImage(ctx, pool, n); err != nil {
			t.Fatal(err)
		}
	}
	checkPoolEmpty(t, pool)
}

// failingPool fails every write to one object.
type failingPool struct {
	objstore.Pool
	oid string
}

var errInjected = errors.New("injected failure")

func (p failingPool) Operate(ctx context.Context, oid string, op *objstore.WriteOp) error {
	if oid == p.oid {
		return fmt.Errorf("%s: %w", oid, errInjected)
	}
	return p.Pool.Operate(ctx, oid, op)
}

// TestLocalCloneFailure: a clone whose last step fails (listing it in the
// parent's header) leaves no image behind, and the parent no child.
func TestLocalCloneFailure(t *testing.T) {
	ctx := context.Background()
	b, pool := openTestLocal(t)
	if err := b.CreateImage(ctx, pool, "p", cloneSize, image.CreateOptions{Order: cloneOrder}); err != nil {
		t.Fatal(err)
	}
	ps, err := b.CreateSnapshot(ctx, pool, "p", "ps")
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := ImageID(ctx, pool, "p")
	fp := failingPool{Pool: pool, oid: clsrbd.HeaderOID(pid)}
	if err := b.CloneImage(ctx, fp, "p", "ps", "c", cloneSize, image.CreateOptions{Order: cloneOrder}); !errors.Is(err, errInjected) {
		t.Fatalf("CloneImage: %v, want the injected failure", err)
	}
	if imgs, err := image.List(ctx, pool); err != nil || len(imgs) != 1 || imgs[0].Name != "p" {
		t.Fatalf("images after a failed clone: %v, %v", imgs, err)
	}
	if info, err := b.Snapshot(ctx, pool, "p", "ps"); err != nil || info.Children != 0 || info.ID != ps.ID {
		t.Fatalf("p@ps after a failed clone: %+v, %v", info, err)
	}
	for _, tc := range []struct {
		name         string
		parent, snap string
		size         int64
		features     uint64
		want         error
	}{
		{"missing parent", "nope", "ps", cloneSize, 0, image.ErrNotFound},
		{"missing snapshot", "p", "nope", cloneSize, 0, ErrSnapshotNotFound},
		{"smaller", "p", "ps", cloneSize - 4096, 0, image.ErrInvalid},
		{"no layering", "p", "ps", cloneSize, clsrbd.FeatureExclusiveLock | clsrbd.FeatureJournaling, image.ErrInvalid},
	} {
		err := b.CloneImage(ctx, pool, tc.parent, tc.snap, "c", tc.size, image.CreateOptions{Order: cloneOrder, Features: tc.features})
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if imgs, _ := image.List(ctx, pool); len(imgs) != 1 {
		t.Fatalf("images after refused clones: %v", imgs)
	}
}

// ignoreNotifies is a watch handler that acknowledges nothing (the
// flatten sends no notification before it checks the watchers).
type ignoreNotifies struct{}

func (ignoreNotifies) HandleNotify(context.Context, *objstore.Notification) {}
func (ignoreNotifies) HandleWatchError(context.Context, error)              {}
