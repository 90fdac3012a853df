//go:build ceph && pacific

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/ceph/go-ceph/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/librbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

const cephBuilt = true

const (
	journaledFeatures   = clsrbd.FeatureLayering | clsrbd.FeatureExclusiveLock | clsrbd.FeatureJournaling
	unjournaledFeatures = clsrbd.FeatureLayering | clsrbd.FeatureExclusiveLock
)

func connect(ctx context.Context, conf string) (*ceph.Cluster, *ceph.Pool, error) {
	if conf == "" {
		return nil, nil, fmt.Errorf("no cluster configuration")
	}
	c, err := ceph.Connect(ctx, ceph.Config{ConfigFile: conf})
	if err != nil {
		return nil, nil, err
	}
	p, err := c.OpenPool(ctx, "rbd")
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, p, nil
}

// osdPID is the pid of the cluster's OSD 0 (0 if unknown): read from the
// pid file in the run_dir its ceph.conf names.
func (c *cephCluster) osdPID() int {
	runDir := filepath.Join(c.dir, "run")
	if !c.managed {
		runDir = confValue(c.conf, "run_dir")
		if runDir == "" {
			return 0
		}
	}
	b, err := os.ReadFile(filepath.Join(runDir, "osd.0.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return pid
}

// cephEnv is the connection of one round (or row) of Ceph rows, to the
// cluster started for it.
type cephEnv struct {
	conf        string
	noCacheConf string
	c           *ceph.Cluster
	pool        *ceph.Pool
	osdPID      int
	stamp       string
	n           int
}

// begin starts the round's cluster (fresh for the bench's own) and
// connects to it.
func beginCeph(ctx context.Context, o options, cl *cephCluster) (*cephEnv, error) {
	if err := cl.fresh(ctx); err != nil {
		return nil, err
	}
	c, pool, err := connect(ctx, cl.conf)
	if err != nil {
		return nil, err
	}
	e := &cephEnv{conf: cl.conf, c: c, pool: pool, osdPID: cl.osdPID(), stamp: time.Now().Format("150405")}
	// librbd acknowledges writes from its cache (rbd_cache, on by
	// default) before their journal entries are safe; with the cache off
	// it acknowledges a journaled write once it is in the journal and the
	// image, the contract of our durable ack policies.
	conf, err := os.ReadFile(cl.conf)
	if err == nil {
		e.noCacheConf = filepath.Join(o.dir, fmt.Sprintf("ceph-rbd-cache-off-%s-%d.conf", e.stamp, cl.starts))
		err = os.WriteFile(e.noCacheConf, append(conf, "\n[client]\nrbd_cache = false\n"...), 0o600)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return e, nil
}

func (e *cephEnv) close() {
	e.c.Close()
	os.Remove(e.noCacheConf)
}

func (e *cephEnv) newImage(ctx context.Context, prefix string, size int64, features uint64) (string, error) {
	e.n++
	name := fmt.Sprintf("%s-%s-%d", prefix, e.stamp, e.n)
	return name, librbd.Create(ctx, e.pool, name, size, image.CreateOptions{Features: features, JournalSplayWidth: volume.DefaultJournalSplayWidth})
}

// removeImage removes an image and our extent log of it.
func (e *cephEnv) removeImage(ctx context.Context, name string) error {
	cctx, cancel := cleanupCtx(ctx)
	defer cancel()
	return withExtentLog(e.pool, func(name string) error { return librbd.Remove(cctx, e.pool, name) })(name)
}

// serveImage creates an image and serves it as our device.
func (e *cephEnv) serveImage(ctx context.Context, o options, prefix string, size int64, features uint64, bo blockdev.Options) (*servedDevice, error) {
	name, err := e.newImage(ctx, prefix, size, features)
	if err != nil {
		return nil, err
	}
	bo.Fencer = e.c
	dev, err := serveDevice(ctx, e.pool, name, filepath.Join(o.dir, "ceph-state"), bo, o.reqBufs)
	if err != nil {
		e.removeImage(ctx, name)
		return nil, err
	}
	closeDev := dev.close
	dev.close = func(ctx context.Context) error { return errors.Join(closeDev(ctx), e.removeImage(ctx, name)) }
	return dev, nil
}

// cephGroup is the Ceph rows: librbd (fio's rbd engine, default, without
// journaling and with the cache off; rbd bench) and our device (each ack
// policy, journaling off, metadata journal mode). Each row creates its
// image and removes it when closed; each round (or row, -ceph-fresh=row)
// runs on a fresh cluster.
func cephGroup(o options, cl *cephCluster, policies []policyRow) (*group, []string, error) {
	var env *cephEnv
	g := &group{name: "ceph", perRow: o.cephFresh == "row", needsOSD: true}
	g.begin = func(ctx context.Context) (func(), error) {
		e, err := beginCeph(ctx, o, cl)
		if err != nil {
			return nil, err
		}
		env = e
		return func() { env.close(); env = nil }, nil
	}
	ours := func(label string, features uint64, bo blockdev.Options) rowSpec {
		return rowSpec{Name: label, Backend: "ceph", open: func(ctx context.Context) (*target, error) {
			dev, err := env.serveImage(ctx, o, "bench", o.span, features, bo)
			if err != nil {
				return nil, err
			}
			ft := fioTarget{o: o, engine: fioDeviceEngine(dev.path), serve: servedByUs, osdPID: env.pid, lat: observeLatency(o, dev)}
			return &target{Name: label, Backend: "ceph", run: ft.run, fill: ft.fill, close: func() error { return dev.close(ctx) }}, nil
		}}
	}
	viaLibrbd := func(label string, features uint64, bench, noCache bool) rowSpec {
		return rowSpec{Name: label, Backend: "ceph", fixedWork: bench, open: func(ctx context.Context) (*target, error) {
			name, err := env.newImage(ctx, "bench", o.span, features)
			if err != nil {
				return nil, err
			}
			conf := env.conf
			if noCache {
				conf = env.noCacheConf
			}
			t := &target{Name: label, Backend: "ceph", close: func() error { return env.removeImage(ctx, name) }}
			if bench {
				t.run = func(ctx context.Context, j job) (sample, error) { return rbdBench(ctx, conf, env.pid(), name, j) }
				t.fill = func(ctx context.Context) error { return rbdBenchFill(ctx, conf, name, o.span) }
				return t, nil
			}
			ft := fioTarget{o: o, env: []string{"CEPH_CONF=" + conf}, serve: servedByClient, osdPID: env.pid,
				engine: []string{"--ioengine=rbd", "--clientname=admin", "--pool=rbd", "--rbdname=" + name}}
			t.run, t.fill = ft.run, ft.fill
			return t, nil
		}}
	}
	g.rows = []rowSpec{
		viaLibrbd(anchorName, journaledFeatures, false, false),
		viaLibrbd("librbd, no journaling (fio rbd engine)", unjournaledFeatures, false, false),
		viaLibrbd(librbdNoCacheName, journaledFeatures, false, true),
		viaLibrbd("librbd, journaling (rbd bench)", journaledFeatures, true, false),
		viaLibrbd("librbd, no journaling (rbd bench)", unjournaledFeatures, true, false),
	}
	for _, p := range policies {
		g.rows = append(g.rows, ours(policyRowName(p.Name), journaledFeatures, blockdev.Options{AckPolicy: p.Policy, MaxPayload: o.payload}))
	}
	g.rows = append(g.rows,
		ours(unjournaledName, unjournaledFeatures, blockdev.Options{Unjournaled: true}),
		ours(metadataName, unjournaledFeatures, blockdev.Options{JournalMode: blockdev.JournalMetadata, AckPolicy: blockdev.AckApplied, MaxPayload: o.payload}),
	)
	notes := []string{"librbd has no kernel block path for journaled images here (no nbd module; krbd does not support journaling): fio's rbd engine is librbd's own block path, rbd bench its own benchmark."}
	return g, notes, nil
}

func (e *cephEnv) pid() int {
	if e == nil {
		return 0
	}
	return e.osdPID
}

// cephManyVolumes returns the opener of the many-volumes run's Ceph
// volumes, on a fresh cluster, and what ends it.
func cephManyVolumes(ctx context.Context, o options, cl *cephCluster) (*manyEnv, error) {
	e, err := beginCeph(ctx, o, cl)
	if err != nil {
		return nil, err
	}
	return &manyEnv{
		backend: "ceph",
		osdPID:  e.osdPID,
		open: func(ctx context.Context, i int, bo blockdev.Options) (*servedDevice, error) {
			return e.serveImage(ctx, o, fmt.Sprintf("many%d", i), o.manySpan, journaledFeatures, bo)
		},
		close: e.close,
	}, nil
}

var rbdBenchLine = regexp.MustCompile(`elapsed:\s*([\d.]+)\s+ops:\s*(\d+)\s+ops/sec:\s*([\d.]+)`)

// rbdBenchTotals are the bytes each job's rbd bench moves (rbd bench runs a
// fixed amount, not a fixed time).
var rbdBenchTotals = map[string]int64{"4K randwrite QD1": 8 << 20, "4K randwrite QD16": 32 << 20, "64K seqwrite QD4": 256 << 20, "1M seqwrite QD4": 512 << 20, "4K randread QD16": 64 << 20}

// rbdBench runs `rbd bench` with the job's pattern, size and depth.
func rbdBench(ctx context.Context, conf string, osdPID int, name string, j job) (sample, error) {
	typ, pattern := "write", "seq"
	if !j.Write {
		typ = "read"
	}
	if strings.HasPrefix(j.RW, "rand") {
		pattern = "rand"
	}
	size, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSuffix(j.BS, "k"), "m"), 10, 64)
	if strings.HasSuffix(j.BS, "m") {
		size <<= 20
	} else {
		size <<= 10
	}
	total := rbdBenchTotals[j.Name]
	osd0 := procCPU(osdPID)
	out, cpu, err := runRBDBench(ctx, conf, typ, pattern, size, j.QD, total, name)
	osd1 := procCPU(osdPID)
	if err != nil {
		return sample{}, err
	}
	m := rbdBenchLine.FindSubmatch(out)
	if m == nil {
		return sample{}, fmt.Errorf("rbd bench: no summary in %q", lastLine(out))
	}
	opsPerSec, _ := strconv.ParseFloat(string(m[3]), 64)
	s := sample{Value: opsPerSec, Bytes: float64(total), ServeCPU: cpu, FioCPU: math.NaN(), OSDCPU: osd1 - osd0}
	if j.Metric == "MB/s" {
		s.Value = opsPerSec * float64(size) / 1e6
	}
	return s, nil
}

func rbdBenchFill(ctx context.Context, conf, name string, span int64) error {
	_, _, err := runRBDBench(ctx, conf, "write", "seq", 1<<20, 4, span, name)
	return err
}

func runRBDBench(ctx context.Context, conf, typ, pattern string, size int64, threads int, total int64, name string) ([]byte, float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "rbd", "bench", "--io-type", typ, "--io-pattern", pattern,
		"--io-size", strconv.FormatInt(size, 10), "--io-threads", strconv.Itoa(threads), "--io-total", strconv.FormatInt(total, 10), "rbd/"+name)
	cmd.Env = append(os.Environ(), "CEPH_CONF="+conf)
	out, err := cmd.CombinedOutput()
	cpu := math.NaN()
	if cmd.ProcessState != nil {
		cpu = cmd.ProcessState.UserTime().Seconds() + cmd.ProcessState.SystemTime().Seconds()
	}
	if err != nil {
		return nil, cpu, fmt.Errorf("rbd bench: %w: %s", err, lastLine(out))
	}
	return out, cpu, nil
}

