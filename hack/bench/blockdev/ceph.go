//go:build ceph && pacific

package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
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

func connect(ctx context.Context, o options) (*ceph.Cluster, *ceph.Pool, error) {
	if o.cephConf == "" {
		return nil, nil, fmt.Errorf("no cluster: pass -ceph-conf (hack/ceph-up.sh prints it) or set CEPH_CONF")
	}
	os.Setenv("CEPH_CONF", o.cephConf) // for rbd and fio's rbd engine
	c, err := ceph.Connect(ctx, ceph.Config{ConfigFile: o.cephConf})
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

// cephTargets returns the Ceph block paths: ours (both ack policies and
// journaling off) and librbd (fio's rbd engine and rbd bench, journaled and
// not). Each target creates its image and removes it when closed.
func cephTargets(ctx context.Context, o options) ([]func() (*target, error), []string, error) {
	c, pool, err := connect(ctx, o)
	if err != nil {
		return nil, nil, err
	}
	stamp := time.Now().Format("150405")
	n := 0
	newImage := func(features uint64) (string, error) {
		n++
		name := fmt.Sprintf("bench-%s-%d", stamp, n)
		return name, librbd.Create(ctx, pool, name, o.span, image.CreateOptions{Features: features, JournalSplayWidth: volume.DefaultJournalSplayWidth})
	}
	removeImage := withExtentLog(pool, func(name string) error { return librbd.Remove(context.Background(), pool, name) })
	ours := func(label string, features uint64, bo blockdev.Options) func() (*target, error) {
		return func() (*target, error) {
			name, err := newImage(features)
			if err != nil {
				return nil, err
			}
			bo.Fencer = c
			t, err := serveDevice(ctx, o, pool, name, filepath.Join(o.dir, "ceph-state"), bo)
			if err != nil {
				removeImage(name)
				return nil, err
			}
			t.Name, t.Backend = label, "ceph"
			closeDev := t.close
			t.close = func() error { err := closeDev(); removeImage(name); return err }
			return t, nil
		}
	}
	// librbd acknowledges writes from its cache (rbd_cache, on by
	// default) before their journal entries are safe; with the cache off
	// it acknowledges a journaled write once it is in the journal and the
	// image, the contract our device keeps in both ack policies.
	noCacheConf := filepath.Join(o.dir, "ceph-rbd-cache-off.conf")
	conf, err := os.ReadFile(o.cephConf)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	if err := os.WriteFile(noCacheConf, append(conf, "\n[client]\nrbd_cache = false\n"...), 0o600); err != nil {
		c.Close()
		return nil, nil, err
	}
	viaLibrbd := func(label string, features uint64, bench bool, env ...string) func() (*target, error) {
		return func() (*target, error) {
			name, err := newImage(features)
			if err != nil {
				return nil, err
			}
			run := func(j job) (float64, error) {
				return fioEnv(env, j, o.runtime, o.span, "--ioengine=rbd", "--clientname=admin", "--pool=rbd", "--rbdname="+name)
			}
			if bench {
				run = func(j job) (float64, error) { return rbdBench(name, j) }
			}
			return &target{Name: label, Backend: "ceph", run: run, close: func() error { return removeImage(name) }}, nil
		}
	}
	targets := []func() (*target, error){
		viaLibrbd(anchorName, journaledFeatures, false),
		viaLibrbd("librbd, no journaling (fio rbd engine)", unjournaledFeatures, false),
		viaLibrbd(librbdNoCacheName, journaledFeatures, false, "CEPH_CONF="+noCacheConf),
		viaLibrbd("librbd, journaling (rbd bench)", journaledFeatures, true),
		viaLibrbd("librbd, no journaling (rbd bench)", unjournaledFeatures, true),
		ours("ours, journaled, ack after apply", journaledFeatures, blockdev.Options{AckPolicy: blockdev.AckApplied, MaxPayload: o.payload}),
		ours("ours, journaled, ack after journal", journaledFeatures, blockdev.Options{AckPolicy: blockdev.AckJournaled, MaxPayload: o.payload}),
		ours("ours, journaling off", unjournaledFeatures, blockdev.Options{Unjournaled: true}),
		ours(metadataName, unjournaledFeatures, blockdev.Options{JournalMode: blockdev.JournalMetadata}),
	}
	notes := []string{"librbd has no kernel block path for journaled images here (no nbd module; krbd does not support journaling): fio's rbd engine is librbd's own block path, rbd bench its own benchmark."}
	return targets, notes, nil
}

var rbdBenchLine = regexp.MustCompile(`elapsed:\s*([\d.]+)\s+ops:\s*(\d+)\s+ops/sec:\s*([\d.]+)`)

// rbdBench runs `rbd bench` with the job's pattern, size and depth.
func rbdBench(name string, j job) (float64, error) {
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
	total := map[string]string{"4K randwrite QD1": "8M", "4K randwrite QD16": "32M", "64K seqwrite QD4": "256M", "1M seqwrite QD4": "512M", "4K randread QD16": "64M"}[j.Name]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rbd", "bench", "--io-type", typ, "--io-pattern", pattern,
		"--io-size", strconv.FormatInt(size, 10), "--io-threads", strconv.Itoa(j.QD), "--io-total", total, "rbd/"+name).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("rbd bench: %w: %s", err, lastLine(out))
	}
	m := rbdBenchLine.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("rbd bench: no summary in %q", lastLine(out))
	}
	opsPerSec, _ := strconv.ParseFloat(string(m[3]), 64)
	if j.Metric == "MB/s" {
		return opsPerSec * float64(size) / 1e6, nil
	}
	return opsPerSec, nil
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

const crashWriteSize = 8 << 10 // one librbd event per write

// replayBench leaves the same uncommitted librbd journal on two images (a
// librbd writer exits without closing), then times librbd acquiring the lock
// (it replays on acquisition) on one and our device opening the other.
func replayBench(ctx context.Context, o options, splayWidth uint8) (*replayResult, error) {
	c, pool, err := connect(ctx, o)
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
		defer librbd.Remove(context.Background(), pool, name)
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
		addr, err := crashWrite(o, name)
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
func crashWrite(o options, name string) (string, error) {
	cmd := exec.Command(os.Args[0], "librbd-crash-writer", "-conf", o.cephConf, "-image", name, "-mib", strconv.Itoa(o.replayMB), "-span", strconv.FormatInt(o.span, 10))
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
