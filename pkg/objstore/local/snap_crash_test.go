package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Snapshot crash test: a child writes whole objects with the snapshot
// context of the snapshots it made, makes and removes snapshots, and is
// SIGKILLed at random moments; after each kill every acknowledged snapshot
// still reads as the objects were when it was made, removed ones fail, and
// every head is at its last acknowledged or in-flight version.

const snapCrashObjects = 6

func snapCrashOID(round, o int) string { return fmt.Sprintf("snapcrash.%d.%d", round, o) }

// snapCrashContent is object o's content at version v of a round; nil
// means the object does not exist (never written, or removed by v).
func snapCrashContent(round, o int, v uint64) []byte {
	if v == 0 || v%5 == 0 {
		return nil
	}
	r := rand.New(rand.NewPCG(uint64(round)<<32|uint64(o), v))
	b := make([]byte, 1+r.IntN(96<<10))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// childSnapCrash is the child of TestSnapCrash. Lines: "ready", "snap <id>
// <v0> ... <vn>" once a snapshot is durable (the versions its objects had),
// "rm? <id>" / "rm <id>" around a removal, "try <o> <v>" / "ack <o> <v>"
// around a write.
func childSnapCrash(dir string, opts Options) error {
	round, _ := strconv.Atoi(os.Getenv("LOCAL_TEST_SEQBASE"))
	_, p, err := openChild(dir, opts)
	if err != nil {
		return err
	}
	sn, err := objstore.Snapper(p)
	if err != nil {
		return err
	}
	ctx := context.Background()
	out("ready")
	ver := make([]uint64, snapCrashObjects)
	var snaps []uint64 // newest first
	var seq uint64
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	for i := 1; ; i++ {
		switch {
		case i%12 == 0:
			id, err := sn.SelfManagedSnapCreate(ctx)
			if err != nil {
				return err
			}
			snaps = append([]uint64{id}, snaps...)
			seq = id
			vs := make([]string, len(ver))
			for o, v := range ver {
				vs[o] = strconv.FormatUint(v, 10)
			}
			out("snap %d %s", id, strings.Join(vs, " "))
		case i%31 == 0 && len(snaps) > 1:
			old := snaps[len(snaps)-1]
			snaps = snaps[:len(snaps)-1]
			out("rm? %d", old)
			if err := sn.SelfManagedSnapRemove(ctx, old); err != nil {
				return err
			}
			out("rm %d", old)
		default:
			o := r.IntN(snapCrashObjects)
			v := ver[o] + 1
			op := &objstore.WriteOp{}
			op.SetSnapContext(objstore.SnapContext{Seq: seq, Snaps: snaps})
			if b := snapCrashContent(round, o, v); b != nil {
				op.WriteFull(b)
			} else {
				op.Remove()
			}
			out("try %d %d", o, v)
			err := p.Operate(ctx, snapCrashOID(round, o), op)
			if err != nil && !(errors.Is(err, objstore.ErrNotFound) && snapCrashContent(round, o, v) == nil) {
				return err
			}
			ver[o] = v
			out("ack %d %d", o, v)
		}
	}
}

type snapCrashRound struct {
	round      int
	snaps      map[uint64][]uint64 // acknowledged snapshots: versions
	removed    map[uint64]bool     // acknowledged removals
	removing   map[uint64]bool     // removals in flight
	acked, try []uint64
}

func TestSnapCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test")
	}
	const rounds = 12
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
	var all []*snapCrashRound
	for round := 0; round < rounds; round++ {
		ch := startChild(t, "snapcrash", "LOCAL_TEST_DIR="+dir, fmt.Sprintf("LOCAL_TEST_SEQBASE=%d", round),
			"LOCAL_TEST_MAXLOG="+strconv.Itoa(1<<20))
		ch.expect("ready", time.Minute)
		time.Sleep(time.Duration(100+rng.IntN(600)) * time.Millisecond)
		ch.Kill()
		st := &snapCrashRound{round: round, snaps: map[uint64][]uint64{}, removed: map[uint64]bool{}, removing: map[uint64]bool{},
			acked: make([]uint64, snapCrashObjects), try: make([]uint64, snapCrashObjects)}
		for l := range ch.lines {
			f := strings.Fields(l)
			if len(f) < 2 {
				continue
			}
			n := make([]uint64, len(f)-1)
			for i := range n {
				n[i], _ = strconv.ParseUint(f[i+1], 10, 64)
			}
			switch f[0] {
			case "snap":
				st.snaps[n[0]] = n[1:]
			case "rm?":
				st.removing[n[0]] = true
			case "rm":
				st.removed[n[0]] = true
			case "try":
				st.try[n[0]] = n[1]
			case "ack":
				st.acked[n[0]] = n[1]
			}
		}
		all = append(all, st)
		c := openT(t, dir, testOptions())
		p := poolT(t, c, "rbd")
		checked := 0
		for _, st := range all {
			checked += checkSnapCrash(t, p, st)
		}
		c.Close()
		t.Logf("round %d: %d snapshots made, %d removed; %d snapshot reads checked over all rounds", round, len(st.snaps), len(st.removed), checked)
	}
}

func checkSnapCrash(t *testing.T, p objstore.Pool, st *snapCrashRound) int {
	t.Helper()
	read := func(o int, snap uint64) ([]byte, error) {
		op := &objstore.ReadOp{}
		op.SetSnap(snap)
		r := op.Read(0, 0)
		err := p.Read(context.Background(), snapCrashOID(st.round, o), op)
		return r.Data(), err
	}
	same := func(got []byte, err error, want []byte) bool {
		if want == nil {
			return errors.Is(err, objstore.ErrNotFound)
		}
		return err == nil && bytes.Equal(got, want)
	}
	n := 0
	for o := 0; o < snapCrashObjects; o++ {
		got, err := read(o, 0)
		if !same(got, err, snapCrashContent(st.round, o, st.acked[o])) && !same(got, err, snapCrashContent(st.round, o, st.try[o])) {
			t.Fatalf("round %d: object %d is at neither its acknowledged version %d nor its in-flight %d (%v)", st.round, o, st.acked[o], st.try[o], err)
		}
		for id, vs := range st.snaps {
			if st.removing[id] && !st.removed[id] {
				continue // either way
			}
			got, err := read(o, id)
			if st.removed[id] {
				if !errors.Is(err, objstore.ErrNotFound) {
					t.Fatalf("round %d: object %d at removed snapshot %d: %v", st.round, o, id, err)
				}
				continue
			}
			if !same(got, err, snapCrashContent(st.round, o, vs[o])) {
				t.Fatalf("round %d: object %d at snapshot %d is not version %d (%d bytes, %v)", st.round, o, id, vs[o], len(got), err)
			}
			n++
		}
	}
	return n
}
