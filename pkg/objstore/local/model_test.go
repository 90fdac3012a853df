package local

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// A reference model of an object and of the write steps, written
// independently of the implementation, for randomized differential tests.

type mobj struct {
	data   []byte
	omap   map[string]string
	xattrs map[string]string
}

func (o *mobj) clone() *mobj {
	n := &mobj{data: append([]byte{}, o.data...), omap: map[string]string{}, xattrs: map[string]string{}}
	for k, v := range o.omap {
		n.omap[k] = v
	}
	for k, v := range o.xattrs {
		n.xattrs[k] = v
	}
	return n
}

type mstep struct {
	kind objstore.StepKind
	excl bool
	off  uint64
	n    uint64
	data []byte
	keys []string
	kv   map[string]string
	name string
}

// applyModel applies steps to o (nil: missing) and returns the new object
// or the errno of the first failing step.
func applyModel(o *mobj, steps []mstep) (*mobj, syscall.Errno) {
	if o != nil {
		o = o.clone()
	}
	create := func() {
		if o == nil {
			o = &mobj{omap: map[string]string{}, xattrs: map[string]string{}}
		}
	}
	for _, s := range steps {
		switch s.kind {
		case objstore.StepCreate:
			if o != nil && s.excl {
				return nil, syscall.EEXIST
			}
			create()
		case objstore.StepRemove:
			if o == nil {
				return nil, syscall.ENOENT
			}
			o = nil
		case objstore.StepWrite:
			create()
			end := s.off + uint64(len(s.data))
			for uint64(len(o.data)) < end {
				o.data = append(o.data, 0)
			}
			copy(o.data[s.off:], s.data)
		case objstore.StepWriteFull:
			create()
			o.data = append([]byte{}, s.data...)
		case objstore.StepAppend:
			create()
			o.data = append(o.data, s.data...)
		case objstore.StepTruncate:
			if o == nil {
				continue
			}
			for uint64(len(o.data)) < s.off {
				o.data = append(o.data, 0)
			}
			o.data = o.data[:s.off]
		case objstore.StepZero:
			if o == nil {
				continue
			}
			for i := s.off; i < s.off+s.n && i < uint64(len(o.data)); i++ {
				o.data[i] = 0
			}
		case objstore.StepSetOmap:
			create()
			for k, v := range s.kv {
				o.omap[k] = v
			}
		case objstore.StepRmOmapKeys:
			if o == nil {
				return nil, syscall.ENOENT
			}
			for _, k := range s.keys {
				delete(o.omap, k)
			}
		case objstore.StepClearOmap:
			if o == nil {
				return nil, syscall.ENOENT
			}
			o.omap = map[string]string{}
		case objstore.StepSetXattr:
			create()
			o.xattrs[s.name] = string(s.data)
		case objstore.StepRmXattr:
			if o == nil {
				return nil, syscall.ENOENT
			}
			delete(o.xattrs, s.name)
		case objstore.StepAssertExists:
			if o == nil {
				return nil, syscall.ENOENT
			}
		}
	}
	return o, 0
}

func toWriteOp(steps []mstep) *objstore.WriteOp {
	op := &objstore.WriteOp{}
	for _, s := range steps {
		switch s.kind {
		case objstore.StepCreate:
			op.Create(s.excl)
		case objstore.StepRemove:
			op.Remove()
		case objstore.StepWrite:
			op.Write(s.off, s.data)
		case objstore.StepWriteFull:
			op.WriteFull(s.data)
		case objstore.StepAppend:
			op.Append(s.data)
		case objstore.StepTruncate:
			op.Truncate(s.off)
		case objstore.StepZero:
			op.Zero(s.off, s.n)
		case objstore.StepSetOmap:
			kv := map[string][]byte{}
			for k, v := range s.kv {
				kv[k] = []byte(v)
			}
			op.SetOmap(kv)
		case objstore.StepRmOmapKeys:
			op.RmOmapKeys(s.keys...)
		case objstore.StepClearOmap:
			op.ClearOmap()
		case objstore.StepSetXattr:
			op.SetXattr(s.name, s.data)
		case objstore.StepRmXattr:
			op.RmXattr(s.name)
		case objstore.StepAssertExists:
			op.AssertExists()
		}
	}
	return op
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	r.Read(b)
	return b
}

