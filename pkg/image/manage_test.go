package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc/cephenctest"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
)

func cephString(s string) []byte {
	var e cephenc.Encoder
	e.String(s)
	return e.Data()
}

func le64(v uint64) []byte {
	var e cephenc.Encoder
	e.U64(v)
	return e.Data()
}

// goldenJournalHeader is the journal header omap librbd 16.2.15 left for an
// image created with layering, exclusive-lock and journaling and written
// by one owner that crashed (pkg/journal/testdata/ceph-pacific-journal).
func goldenJournalHeader(t *testing.T) map[string][]byte {
	t.Helper()
	return cephenctest.ReadHexMap(t, "../journal/testdata/ceph-pacific-journal/golden-crash/journal-header-omap.json")
}

// TestCreateLayout checks every object and omap entry Create writes
// against what Ceph writes for `rbd create --size 64M --image-feature
// layering,exclusive-lock,journaling`:
//   - rbd_directory: name_<name> -> string id, id_<id> -> string name
//     (cls_rbd.cc dir_add_image_helper);
//   - rbd_id.<name>: data = the id as a Ceph string (cls_rbd.cc set_id), an
//     id shaped as librbd's generate_image_id (the golden image's id is
//     102770f22d36: client id 0x1027 then a random u32, in hex);
//   - rbd_header.<id>: exactly the keys cls_rbd.cc create() sets, with the
//     golden image's values (rbd-info.json: order 22, features layering,
//     exclusive-lock, journaling, block_name_prefix rbd_data.<id>);
//   - journal.<id>: the golden journal header as librbd's
//     journal::CreateRequest leaves it (order, splay width, pool id, the
//     image client "" with ImageClientMeta{tag class 0} and an empty commit
//     position, tag 0 of class 0 with TagData{}), before the first owner
//     allocated its own tag (next_tag_tid 1, no tag 1).
func TestCreateLayout(t *testing.T) {
	p := newPool(t)
	ctx := ctxT(t)
	before := time.Now().Add(-time.Second)
	if err := Create(ctx, p, "golden", 64<<20, CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	idData, ok := data(t, p, "rbd_id.golden")
	if !ok {
		t.Fatal("no rbd_id.golden")
	}
	var id string
	if err := cephenc.Unmarshal(idData, decoderFunc(func(d *cephenc.Decoder) error { id = d.Str(); return d.Err() })); err != nil {
		t.Fatalf("rbd_id data %x: %v", idData, err)
	}
	if !bytes.Equal(idData, cephString(id)) {
		t.Fatalf("rbd_id data %x has trailing bytes", idData)
	}
	if !regexp.MustCompile(`^[0-9a-f]{5,14}$`).MatchString(id) || !strings.HasPrefix(id, strconv.FormatUint(p.Client().ID, 16)) {
		t.Fatalf("id %q not shaped as librbd's", id)
	}

	wantDir := map[string][]byte{"name_golden": cephString(id), "id_" + id: cephString("golden")}
	if got := omap(t, p, "rbd_directory"); !maps.EqualFunc(got, wantDir, bytes.Equal) {
		t.Fatalf("rbd_directory omap = %q, want %q", got, wantDir)
	}

	hdr := omap(t, p, "rbd_header."+id)
	ts := hdr["create_timestamp"]
	wantHdr := map[string][]byte{
		"size":             le64(64 << 20),
		"order":            {22},
		"features":         le64(1 | 4 | 64),
		"object_prefix":    cephString("rbd_data." + id),
		"snap_seq":         le64(0),
		"create_timestamp": ts,
		"access_timestamp": ts,
		"modify_timestamp": ts,
	}
	if !maps.EqualFunc(hdr, wantHdr, bytes.Equal) {
		t.Fatalf("header omap = %x\nwant %x", hdr, wantHdr)
	}
	var u clsrbd.UTime
	if err := cephenc.Unmarshal(ts, &u); err != nil || len(ts) != 8 || u.Time().Before(before) || u.Time().After(time.Now()) {
		t.Fatalf("create_timestamp %x = %v, %v", ts, u.Time(), err)
	}
	if d, _ := data(t, p, "rbd_header."+id); len(d) != 0 {
		t.Fatalf("header has data %x", d)
	}

	want := goldenJournalHeader(t)
	want["next_tag_tid"] = le64(1)
	delete(want, "tag_0000000000000001")
	if got := omap(t, p, "journal."+id); !maps.EqualFunc(got, want, bytes.Equal) {
		t.Fatalf("journal header omap:\n got %x\nwant %x", got, want)
	}

	// Nothing else: no data objects, no journal data yet.
	wantObjs := []string{"journal." + id, "rbd_directory", "rbd_header." + id, "rbd_id.golden"}
	if got := objects(t, p, ""); !slices.Equal(got, wantObjs) {
		t.Fatalf("objects = %v, want %v", got, wantObjs)
	}

	img, err := Open(ctx, p, "golden")
	if err != nil {
		t.Fatal(err)
	}
	if img.ID() != id || img.Name() != "golden" || img.Size() != 64<<20 || img.Order() != 22 || img.ObjectSize() != 4<<20 ||
		img.ObjectPrefix() != "rbd_data."+id || img.Features() != DefaultFeatures || img.SnapContext().Seq != 0 {
		t.Fatalf("opened image: id %s size %d order %d prefix %s features %x", img.ID(), img.Size(), img.Order(), img.ObjectPrefix(), img.Features())
	}
	// The journal's image client decodes as librbd's.
	var cd rbdjournal.ClientData
	raw := omap(t, p, "journal."+id)["client_"]
	if err := cephenc.Unmarshal(raw[6+4+4:], &cd); err != nil || cd.Meta != (rbdjournal.ImageClientMeta{TagClass: 0}) {
		t.Fatalf("image client data = %+v, %v", cd, err)
	}
}

type decoderFunc func(d *cephenc.Decoder) error

func (f decoderFunc) Decode(d *cephenc.Decoder) error { return f(d) }

func TestCreateWithoutJournaling(t *testing.T) {
	p := newPool(t)
	img := mustCreate(t, p, "plain", 1<<20, CreateOptions{Order: 16, Features: clsrbd.FeatureLayering | clsrbd.FeatureExclusiveLock})
	if img.ObjectSize() != 64<<10 || img.Features() != 5 {
		t.Fatalf("object size %d features %x", img.ObjectSize(), img.Features())
	}
	if got := objects(t, p, "journal."); len(got) != 0 {
		t.Fatalf("journal objects %v for an image without journaling", got)
	}
}

func TestCreateJournalOptions(t *testing.T) {
	p := newPool(t)
	img := mustCreate(t, p, "j", 1<<20, CreateOptions{JournalOrder: 20, JournalSplayWidth: 8})
	h := omap(t, p, "journal."+img.ID())
	if !bytes.Equal(h["order"], []byte{20}) || !bytes.Equal(h["splay_width"], []byte{8}) {
		t.Fatalf("journal order %x splay width %x", h["order"], h["splay_width"])
	}
}

func TestCreateInvalid(t *testing.T) {
	p := newPool(t)
	tests := []struct {
		name string
		img  string
		size int64
		o    CreateOptions
		want error
	}{
		{"empty name", "", 1, CreateOptions{}, ErrInvalid},
		{"negative size", "a", -1, CreateOptions{}, ErrInvalid},
		{"order too small", "a", 1, CreateOptions{Order: 11}, ErrInvalid},
		{"order too large", "a", 1, CreateOptions{Order: 26}, ErrInvalid},
		{"journaling without exclusive lock", "a", 1, CreateOptions{Features: clsrbd.FeatureLayering | clsrbd.FeatureJournaling}, ErrInvalid},
		{"object map without exclusive lock", "a", 1, CreateOptions{Features: clsrbd.FeatureObjectMap}, ErrInvalid},
		{"fast diff without object map", "a", 1, CreateOptions{Features: clsrbd.FeatureExclusiveLock | clsrbd.FeatureFastDiff}, ErrInvalid},
		{"internal feature", "a", 1, CreateOptions{Features: clsrbd.FeatureOperations}, ErrInvalid},
		{"unknown feature", "a", 1, CreateOptions{Features: 1 << 40}, ErrInvalid},
		{"object map", "a", 1, CreateOptions{Features: clsrbd.FeatureExclusiveLock | clsrbd.FeatureObjectMap}, ErrUnsupported},
		{"striping", "a", 1, CreateOptions{Features: clsrbd.FeatureStripingV2}, ErrUnsupported},
		{"journal order", "a", 1, CreateOptions{JournalOrder: 30}, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := Create(ctxT(t), p, tt.img, tt.size, tt.o); !errors.Is(err, tt.want) {
				t.Fatalf("Create = %v, want %v", err, tt.want)
			}
		})
	}
	wantNoImageObjects(t, p)
}

