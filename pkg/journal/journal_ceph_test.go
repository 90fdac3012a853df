//go:build ceph && pacific

package journal

// Tests of the journaler on a real Ceph cluster (pool rbd of
// hack/ceph-up.sh's cluster): the OSD's cls_journal and librbd's journals
// instead of the local backend's Go class.

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rbd"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
	"github.com/csi-rbdj/csi-rbdj/pkg/testproc"
)

func cephID(prefix string) string {
	return fmt.Sprintf("%s%x", prefix, time.Now().UnixNano())
}

// removeJournalAtEnd removes the journal when the test ends.
func removeJournalAtEnd(t *testing.T, pool objstore.Pool, id string) {
	t.Cleanup(func() {
		if err := Remove(context.Background(), pool, nil, id); err != nil {
			t.Errorf("remove journal %s: %v", id, err)
		}
	})
}

// journalScenario runs one fixed sequence of journal operations on pool:
// create (order 12: 4 KiB objects, so the sets advance), register the
// image client and a peer, allocate tags, append one entry at a time
// (deterministic object fill), commit, trim once the peer is gone.
func journalScenario(t *testing.T, pool objstore.Pool, id string) {
	t.Helper()
	ctx := context.Background()
	if err := Create(ctx, pool, id, CreateOptions{Order: 12, SplayWidth: 3, DataPoolID: -1}); err != nil {
		t.Fatal(err)
	}
	j, err := Open(ctx, pool, id, "", Options{Settings: fastSettings})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := j.Close(ctx); err != nil {
			t.Error(err)
		}
	}()
	if err := j.RegisterClient(ctx, cephenc.Marshal(rbdjournal.ClientData{Meta: rbdjournal.ImageClientMeta{TagClass: 0}})); err != nil {
		t.Fatal(err)
	}
	peer, err := Open(ctx, pool, id, "peer", Options{Settings: fastSettings})
	if err != nil {
		t.Fatal(err)
	}
	if err := peer.RegisterClient(ctx, []byte("peer data")); err != nil {
		t.Fatal(err)
	}
	tag0, err := j.AllocateTag(ctx, clsjournal.TagClassNew, cephenc.Marshal(rbdjournal.TagData{}))
	if err != nil {
		t.Fatal(err)
	}
	tag1, err := j.AllocateTag(ctx, tag0.TagClass, cephenc.Marshal(rbdjournal.TagData{
		Predecessor: rbdjournal.TagPredecessor{CommitValid: true, TagTid: tag0.Tid, EntryTid: 0},
	}))
	if err != nil {
		t.Fatal(err)
	}
	if err := j.UpdateClientData(ctx, cephenc.Marshal(rbdjournal.ClientData{Meta: rbdjournal.ImageClientMeta{TagClass: tag1.TagClass}})); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(11, 12))
	var fs []*Future
	for i := 0; i < 60; i++ {
		f := j.Append(tag1.Tid, payload(r, 1500))
		if err := f.Wait(ctx); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		fs = append(fs, f)
	}
	for _, f := range fs[:40] {
		j.Committed(f.CommitTid)
	}
	if err := j.FlushCommitPosition(ctx); err != nil {
		t.Fatal(err)
	}
	if min, _ := j.Sets(); min != 0 {
		t.Fatalf("trimmed to set %d while the peer has committed nothing", min)
	}
	if err := peer.UnregisterClient(ctx); err != nil {
		t.Fatal(err)
	}
	if err := peer.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for _, f := range fs[40:50] {
		j.Committed(f.CommitTid)
	}
	if err := j.FlushCommitPosition(ctx); err != nil {
		t.Fatal(err)
	}
	if min, active := j.Sets(); min == 0 {
		t.Fatalf("sets min %d active %d after the peer left: want trimmed", min, active)
	}
}

// TestCephDifferentialHeader runs the same journal operations on the local
// backend (Go cls_journal) and on Ceph (the OSD's cls_journal) and compares
// the header omap byte for byte, and the data objects.
func TestCephDifferentialHeader(t *testing.T) {
	cpool := cephtest.Pool(t)
	lpool := newPool(t)
	id := cephID("difftest")
	removeJournalAtEnd(t, cpool, id)
	journalScenario(t, lpool, id)
	journalScenario(t, cpool, id)

	lh, ch := headerOmap(t, lpool, id), headerOmap(t, cpool, id)
	keys := map[string]bool{}
	for k := range lh {
		keys[k] = true
	}
	for k := range ch {
		keys[k] = true
	}
	var sorted []string
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	for _, k := range sorted {
		lv, lok := lh[k]
		cv, cok := ch[k]
		switch {
		case !lok || !cok:
			t.Errorf("key %q: on local %v, on ceph %v", k, lok, cok)
		case !bytes.Equal(lv, cv):
			t.Errorf("key %q:\nlocal %x\n ceph %x", k, lv, cv)
		}
	}
	t.Logf("header omap: %d keys, identical on both backends: %v", len(sorted), !t.Failed())

	ld, cd := dataByNumber(t, lpool, id), dataByNumber(t, cpool, id)
	if len(ld) != len(cd) {
		t.Errorf("data objects: %d on local, %d on ceph", len(ld), len(cd))
	}
	for n, b := range ld {
		if !bytes.Equal(b, cd[n]) {
			t.Errorf("data object %d differs (%d bytes on local, %d on ceph)", n, len(b), len(cd[n]))
		}
	}
	t.Logf("%d data objects compared", len(ld))
}

