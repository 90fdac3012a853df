// Command blockdev-bench measures, in one run on one machine, the block
// paths a user could choose between, with the same fio workloads:
//
//   - our journaled device (loop over FUSE) with each ack policy, and the
//     same device with journaling off, on the local backend and (built with
//     -tags ceph,pacific and given a cluster) on Ceph;
//   - librbd on a journaled and on an unjournaled image, through fio's rbd
//     engine and through `rbd bench` (Ceph only);
//   - a plain loop device over a file (the machine's ceiling);
//
// and, on Ceph, the time to replay the same uncommitted librbd journal with
// our device versus librbd acquiring the lock. It prints a Markdown table
// and writes JSON and a PNG chart of the ratios to the anchor (librbd with
// journaling, when measured). It needs root, fio, FUSE and loop devices.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/classes"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

type job struct {
	Name   string
	RW     string // fio rw
	BS     string
	QD     int
	Metric string // "IOPS" or "MB/s"
	Write  bool
}

var jobs = []job{
	{"4K randwrite QD1", "randwrite", "4k", 1, "IOPS", true},
	{"4K randwrite QD16", "randwrite", "4k", 16, "IOPS", true},
	{"64K seqwrite QD4", "write", "64k", 4, "MB/s", true},
	{"1M seqwrite QD4", "write", "1m", 4, "MB/s", true},
	{"4K randread QD16", "randread", "4k", 16, "IOPS", false},
}

// A target is one block path under test.
type target struct {
	Name    string `json:"name"`
	Backend string `json:"backend"` // local, ceph or "-"
	// run measures one job and returns its figure.
	run   func(j job) (float64, error)
	close func() error
}

type result struct {
	Target  string             `json:"target"`
	Backend string             `json:"backend"`
	Values  map[string]float64 `json:"values"`
}

type report struct {
	Machine string         `json:"machine"`
	Runtime string         `json:"runtime_per_job"`
	Span    string         `json:"span"`
	Results []result       `json:"results"`
	Replay  []replayResult `json:"replay,omitempty"`
	Notes   []string       `json:"notes,omitempty"`
	Ratios  map[string]any `json:"ratios,omitempty"`
}

type replayResult struct {
	SplayWidth   int     `json:"journal_splay_width"`
	MB           int     `json:"uncommitted_mb"`
	Entries      int     `json:"entries"`
	OursSeconds  float64 `json:"ours_seconds"`
	LibrbdSecond float64 `json:"librbd_seconds"`
	Speedup      float64 `json:"speedup"`
}

type options struct {
	dir      string
	runtime  time.Duration
	span     int64
	only     string
	local    bool
	ceph     bool
	cephConf string
	replayMB int
	payload  int
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "librbd-crash-writer" {
		crashWriterMain(os.Args[2:])
		return
	}
	var o options
	jsonOut := flag.String("json", "", "write the results as JSON to this file")
	pngOut := flag.String("png", "", "write a chart of the ratios to the anchor to this PNG file")
	mdOut := flag.String("md", "", "also write the Markdown table to this file")
	flag.StringVar(&o.dir, "dir", "", "work directory (default: a new temp dir under /var/tmp)")
	flag.DurationVar(&o.runtime, "runtime", 10*time.Second, "fio runtime per job")
	span := flag.Int("span-mib", 256, "device/image size and fio region in MiB")
	flag.StringVar(&o.only, "only", "", "comma-separated substrings: run only matching targets")
	flag.BoolVar(&o.local, "local", true, "measure our device on the local backend and the plain loop")
	flag.BoolVar(&o.ceph, "ceph", cephBuilt, "measure on Ceph (needs a binary built with -tags ceph,pacific)")
	flag.StringVar(&o.cephConf, "ceph-conf", os.Getenv("CEPH_CONF"), "ceph.conf of the cluster (hack/ceph-up.sh prints it)")
	flag.IntVar(&o.replayMB, "replay-mib", 64, "uncommitted journal to replay, MiB (Ceph)")
	flag.IntVar(&o.payload, "max-payload", 0, "journal event payload cap of our device (0: default)")
	jobFilter := flag.String("jobs", "", `comma-separated substrings: run only matching fio jobs (e.g. "64K seqwrite,1M seqwrite")`)
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run (our devices are served in this process)")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		must(err)
		must(pprof.StartCPUProfile(f))
		defer pprof.StopCPUProfile()
	}
	o.span = int64(*span) << 20
	if *jobFilter != "" {
		jobs = selectJobs(jobs, *jobFilter) // metadata.go
	}
	rep, err := run(o)
	if err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "blockdev-bench:", err)
		os.Exit(1)
	}
	md := markdown(rep)
	fmt.Print(md)
	if *mdOut != "" {
		must(os.WriteFile(*mdOut, []byte(md), 0o644))
	}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		must(os.WriteFile(*jsonOut, b, 0o644))
	}
	if *pngOut != "" {
		must(writeChart(*pngOut, rep))
	}
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "blockdev-bench:", err)
		os.Exit(1)
	}
}