const crashWriteSize = 8 << 10 // one librbd event per write

// replayBench leaves the same uncommitted librbd journal on two images (a
// librbd writer exits without closing), then times librbd acquiring the lock
// (it replays on acquisition) on one and our device opening the other.
func replayBench(ctx context.Context, o options, conf string, splayWidth uint8) (*replayResult, error) {
	c, pool, err := connect(ctx, conf)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stamp := time.Now().Format("150405")
	names := []string{"replay-librbd-" + stamp, "replay-ours-" + stamp}
	for _, name := range names {
		if err := librbd.Create(ctx, pool, name, o.span, image.CreateOptions{Features: journaledFeatures, JournalSplayWidth: splayWidth}); err != nil {
			return nil, err
		}
		defer func() {
			cctx, cancel := cleanupCtx(ctx)
			defer cancel()
			librbd.Remove(cctx, pool, name)
		}()
		info, err := librbd.GetInfo(ctx, pool, name)
		if err != nil {
			return nil, err
		}
		// librbd commits each entry once its image write is done and trims
		// what every client committed: a second client that commits
		// nothing keeps every entry, and setting the image client's commit
		// position back to the start once the writer is dead leaves all of
		// them uncommitted, so both replays replay the whole journal.
		hdr := journal.HeaderOID(info.ID)
		if err := journalOp(ctx, pool, hdr, func(op *objstore.WriteOp) { clsjournal.ClientRegister(op, replayPinClient, nil) }); err != nil {
			return nil, err
		}
		addr, err := crashWrite(ctx, o, conf, name)
		if err != nil {
			return nil, err
		}
		// Fence the dead writer so its watch goes now, not after the OSD's
		// watch timeout; both replays then start from the same state.
		if err := c.Blocklist(ctx, addr, time.Hour); err != nil {
			return nil, err
		}
		if err := waitNoWatchers(ctx, pool, name); err != nil {
			return nil, err
		}
		if err := journalOp(ctx, pool, hdr, func(op *objstore.WriteOp) {
			clsjournal.ClientCommit(op, "", clsjournal.ObjectSetPosition{})
			clsjournal.ClientUnregister(op, replayPinClient)
		}); err != nil {
			return nil, err
		}
	}
	last := (o.replayMB<<20)/crashWriteSize - 1
	want, at := pattern(last), crashOffset(last, o.span)

	start := time.Now()
	var lerr error
	var got []byte
	c.Call(ctx, func() {
		img, err := rbd.OpenImage(pool.IOContext(), names[0], rbd.NoSnapshot)
		if err != nil {
			lerr = err
			return
		}
		defer img.Close()
		if lerr = img.LockAcquire(rbd.LockModeExclusive); lerr != nil {
			return
		}
		got = make([]byte, crashWriteSize)
		_, lerr = img.ReadAt(got, at)
	})
	librbdTime := time.Since(start)
	if lerr != nil {
		return nil, fmt.Errorf("librbd replay: %w", lerr)
	}
	if !bytes.Equal(got, want) {
		return nil, fmt.Errorf("librbd replay: the image does not hold the journaled data")
	}

	start = time.Now()
	d, err := blockdev.Open(ctx, pool, names[1], blockdev.Options{Fencer: c})
	if err != nil {
		return nil, fmt.Errorf("our replay: %w", err)
	}
	oursTime := time.Since(start)
	// Every write's entry, and the writer's final flush.
	if st := d.ReplayStats(); st.Entries < (o.replayMB<<20)/crashWriteSize {
		d.Close(ctx)
		return nil, fmt.Errorf("our replay replayed %d entries, want at least %d", st.Entries, (o.replayMB<<20)/crashWriteSize)
	}
	got = make([]byte, crashWriteSize)
	_, err = d.ReadAt(ctx, got, at)
	d.Close(ctx)
	if err != nil || !bytes.Equal(got, want) {
		return nil, fmt.Errorf("our replay: the image does not hold the journaled data (%v)", err)
	}
	return &replayResult{
		SplayWidth: int(splayWidth), MB: o.replayMB, Entries: (o.replayMB << 20) / crashWriteSize,
		OursSeconds: oursTime.Seconds(), LibrbdSecond: librbdTime.Seconds(),
		Speedup: librbdTime.Seconds() / oursTime.Seconds(),
	}, nil
}