// TestCephGoldenBytes is TestGoldenBytes on Ceph: our journaler driven
// through what librbd did for golden-clean writes librbd's header omap and
// data objects byte for byte, through the OSD's cls_journal.
// TestCephAppendMixedSizesOneBatch: large and small entries, the pieces of
// one vectored append step, land in order on an OSD.
func TestCephAppendMixedSizesOneBatch(t *testing.T) {
	pool := cephtest.Pool(t)
	id := cephID("mixed")
	removeJournalAtEnd(t, pool, id)
	mixedSizesScenario(t, pool, id)
}

func TestCephGoldenBytes(t *testing.T) {
	pool := cephtest.Pool(t)
	goldenID, golden := goldenObjects(t, "golden-clean")
	// A journal id of our own (the pool is shared); ids are not in the bytes.
	id := cephID("golden")
	removeJournalAtEnd(t, pool, id)
	writeGoldenClean(t, pool, id, golden)
	checkGoldenClean(t, pool, id, golden)
	t.Logf("golden-clean (librbd journal %s) reproduced on Ceph as journal %s", goldenID, id)
}

// TestCephLibrbdWriterHelper is the child of TestCephReplayLibrbdCrash: it
// opens the image with librbd, performs the golden-crash writes and exits
// without closing the image (the commit position stays empty).
func TestCephLibrbdWriterHelper(t *testing.T) {
	name := testproc.ChildEnv(t, "JOURNAL_CEPH_LIBRBD_IMAGE", "helper process for TestCephReplayLibrbdCrash")
	img, pool := cephtest.OpenUncached(t, name)
	for _, w := range []struct {
		off  int64
		n    int
		fill byte
	}{{0, 4096, 0x11}, {1 << 20, 4096, 0x22}, {8 << 20, 20480, 0x33}} {
		if _, err := img.WriteAt(bytes.Repeat([]byte{w.fill}, w.n), w.off); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := img.Discard(1<<20, 4096); err != nil {
		t.Fatal(err)
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt(bytes.Repeat([]byte{0x44}, 512), 16<<20); err != nil {
		t.Fatal(err)
	}
	fmt.Println("WRITTEN", pool.Client().Addr)
	os.Exit(0) // without closing the image: a crash, for the journal
}

// TestCephReplayLibrbdCrash: librbd (in a child process) creates the
// journal and writes the golden-crash sequence, then dies; our journaler
// reads librbd's header (client "", tags) and replays librbd's entries.
func TestCephReplayLibrbdCrash(t *testing.T) {
	ctx := context.Background()
	c := cephtest.Connect(t)
	pool := cephtest.PoolOf(t, c)
	name := cephID("journaltest-crash-")
	opts := rbd.NewRbdImageOptions()
	defer opts.Destroy()
	for _, o := range []struct {
		k rbd.ImageOption
		v uint64
	}{{rbd.ImageOptionFormat, 2}, {rbd.ImageOptionOrder, 22},
		{rbd.ImageOptionFeatures, rbd.FeatureLayering | rbd.FeatureExclusiveLock | rbd.FeatureJournaling}} {
		if err := opts.SetUint64(o.k, o.v); err != nil {
			t.Fatal(err)
		}
	}
	if err := rbd.CreateImage(pool.IOContext(), name, 64<<20, opts); err != nil {
		t.Fatal(err)
	}
	id, err := clsrbd.GetID(ctx, pool, clsrbd.IDOID(name))
	if err != nil {
		t.Fatal(err)
	}

	// librbd's fresh journal, read by us.
	j, err := Open(ctx, pool, id, "", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if j.Order() != 24 || j.SplayWidth() != 4 {
		t.Errorf("order %d splay %d", j.Order(), j.SplayWidth())
	}
	cl, err := j.Client()
	if err != nil {
		t.Fatal(err)
	}
	var cd rbdjournal.ClientData
	if err := cephenc.Unmarshal(cl.Data, &cd); err != nil {
		t.Fatalf("client data %x: %v", cl.Data, err)
	}
	if m, ok := cd.Meta.(rbdjournal.ImageClientMeta); !ok || m.TagClass != 0 {
		t.Fatalf("client meta %+v", cd.Meta)
	}
	if err := j.Close(ctx); err != nil {
		t.Fatal(err)
	}

	cmd := testproc.Command("^TestCephLibrbdWriterHelper$", "JOURNAL_CEPH_LIBRBD_IMAGE="+name)
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("WRITTEN")) {
		t.Fatalf("librbd writer: %v\n%s", err, out)
	}
	var childAddr string
	for _, l := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(l, "WRITTEN "); ok {
			childAddr = strings.TrimSpace(rest)
		}
	}
	t.Cleanup(func() { removeCrashedImage(t, c, pool, name, childAddr) })

	j, err = Open(ctx, pool, id, "", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close(ctx)
	got, st := replayAll(t, j)
	type want struct {
		typ       rbdjournal.EventType
		off, n    uint64
		fill      byte
		tag, etid uint64
	}
	wants := []want{
		{rbdjournal.EventTypeAioWrite, 0, 4096, 0x11, 1, 0},
		{rbdjournal.EventTypeAioWrite, 1 << 20, 4096, 0x22, 1, 1},
		{rbdjournal.EventTypeAioWrite, 8 << 20, 16340, 0x33, 1, 2},
		{rbdjournal.EventTypeAioWrite, 8<<20 + 16340, 4140, 0x33, 1, 3},
		{rbdjournal.EventTypeAioFlush, 0, 0, 0, 1, 4},
		{rbdjournal.EventTypeAioWrite, 16 << 20, 512, 0x44, 1, 5},
	}
	if len(got) != len(wants) {
		for i, e := range got {
			var ev rbdjournal.EventEntry
			err := cephenc.Unmarshal(e.Data, &ev)
			t.Logf("entry %d: tag %d tid %d: %T %v", i, e.TagTid, e.EntryTid, ev.Event, err)
		}
		t.Fatalf("replayed %d entries (%+v), want %d", len(got), st, len(wants))
	}
	for i, e := range got {
		w := wants[i]
		if e.TagTid != w.tag || e.EntryTid != w.etid {
			t.Errorf("entry %d: tag %d tid %d", i, e.TagTid, e.EntryTid)
		}
		var ev rbdjournal.EventEntry
		if err := cephenc.Unmarshal(e.Data, &ev); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if ev.Event.Type() != w.typ {
			t.Fatalf("entry %d: %v, want %v", i, ev.Event.Type(), w.typ)
		}
		if aw, ok := ev.Event.(rbdjournal.AioWriteEvent); ok {
			if aw.Offset != w.off || aw.Length != w.n || !bytes.Equal(aw.Data, bytes.Repeat([]byte{w.fill}, int(w.n))) {
				t.Errorf("entry %d: write %d+%d, want %d+%d of %#x", i, aw.Offset, aw.Length, w.off, w.n, w.fill)
			}
		}
	}
	t.Logf("replayed librbd's %d uncommitted entries: %+v", len(got), st)
}

// removeCrashedImage removes an image whose librbd client died holding the
// exclusive lock: blocklisting the dead client drops its watch at once (else
// librbd reports the image busy for 30 s), then librbd breaks the lock.
func removeCrashedImage(t *testing.T, c *ceph.Cluster, pool *ceph.Pool, name, addr string) {
	ctx := context.Background()
	if addr != "" {
		if err := c.Blocklist(ctx, addr, time.Hour); err != nil {
			t.Errorf("blocklist the dead writer: %v", err)
		}
		defer c.Unblocklist(ctx, addr)
	}
	var err error
	for i := 0; i < 20; i++ {
		if err = pool.Cluster().Call(ctx, func() { err = rbd.RemoveImage(pool.IOContext(), name) }); err == nil {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Errorf("remove image %s: %v", name, err)
}

// TestCephLaggyClients is TestLaggyClients on the test cluster: the OSD's
// cls journal flags the laggy peer DISCONNECTED and the trim passes it.
func TestCephLaggyClients(t *testing.T) {
	pool := cephtest.Pool(t)
	for _, tt := range laggyCases {
		t.Run(tt.name, func(t *testing.T) {
			id := cephID("laggy")
			removeJournalAtEnd(t, pool, id)
			laggyScenario(t, pool, id, tt)
		})
	}
}

// BenchmarkCephPipelined is BenchmarkPipelined on the Ceph cluster.
func BenchmarkCephPipelined(b *testing.B) {
	benchPipelined(b, func(b *testing.B) objstore.Pool { return cephtest.Pool(b) })
}