func randStep(r *rand.Rand) mstep {
	key := func() string { return fmt.Sprintf("k%02d", r.Intn(30)) }
	switch r.Intn(20) {
	case 0:
		return mstep{kind: objstore.StepCreate, excl: r.Intn(2) == 0}
	case 1:
		return mstep{kind: objstore.StepRemove}
	case 2, 3, 4:
		return mstep{kind: objstore.StepWrite, off: uint64(r.Intn(70000)), data: randBytes(r, r.Intn(9000))}
	case 5:
		return mstep{kind: objstore.StepWriteFull, data: randBytes(r, r.Intn(20000))}
	case 6, 7, 8:
		return mstep{kind: objstore.StepAppend, data: randBytes(r, r.Intn(5000))}
	case 9:
		n := uint64(r.Intn(80000))
		if r.Intn(10) == 0 {
			n = 1 << 20
		}
		return mstep{kind: objstore.StepTruncate, off: n}
	case 10:
		return mstep{kind: objstore.StepZero, off: uint64(r.Intn(80000)), n: uint64(r.Intn(30000))}
	case 11, 12, 13:
		kv := map[string]string{}
		for i := r.Intn(4); i >= 0; i-- {
			kv[key()] = string(randBytes(r, r.Intn(40)))
		}
		return mstep{kind: objstore.StepSetOmap, kv: kv}
	case 14:
		return mstep{kind: objstore.StepRmOmapKeys, keys: []string{key(), key()}}
	case 15:
		return mstep{kind: objstore.StepClearOmap}
	case 16, 17:
		return mstep{kind: objstore.StepSetXattr, name: fmt.Sprintf("x%d", r.Intn(4)), data: randBytes(r, r.Intn(20))}
	case 18:
		return mstep{kind: objstore.StepRmXattr, name: fmt.Sprintf("x%d", r.Intn(4))}
	default:
		return mstep{kind: objstore.StepAssertExists}
	}
}