func run(o options) (*report, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("needs root (loop devices, FUSE)")
	}
	if _, err := exec.LookPath("fio"); err != nil {
		return nil, fmt.Errorf("fio not installed (hack/install-deps.sh)")
	}
	if o.dir == "" {
		d, err := os.MkdirTemp("/var/tmp", "blockdev-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		o.dir = d
	}
	ctx := context.Background()
	rep := &report{Machine: machine(), Runtime: o.runtime.String(), Span: fmt.Sprintf("%d MiB", o.span>>20)}
	var targets []func() (*target, error)
	if o.local {
		for _, t := range []struct {
			name string
			o    blockdev.Options
		}{
			{"ours, journaled, ack after apply", blockdev.Options{AckPolicy: blockdev.AckApplied, MaxPayload: o.payload}},
			{"ours, journaled, ack after journal", blockdev.Options{AckPolicy: blockdev.AckJournaled, MaxPayload: o.payload}},
			{"ours, journaling off", blockdev.Options{Unjournaled: true}},
			{metadataName, blockdev.Options{JournalMode: blockdev.JournalMetadata}},
		} {
			targets = append(targets, func() (*target, error) { return localDevice(ctx, o, t.name, t.o) })
		}
		targets = append(targets, func() (*target, error) { return plainLoop(o) })
	}
	if o.ceph {
		ts, notes, err := cephTargets(ctx, o)
		if err != nil {
			return nil, err
		}
		targets = append(targets, ts...)
		rep.Notes = append(rep.Notes, notes...)
	}
	for _, open := range targets {
		t, err := open()
		if err != nil {
			return nil, err
		}
		if o.only != "" && !matchesAny(t.Name+" ("+t.Backend+")", o.only) {
			t.close()
			continue
		}
		res := result{Target: t.Name, Backend: t.Backend, Values: map[string]float64{}}
		for _, j := range jobs {
			v, err := t.run(j)
			if err != nil {
				t.close()
				return nil, fmt.Errorf("%s (%s): %s: %w", t.Name, t.Backend, j.Name, err)
			}
			res.Values[j.Name] = v
			fmt.Fprintf(os.Stderr, "%-40s %-6s %-18s %10.0f %s\n", t.Name, t.Backend, j.Name, v, j.Metric)
		}
		if err := t.close(); err != nil {
			return nil, fmt.Errorf("%s: close: %w", t.Name, err)
		}
		rep.Results = append(rep.Results, res)
	}
	if o.ceph && o.replayMB > 0 && (o.only == "" || matchesAny("replay", o.only)) {
		// The driver's journals (splay width 1) and librbd's default (4):
		// librbd's player reads the splay objects of a set in parallel, so
		// the width changes its replay time.
		for _, width := range []uint8{volume.DefaultJournalSplayWidth, 4} {
			r, err := replayBench(ctx, o, width)
			if err != nil {
				return nil, fmt.Errorf("replay (splay width %d): %w", width, err)
			}
			rep.Replay = append(rep.Replay, *r)
		}
	}
	rep.Ratios = ratios(rep)
	return rep, nil
}

func matchesAny(s, list string) bool {
	for _, p := range strings.Split(list, ",") {
		if p != "" && strings.Contains(s, p) {
			return true
		}
	}
	return false
}

func machine() string {
	out, _ := exec.Command("sh", "-c", `echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), disk $(df -h /var/tmp | awk 'NR==2 {print $1}')"`).Output()
	return strings.TrimSpace(string(out))
}