func TestCreateExists(t *testing.T) {
	p := newPool(t)
	ctx := ctxT(t)
	if err := Create(ctx, p, "vol", 1<<20, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	before := objects(t, p, "")
	if err := Create(ctx, p, "vol", 1<<20, CreateOptions{}); !errors.Is(err, ErrExists) {
		t.Fatalf("second Create = %v, want ErrExists", err)
	}
	if after := objects(t, p, ""); !slices.Equal(before, after) {
		t.Fatalf("objects changed: %v -> %v", before, after)
	}

	// A stray id object (no directory entry) also takes the name; the
	// directory entry Create added is rolled back and the stray object
	// left alone.
	var op objstore.WriteOp
	op.Create(true)
	clsrbd.SetID(&op, "abc")
	if err := p.Operate(ctx, "rbd_id.stray", &op); err != nil {
		t.Fatal(err)
	}
	if err := Create(ctx, p, "stray", 1<<20, CreateOptions{}); !errors.Is(err, ErrExists) {
		t.Fatalf("Create over a stray id object = %v, want ErrExists", err)
	}
	if _, err := clsrbd.DirGetID(ctx, p, clsrbd.DirectoryOID, "stray"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("directory entry of the failed create: %v", err)
	}
	if d, ok := data(t, p, "rbd_id.stray"); !ok || !bytes.Equal(d, cephString("abc")) {
		t.Fatal("stray id object changed")
	}
}

// TestCreateRollback injects a failure into each step of Create and checks
// that nothing of the image is left behind and that the error says why.
func TestCreateRollback(t *testing.T) {
	injected := syscall.EIO
	tests := []struct {
		name string
		fail func(oid string, op *objstore.WriteOp) bool
	}{
		{"directory", func(oid string, _ *objstore.WriteOp) bool { return oid == clsrbd.DirectoryOID }},
		{"id object", func(oid string, _ *objstore.WriteOp) bool { return strings.HasPrefix(oid, "rbd_id.") }},
		{"header", func(oid string, _ *objstore.WriteOp) bool { return strings.HasPrefix(oid, "rbd_header.") }},
		{"journal create", func(oid string, op *objstore.WriteOp) bool {
			return strings.HasPrefix(oid, "journal.") && hasExec(op, "create")
		}},
		{"journal tag", func(oid string, op *objstore.WriteOp) bool { return hasExec(op, "tag_create") }},
		{"journal client", func(oid string, op *objstore.WriteOp) bool { return hasExec(op, "client_register") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &faultPool{Pool: newPool(t)}
			ctx := ctxT(t)
			// Another image first, so that the directory exists and
			// must keep its entry.
			if err := Create(ctx, p, "other", 1<<20, CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			before := objects(t, p, "")
			beforeDir := omap(t, p, clsrbd.DirectoryOID)
			p.fail = func(oid string, op *objstore.WriteOp) error {
				if tt.fail(oid, op) && !hasExec(op, "dir_remove_image") && !isRemove(op) {
					return injected
				}
				return nil
			}
			err := Create(ctx, p, "vol", 1<<20, CreateOptions{})
			if !errors.Is(err, injected) {
				t.Fatalf("Create = %v, want the injected error", err)
			}
			p.fail = nil
			if after := objects(t, p, ""); !slices.Equal(before, after) {
				t.Fatalf("objects after a failed create: %v, want %v", after, before)
			}
			if got := omap(t, p, clsrbd.DirectoryOID); !maps.EqualFunc(got, beforeDir, bytes.Equal) {
				t.Fatalf("directory after a failed create: %q", got)
			}
			// The name is free again.
			if err := Create(ctx, p, "vol", 1<<20, CreateOptions{}); err != nil {
				t.Fatalf("Create after rollback: %v", err)
			}
		})
	}
}

func isRemove(op *objstore.WriteOp) bool {
	s := op.Steps()
	return len(s) == 1 && s[0].Kind == objstore.StepRemove
}

// TestCreateRollbackCancelled cancels the caller's context during Create:
// the rollback still runs.
func TestCreateRollbackCancelled(t *testing.T) {
	p := &faultPool{Pool: newPool(t)}
	ctx, cancel := context.WithCancel(ctxT(t))
	p.fail = func(oid string, op *objstore.WriteOp) error {
		if hasExec(op, "tag_create") {
			cancel()
			return context.Canceled
		}
		return nil
	}
	if err := Create(ctx, p, "vol", 1<<20, CreateOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Create = %v, want context.Canceled", err)
	}
	wantNoImageObjects(t, p)
}

// TestCreateIDCollision makes the first generated id collide with an
// existing header: Create rolls back and retries with another id.
func TestCreateIDCollision(t *testing.T) {
	p := &faultPool{Pool: newPool(t)}
	var headers atomic.Int32
	var firstID string
	p.fail = func(oid string, op *objstore.WriteOp) error {
		if strings.HasPrefix(oid, "rbd_header.") && hasExec(op, "create") && headers.Add(1) == 1 {
			firstID = strings.TrimPrefix(oid, "rbd_header.")
			return syscall.EEXIST
		}
		return nil
	}
	img := mustCreate(t, p, "vol", 1<<20, CreateOptions{})
	if img.ID() == firstID || headers.Load() != 2 {
		t.Fatalf("id %s after collision on %s (%d header creates)", img.ID(), firstID, headers.Load())
	}
	if _, err := clsrbd.DirGetName(ctxT(t), p, clsrbd.DirectoryOID, firstID); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("directory still lists the colliding id: %v", err)
	}
}

func TestRemove(t *testing.T) {
	ctx := ctxT(t)
	// Partial images as a crash part-way through Create or Remove leaves
	// them: Remove finishes the job.
	tests := []struct {
		name   string
		damage func(t *testing.T, p objstore.Pool, img *Image)
	}{
		{"complete", func(*testing.T, objstore.Pool, *Image) {}},
		{"header gone", func(t *testing.T, p objstore.Pool, img *Image) {
			mustRemove(t, p, "rbd_header."+img.ID())
		}},
		{"header and journal gone", func(t *testing.T, p objstore.Pool, img *Image) {
			mustRemove(t, p, "rbd_header."+img.ID())
			mustRemove(t, p, "journal."+img.ID())
		}},
		{"id object gone", func(t *testing.T, p objstore.Pool, img *Image) {
			mustRemove(t, p, "rbd_header."+img.ID())
			mustRemove(t, p, "rbd_id."+img.Name())
		}},
		{"only the directory entry", func(t *testing.T, p objstore.Pool, img *Image) {
			for _, oid := range objects(t, p, "") {
				if oid != clsrbd.DirectoryOID {
					mustRemove(t, p, oid)
				}
			}
		}},
		{"no directory entry", func(t *testing.T, p objstore.Pool, img *Image) {
			var op objstore.WriteOp
			clsrbd.DirRemoveImage(&op, img.Name(), img.ID())
			if err := p.Operate(ctx, clsrbd.DirectoryOID, &op); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, img := newTestImage(t, 40<<12)
			for _, off := range []int64{0, 5 << 12, 39<<12 + 100} {
				if _, err := img.WriteAt(ctx, []byte("data"), off); err != nil {
					t.Fatal(err)
				}
			}
			if n := len(objects(t, p, "rbd_data.")); n != 3 {
				t.Fatalf("%d data objects", n)
			}
			tt.damage(t, p, img)
			if err := Remove(ctx, p, "vol"); err != nil {
				t.Fatal(err)
			}
			wantNoImageObjects(t, p)
			if err := Remove(ctx, p, "vol"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("second Remove = %v, want ErrNotFound", err)
			}
			if _, err := Open(ctx, p, "vol"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Open after Remove = %v, want ErrNotFound", err)
			}
		})
	}
}

func mustRemove(t *testing.T, p objstore.Pool, oid string) {
	t.Helper()
	var op objstore.WriteOp
	op.Remove()
	if err := p.Operate(ctxT(t), oid, &op); err != nil {
		t.Fatalf("remove %s: %v", oid, err)
	}
}

type nopWatcher struct{ notifies atomic.Int32 }

func (w *nopWatcher) HandleNotify(_ context.Context, n *objstore.Notification) {
	w.notifies.Add(1)
	n.Ack(nil)
}
func (w *nopWatcher) HandleWatchError(context.Context, error) {}

func TestRemoveBusy(t *testing.T) {
	p := newPool(t)
	ctx := ctxT(t)
	img := mustCreate(t, p, "vol", 1<<20, CreateOptions{})
	w, err := p.Watch(ctx, "rbd_header."+img.ID(), &nopWatcher{})
	if err != nil {
		t.Fatal(err)
	}
	if err := Remove(ctx, p, "vol"); !errors.Is(err, ErrBusy) {
		t.Fatalf("Remove of a watched image = %v, want ErrBusy", err)
	}
	if _, err := Open(ctx, p, "vol"); err != nil {
		t.Fatalf("image damaged by a refused Remove: %v", err)
	}
	w.Close(context.Background())
	if err := Remove(ctx, p, "vol"); err != nil {
		t.Fatal(err)
	}
}

func TestResize(t *testing.T) {
	ctx := ctxT(t)
	const obj = 1 << 12
	p, img := newTestImage(t, 10*obj)
	fill := bytes.Repeat([]byte{0xab}, 10*obj)
	if _, err := img.WriteAt(ctx, fill, 0); err != nil {
		t.Fatal(err)
	}

	// Shrink into the middle of object 3: objects 4..9 go, 3 is truncated.
	newSize := int64(3*obj + 100)
	if err := Resize(ctx, p, "vol", newSize); err != nil {
		t.Fatal(err)
	}
	var want []string
	for n := range 4 {
		want = append(want, dataOID("rbd_data."+img.ID(), uint64(n)))
	}
	if got := objects(t, p, "rbd_data."); !slices.Equal(got, want) {
		t.Fatalf("data objects after shrink: %v", got)
	}
	if d, _ := data(t, p, want[3]); len(d) != 100 {
		t.Fatalf("boundary object is %d bytes, want 100", len(d))
	}
	img, err := Open(ctx, p, "vol")
	if err != nil {
		t.Fatal(err)
	}
	if img.Size() != newSize {
		t.Fatalf("size %d, want %d", img.Size(), newSize)
	}

	// Grow back while open: the open image is notified, and after Refresh
	// the new space reads as zeros (no stale data resurfaces).
	w := &nopWatcher{}
	watch, err := p.Watch(ctx, "rbd_header."+img.ID(), w)
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close(context.Background())
	if err := Resize(ctx, p, "vol", 10*obj); err != nil {
		t.Fatal(err)
	}
	if w.notifies.Load() != 1 {
		t.Fatalf("%d notifications, want 1", w.notifies.Load())
	}
	if img.Size() != newSize {
		t.Fatal("size changed before Refresh")
	}
	if err := img.Refresh(ctx); err != nil || img.Size() != 10*obj {
		t.Fatalf("after Refresh: size %d, %v", img.Size(), err)
	}
	got := make([]byte, 10*obj)
	if _, err := img.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	wantData := append(bytes.Repeat([]byte{0xab}, int(newSize)), make([]byte, 10*obj-newSize)...)
	if !bytes.Equal(got, wantData) {
		t.Fatal("data after shrink and grow differs")
	}

	// Shrinking a watched (open) image is refused; growing is not.
	if err := Resize(ctx, p, "vol", obj); !errors.Is(err, ErrBusy) {
		t.Fatalf("shrink of an open image = %v, want ErrBusy", err)
	}
	if err := Resize(ctx, p, "vol", 11*obj); err != nil {
		t.Fatal(err)
	}
	if err := Resize(ctx, p, "vol", -1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("negative size = %v", err)
	}
	if err := Resize(ctx, p, "nope", 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("resize of a missing image = %v", err)
	}
	watch.Close(context.Background())
	// To zero and on an object boundary.
	for _, s := range []int64{2 * obj, 0} {
		if err := Resize(ctx, p, "vol", s); err != nil {
			t.Fatal(err)
		}
		if got, want := len(objects(t, p, "rbd_data.")), int(s/obj); got != want {
			t.Fatalf("%d data objects at size %d, want %d", got, s, want)
		}
	}
}

func TestList(t *testing.T) {
	p := newPool(t)
	ctx := ctxT(t)
	if l, err := List(ctx, p); err != nil || len(l) != 0 {
		t.Fatalf("List of an empty pool = %v, %v", l, err)
	}
	var names []string
	for i := range 5 {
		n := fmt.Sprintf("img-%d", 4-i)
		names = append(names, n)
		if err := Create(ctx, p, n, 1<<20, CreateOptions{Features: clsrbd.FeatureLayering}); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(names)
	l, err := List(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range l {
		got = append(got, e.Name)
		if id, _ := clsrbd.GetID(ctx, p, clsrbd.IDOID(e.Name)); id != e.ID {
			t.Fatalf("List id of %s = %s, want %s", e.Name, e.ID, id)
		}
	}
	if !slices.Equal(got, names) {
		t.Fatalf("List = %v, want %v", got, names)
	}
}

func TestImageIDShape(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := newImageID(0x1027)
		if !regexp.MustCompile(`^1027[0-9a-f]{1,8}$`).MatchString(id) {
			t.Fatalf("id %q", id)
		}
		seen[id] = true
	}
	if len(seen) < 990 {
		t.Fatalf("only %d distinct ids of 1000", len(seen))
	}
	if id := newImageID(1<<63 | 1); len(id) != 14 {
		t.Fatalf("id %q longer than RBD_MAX_IMAGE_ID_LENGTH", id)
	}
}