// checkModel compares every object of oids with the model.
func checkModel(t *testing.T, p objstore.Pool, oids []string, m map[string]*mobj, when string) {
	t.Helper()
	for _, oid := range oids {
		o := m[oid]
		op := &objstore.ReadOp{}
		d := op.Read(0, 0)
		st := op.Stat()
		om := op.GetOmapVals("", "", 0)
		xa := op.GetXattrs()
		err := p.Read(context.Background(), oid, op)
		if o == nil {
			if objstore.Errno(err) != syscall.ENOENT {
				t.Fatalf("%s: %s should be missing: %v", when, oid, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: read %s: %v", when, oid, err)
		}
		if !bytes.Equal(d.Data(), o.data) || st.Stat().Size != uint64(len(o.data)) {
			t.Fatalf("%s: %s data differs (%d bytes, size %d; model %d bytes)", when, oid, len(d.Data()), st.Stat().Size, len(o.data))
		}
		got := map[string]string{}
		for _, e := range om.Page().Entries {
			got[e.Key] = string(e.Value)
		}
		if fmt.Sprint(got) != fmt.Sprint(o.omap) {
			t.Fatalf("%s: %s omap %q, model %q", when, oid, got, o.omap)
		}
		gx := map[string]string{}
		for k, v := range xa.Values() {
			gx[k] = string(v)
		}
		if fmt.Sprint(gx) != fmt.Sprint(o.xattrs) {
			t.Fatalf("%s: %s xattrs %q, model %q", when, oid, gx, o.xattrs)
		}
	}
}

// runModel runs random compound operations from several goroutines (each
// on its own objects) against p and the model, checking errors as it goes.
func runModel(t *testing.T, p objstore.Pool, seed int64, workers, ops int, between func()) (oids []string, m map[string]*mobj) {
	m = map[string]*mobj{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		var mine []string
		for k := 0; k < 3; k++ {
			mine = append(mine, fmt.Sprintf("model.%d.%d", w, k))
		}
		oids = append(oids, mine...)
		wg.Add(1)
		go func(w int, mine []string) {
			defer wg.Done()
			r := rand.New(rand.NewSource(seed + int64(w)))
			local := map[string]*mobj{}
			for i := 0; i < ops; i++ {
				oid := mine[r.Intn(len(mine))]
				steps := make([]mstep, 1+r.Intn(4))
				for j := range steps {
					steps[j] = randStep(r)
				}
				next, errno := applyModel(local[oid], steps)
				err := p.Operate(context.Background(), oid, toWriteOp(steps))
				if objstore.Errno(err) != errno || (errno == 0 && err != nil) {
					t.Errorf("seed %d worker %d op %d on %s: got %v, model errno %d (%d steps)", seed, w, i, oid, err, errno, len(steps))
					return
				}
				if errno == 0 {
					local[oid] = next
				}
				if between != nil && i%10 == 0 {
					between()
				}
			}
			mu.Lock()
			for k, v := range local {
				m[k] = v
			}
			mu.Unlock()
		}(w, mine)
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return oids, m
}

// TestModel runs random compound operations against the reference model,
// with checkpoints, and checks the state before and after reopening.
func TestModel(t *testing.T) {
	seed := time.Now().UnixNano()
	dir := t.TempDir()
	opts := testOptions()
	opts.MaxLogBytes = 1 << 20 // checkpoint often
	c := openT(t, dir, opts)
	p := poolT(t, c, "rbd")
	oids, m := runModel(t, p, seed, 4, 300, nil)
	checkModel(t, p, oids, m, "before reopening")
	c.Close()
	c = openT(t, dir, opts)
	checkModel(t, poolT(t, c, "rbd"), oids, m, "after reopening")
}

// TestPowerLoss models a power loss: the log is durable (every operation
// was acknowledged, so its record was synced) but the object files, never
// synced here (no checkpoint), may each be missing, or hold any version
// that was on disk at some moment of the run, even one caught in the middle
// of an apply. Recovery must rebuild exactly the acknowledged state.
func TestPowerLoss(t *testing.T) {
	for round := 0; round < 3; round++ {
		seed := time.Now().UnixNano()
		dir := t.TempDir()
		opts := testOptions()
		opts.MaxLogBytes = 1 << 40 // no checkpoint: no object file is durable
		c := openT(t, dir, opts)
		p := poolT(t, c, "rbd")
		r := rand.New(rand.NewSource(seed))
		var smu sync.Mutex
		versions := map[string][][]byte{} // relative path → contents seen
		snap := func() {
			smu.Lock()
			defer smu.Unlock()
			filepath.WalkDir(filepath.Join(dir, "pools"), func(path string, d fs.DirEntry, err error) error {
				if err != nil || d.IsDir() || strings.Contains(path, "/watch/") || r.Intn(3) != 0 {
					return nil
				}
				b, err := os.ReadFile(path)
				if err == nil {
					rel, _ := filepath.Rel(dir, path)
					versions[rel] = append(versions[rel], b)
				}
				return nil
			})
		}
		oids, m := runModel(t, p, seed, 3, 200, snap)
		snap()
		// The power goes out now: the log as synced (before Close, whose
		// checkpoint would make the object files durable).
		crash := t.TempDir()
		for _, f := range []string{"wal", "cluster.json"} {
			copyFile(t, filepath.Join(dir, f), filepath.Join(crash, f))
		}
		c.Close()
		kept, dropped := 0, 0
		for rel, vs := range versions {
			pick := r.Intn(len(vs) + 1)
			if pick == len(vs) {
				dropped++
				continue
			}
			kept++
			dst := filepath.Join(crash, rel)
			os.MkdirAll(filepath.Dir(dst), 0o755)
			if err := os.WriteFile(dst, vs[pick], 0o644); err != nil {
				t.Fatal(err)
			}
		}
		c = openT(t, crash, opts)
		checkModel(t, poolT(t, c, "rbd"), oids, m, fmt.Sprintf("after power loss (seed %d)", seed))
		c.Close()
		t.Logf("round %d: %d object files from a random moment, %d lost: state recovered", round, kept, dropped)
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	outf, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer outf.Close()
	if _, err := io.Copy(outf, in); err != nil {
		t.Fatal(err)
	}
}