// localDevice serves a new image of the local backend as a loop device.
func localDevice(ctx context.Context, o options, name string, bo blockdev.Options) (*target, error) {
	dir := filepath.Join(o.dir, strings.NewReplacer(" ", "-", ",", "").Replace(name))
	c, err := local.Open(dir, local.Options{Classes: classes.Standard()})
	if err != nil {
		return nil, err
	}
	pool, err := c.Pool(ctx, "rbd")
	if err != nil {
		c.Close()
		return nil, err
	}
	if err := image.Create(ctx, pool, "bench", o.span, image.CreateOptions{JournalSplayWidth: volume.DefaultJournalSplayWidth, Features: featuresFor(bo)}); err != nil {
		c.Close()
		return nil, err
	}
	bo.Fencer = c
	t, err := serveDevice(ctx, o, pool, "bench", filepath.Join(dir, "state"), bo)
	if err != nil {
		c.Close()
		return nil, err
	}
	t.Name, t.Backend = name, "local"
	closeDev := t.close
	t.close = func() error { err := closeDev(); c.Close(); return err }
	return t, nil
}

// serveDevice opens image name as our journaled device and attaches it.
func serveDevice(ctx context.Context, o options, pool objstore.Pool, name, stateDir string, bo blockdev.Options) (*target, error) {
	d, err := blockdev.Open(ctx, pool, name, bo)
	if err != nil {
		return nil, err
	}
	dev, err := fuseloop.Attach(ctx, d, fuseloop.Options{StateDir: stateDir, Name: name})
	if err != nil {
		d.Close(ctx)
		return nil, err
	}
	return &target{
		run: func(j job) (float64, error) { return fioDevice(dev.Path(), j, o.runtime, o.span) },
		close: func() error {
			cerr := dev.Close(ctx)
			derr := d.Close(ctx)
			if cerr != nil {
				return cerr
			}
			return derr
		},
	}, nil
}

func plainLoop(o options) (*target, error) {
	file := filepath.Join(o.dir, "plain.img")
	f, err := os.Create(file)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(o.span); err != nil {
		f.Close()
		return nil, err
	}
	f.Close()
	out, err := exec.Command("losetup", "--find", "--show", "--direct-io=on", file).Output()
	if err != nil {
		return nil, fmt.Errorf("losetup: %w", err)
	}
	dev := strings.TrimSpace(string(out))
	return &target{
		Name: "plain loop on a file", Backend: "-",
		run:   func(j job) (float64, error) { return fioDevice(dev, j, o.runtime, o.span) },
		close: func() error { return exec.Command("losetup", "-d", dev).Run() },
	}, nil
}

func fioDevice(dev string, j job, runtime time.Duration, span int64) (float64, error) {
	return fio(j, runtime, span, "--filename="+dev, "--ioengine=libaio", "--direct=1")
}

func fio(j job, runtime time.Duration, span int64, engine ...string) (float64, error) {
	return fioEnv(nil, j, runtime, span, engine...)
}

// fioEnv runs fio with env added to this process's environment.
func fioEnv(env []string, j job, runtime time.Duration, span int64, engine ...string) (float64, error) {
	args := append([]string{
		"--name=" + strings.ReplaceAll(j.Name, " ", "_"),
		"--rw=" + j.RW, "--bs=" + j.BS, fmt.Sprintf("--iodepth=%d", j.QD),
		fmt.Sprintf("--size=%d", span), "--time_based",
		fmt.Sprintf("--runtime=%d", max(1, int(runtime.Seconds()))), "--ramp_time=1",
		"--output-format=json", "--randrepeat=0", "--norandommap",
	}, engine...)
	cmd := exec.Command("fio", args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("fio %s: %w", strings.Join(args, " "), err)
	}
	var r struct {
		Jobs []struct {
			Read  struct{ IOPS, BWBytes float64 } `json:"read"`
			Write struct{ IOPS, BWBytes float64 } `json:"write"`
		} `json:"jobs"`
	}
	s := strings.NewReplacer(`"iops"`, `"IOPS"`, `"bw_bytes"`, `"BWBytes"`).Replace(string(out))
	if i := strings.IndexByte(s, '{'); i < 0 || json.Unmarshal([]byte(s[i:]), &r) != nil || len(r.Jobs) == 0 {
		return 0, fmt.Errorf("cannot parse fio output")
	}
	st := r.Jobs[0].Read
	if j.Write {
		st = r.Jobs[0].Write
	}
	if j.Metric == "MB/s" {
		return st.BWBytes / 1e6, nil
	}
	return st.IOPS, nil
}
