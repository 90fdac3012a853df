package journal

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/testproc"
)

// crashPayload is the deterministic payload of append idx in round seed, so
// the parent can check bytes without the child telling it.
func crashPayload(seed, idx uint64) []byte {
	r := rand.New(rand.NewPCG(seed, idx))
	return payload(r, 12000)
}

// TestCrashHelperProcess is the child of TestCrashReplaysAcknowledgedPrefix:
// it replays and commits what its predecessor left (as a new owner would),
// then appends continuously under a few tags and reports each append before
// issuing it ("I idx tag tid") and once its future completed ("K idx").
func TestCrashHelperProcess(t *testing.T) {
	dir := testproc.ChildEnv(t, "JOURNAL_CRASH_DIR", "helper process for TestCrashReplaysAcknowledgedPrefix")
	seed, _ := strconv.ParseUint(os.Getenv("JOURNAL_CRASH_SEED"), 10, 64)
	ctx := context.Background()
	out := func(format string, args ...any) { os.Stdout.WriteString(fmt.Sprintf(format, args...) + "\n") }
	pool := openCluster(t, dir)
	j, err := Open(ctx, pool, "crash", "", Options{Settings: Settings{CommitAge: 20 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Replay(ctx, ReplayOptions{}, func(_ context.Context, e ReplayEntry) error {
		j.Committed(e.CommitTid)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	acks := make(chan *Future, 1024)
	idxOf := map[*Future]uint64{}
	var mu sync.Mutex
	go func() {
		for f := range acks {
			if err := f.Wait(ctx); err != nil {
				out("E %v", err)
				os.Exit(3)
			}
			mu.Lock()
			idx := idxOf[f]
			mu.Unlock()
			out("K %d", idx)
			j.Committed(f.CommitTid)
		}
	}()
	var tag, tid uint64
	for idx := uint64(0); ; idx++ {
		if idx%300 == 0 {
			tg, err := j.AllocateTag(ctx, clsjournal.TagClassNew, nil)
			if err != nil {
				t.Fatal(err)
			}
			tag, tid = tg.Tid, 0
		}
		out("I %d %d %d", idx, tag, tid)
		f := j.Append(tag, crashPayload(seed, idx))
		if f.TagTid != tag || f.EntryTid != tid {
			out("E append %d got tag %d tid %d, predicted %d %d", idx, f.TagTid, f.EntryTid, tag, tid)
			os.Exit(3)
		}
		mu.Lock()
		idxOf[f] = idx
		mu.Unlock()
		acks <- f
		tid++
	}
}

type crashEntry struct {
	seed, idx, tag, tid uint64
}

// TestCrashReplaysAcknowledgedPrefix kills an appending child with SIGKILL
// at random moments; after each kill a replay must return exactly the
// entries past the commit position, as a prefix of what was issued, holding
// every append whose future completed.
func TestCrashReplaysAcknowledgedPrefix(t *testing.T) {
	rounds := 25
	if testing.Short() {
		rounds = 5
	}
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 42))
	setup, _ := newJournal(t, openCluster(t, dir), "crash", 16)
	setup.Close(context.Background())
	var known []crashEntry // landed and not known to be committed, in journal order
	totalAcked, totalReplayed := 0, 0
	for round := 0; round < rounds; round++ {
		seed := uint64(round)
		cmd := testproc.Command("^TestCrashHelperProcess$", "JOURNAL_CRASH_DIR="+dir, "JOURNAL_CRASH_SEED="+strconv.FormatUint(seed, 10))
		cmd.Stderr = os.Stderr
		child := testproc.Start(t, cmd)
		stdout := child.Stdout
		var issued []crashEntry
		acked := map[uint64]bool{}
		var childErr string
		done := make(chan struct{})
		go func() {
			defer close(done)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				f := strings.Fields(sc.Text())
				switch {
				case len(f) == 4 && f[0] == "I":
					idx, _ := strconv.ParseUint(f[1], 10, 64)
					tag, _ := strconv.ParseUint(f[2], 10, 64)
					tid, _ := strconv.ParseUint(f[3], 10, 64)
					issued = append(issued, crashEntry{seed, idx, tag, tid})
				case len(f) == 2 && f[0] == "K":
					idx, _ := strconv.ParseUint(f[1], 10, 64)
					acked[idx] = true
				case len(f) > 0 && f[0] == "E":
					childErr = sc.Text()
				}
			}
			io.Copy(io.Discard, stdout)
		}()
		time.Sleep(time.Duration(150+r.IntN(500)) * time.Millisecond)
		child.Cmd.Process.Signal(syscall.SIGKILL)
		<-done
		child.Wait()
		if childErr != "" {
			t.Fatalf("round %d: child failed: %s", round, childErr)
		}

		// What the journal must hold: what earlier rounds left, then a
		// prefix of this round's appends.
		all := append(append([]crashEntry(nil), known...), issued...)
		ctx := context.Background()
		j := openJournal(t, openCluster(t, dir), "crash")
		start := 0
		c, err := j.Client()
		if err != nil {
			t.Fatal(err)
		}
		if ps := c.CommitPosition.ObjectPositions; len(ps) > 0 {
			start = -1
			for i, e := range all {
				if e.tag == ps[0].TagTid && e.tid == ps[0].EntryTid {
					start = i + 1
				}
			}
			if start < 0 {
				t.Fatalf("round %d: commit position %+v is not an issued entry", round, ps[0])
			}
		}
		var got []ReplayEntry
		st, err := j.Replay(ctx, ReplayOptions{}, func(_ context.Context, e ReplayEntry) error {
			e.Data = bytes.Clone(e.Data)
			got = append(got, e)
			return nil
		})
		fail := func(format string, args ...any) {
			t.Helper()
			minSet, activeSet := j.Sets()
			t.Logf("commit position %+v, sets [%d, %d]", c.CommitPosition, minSet, activeSet)
			dumpJournal(t, j, minSet, activeSet)
			t.Fatalf(format, args...)
		}
		if err != nil {
			fail("round %d: %v", round, err)
		}
		if start+len(got) > len(all) {
			t.Fatalf("round %d: replayed %d entries past position %d, only %d issued", round, len(got), start, len(all))
		}
		for i, e := range got {
			want := all[start+i]
			if e.TagTid != want.tag || e.EntryTid != want.tid || !bytes.Equal(e.Data, crashPayload(want.seed, want.idx)) {
				fail("round %d: replayed entry %d is tag %d tid %d, want tag %d tid %d (idx %d), or its bytes differ",
					round, i, e.TagTid, e.EntryTid, want.tag, want.tid, want.idx)
			}
		}
		end := start + len(got)
		for i := end; i < len(all); i++ {
			if e := all[i]; e.seed == seed && acked[e.idx] {
				fail("round %d: acknowledged append %d (tag %d tid %d) lost; replay ended at %d of %d (stats %+v)",
					round, e.idx, e.tag, e.tid, end, len(all), st)
			}
		}
		j.Close(ctx)
		// Keep the committed entry itself: it anchors the next round's
		// position if the next child dies before committing anything.
		known = all[max(start-1, 0):end]
		totalAcked += len(acked)
		totalReplayed += len(got)
		t.Logf("round %d: issued %d, acked %d, commit index %d, replayed %d, dropped %d, objects %d",
			round, len(issued), len(acked), start, len(got), st.Dropped, st.Objects)
	}
	t.Logf("%d kills: %d acknowledged appends, %d entries replayed and verified", rounds, totalAcked, totalReplayed)
}

// dumpJournal logs the tag/tid runs of every data object, for diagnosis.
func dumpJournal(t *testing.T, j *Journaler, minSet, activeSet uint64) {
	w := uint64(j.SplayWidth())
	for n := minSet * w; n < (activeSet+1)*w; n++ {
		op := &objstore.ReadOp{}
		res := op.Read(0, 0)
		if err := j.dataPool.Read(context.Background(), j.DataOID(n), op); err != nil {
			t.Logf("object %d: %v", n, err)
			continue
		}
		var runs []string
		b := res.Data()
		for off := 0; off < len(b); {
			e, k, err := DecodeEntry(b[off:])
			if err != nil {
				runs = append(runs, fmt.Sprintf("bad@%d", off))
				break
			}
			runs = append(runs, fmt.Sprintf("%d/%d", e.TagTid, e.EntryTid))
			off += k
		}
		t.Logf("object %d: %s", n, strings.Join(runs, " "))
	}
}