// replayPinClient is the journal client that keeps the crash writer's
// entries from being trimmed.
const replayPinClient = "csi-rbdj-bench-pin"

func journalOp(ctx context.Context, pool *ceph.Pool, oid string, fn func(op *objstore.WriteOp)) error {
	op := &objstore.WriteOp{}
	fn(op)
	if err := pool.Operate(ctx, oid, op); err != nil {
		return fmt.Errorf("journal header %s: %w", oid, err)
	}
	return nil
}

func pattern(i int) []byte { return bytes.Repeat([]byte{byte(i%251 + 1)}, crashWriteSize) }

// crashWrite runs a librbd writer that exits without closing the image and
// returns its client address.
func crashWrite(ctx context.Context, o options, conf, name string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "librbd-crash-writer", "-conf", conf, "-image", name, "-mib", strconv.Itoa(o.replayMB), "-span", strconv.FormatInt(o.span, 10))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("librbd writer: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
			return a, nil
		}
	}
	return "", fmt.Errorf("librbd writer printed no address")
}

func waitNoWatchers(ctx context.Context, pool *ceph.Pool, name string) error {
	info, err := librbd.GetInfo(ctx, pool, name)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		ws, err := pool.ListWatchers(ctx, clsrbd.HeaderOID(info.ID))
		if err == nil && len(ws) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("image %s: the dead writer still watches it", name)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// crashWriterMain writes -mib MiB to -image through librbd, 8 KiB at a time
// (offsets wrap at -span), then exits without closing the image: the journal
// keeps every write uncommitted.
func crashWriterMain(args []string) {
	fs := flag.NewFlagSet("librbd-crash-writer", flag.ExitOnError)
	conf := fs.String("conf", "", "ceph.conf")
	name := fs.String("image", "", "image")
	mib := fs.Int("mib", 64, "MiB to write")
	span := fs.Int64("span", 256<<20, "image bytes to write over")
	fs.Parse(args)
	ctx := context.Background()
	c, err := ceph.Connect(ctx, ceph.Config{ConfigFile: *conf})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	p, err := c.OpenPool(ctx, "rbd")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("ADDR %s\n", c.Client().Addr)
	img, err := rbd.OpenImage(p.IOContext(), *name, rbd.NoSnapshot)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	n := (*mib << 20) / crashWriteSize
	for i := 0; i < n; i++ {
		if _, err := img.WriteAt(pattern(i), crashOffset(i, *span)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	if err := img.Flush(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0) // without closing the image: the journal stays uncommitted
}

// crashOffset is where the crash writer's write i goes.
func crashOffset(i int, span int64) int64 { return int64(i) * crashWriteSize % span }
