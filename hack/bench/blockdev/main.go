// Command blockdev-bench measures, in one run on one machine, the block
// paths a user could choose between, with the same fio workloads:
//
//   - our journaled device (loop over FUSE) with each ack policy of -policies,
//     the same device with journaling off and in metadata journal mode, on the
//     local backend and (built with -tags ceph,pacific) on Ceph;
//   - librbd on a journaled and on an unjournaled image, through fio's rbd
//     engine and through `rbd bench` (Ceph only);
//   - a plain loop device over a file (the machine's ceiling);
//
// then one process serving 1, 10 and 50 of our devices at once (-many), and,
// on Ceph, the time to replay the same uncommitted librbd journal with our
// device versus librbd acquiring the lock.
//
// Fairness: every figure is the median of -repeat runs. The runs are taken
// in rounds: each round visits every row once, starting at a different row,
// and the Ceph rows of each round run on a cluster of their own, started
// fresh for the round (-ceph-fresh=row: for each row) with hack/ceph-up.sh
// in -ceph-dir on -ceph-port and wiped at the end, also on failure or
// interrupt. The shared test cluster of hack/ceph-up.sh's defaults is never
// touched. Around each fio run the bench reads the CPU time of the process
// serving the block path (this one for our device, fio for librbd) and of
// the OSD, and reports CPU seconds per GB moved.
//
// It prints Markdown (the table, the spread of the runs, CPU per GB, the
// many-volumes table and the targets of issues 15 and 18 with met/missed),
// and writes JSON and a PNG chart of the ratios to the anchor (librbd with
// journaling). It needs root, fio, FUSE and loop devices.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/textlogger"
)

type job struct {
	Name   string
	RW     string // fio rw
	BS     string
	QD     int
	Metric string // "IOPS" or "MB/s"
	Write  bool
}

var allJobs = []job{
	{"4K randwrite QD1", "randwrite", "4k", 1, "IOPS", true},
	{"4K randwrite QD16", "randwrite", "4k", 16, "IOPS", true},
	{"64K seqwrite QD4", "write", "64k", 4, "MB/s", true},
	{"1M seqwrite QD4", "write", "1m", 4, "MB/s", true},
	{"4K randread QD16", "randread", "4k", 16, "IOPS", false},
}

// jobs are the fio jobs of this run (-jobs selects among allJobs).
var jobs = allJobs

// subcommands are the modes of this binary other than the bench itself
// (the first argument selects one); other benchmarks can add theirs here.
var subcommands = map[string]func(args []string){
	"librbd-crash-writer": crashWriterMain, // ceph.go: the replay race's writer
}

type options struct {
	dir     string
	runtime time.Duration
	ramp    time.Duration
	span    int64
	repeat  int
	only    string
	local   bool
	ceph    bool
	// policies are the ack policies of our device's full-journal rows
	// (names for blockdev.ParseAckPolicy; a name it rejects is skipped).
	policies []string
	payload  int
	replayMB int

	// Ceph: an external cluster (cephConf, reused as it is) or one of our
	// own (cephDir, cephPort), fresh per round or per row (cephFresh).
	cephConf  string
	cephDir   string
	cephPort  int
	cephFresh string
	scripts   string

	many []int
	// manyRuntime: fio's runtime per many-volumes run. Longer than a
	// row's: with 50 volumes on two cores, 3 s gave each volume too few
	// I/Os for its figure, and the slowest-to-fastest ratio moved by half
	// between runs of the same code.
	manyRuntime time.Duration
	manySpan    int64
	manyJobs    []job
	manyPolicy  string
	// memProfile: write a heap profile at each many-volumes run's peak
	// live heap to <memProfile>.<backend>-<volumes>-<job>.
	memProfile string
	// latency: print our device's mean latencies per run (-latency).
	latency bool
	// reqBufs: the node-wide FUSE request buffers of the many-volumes
	// run (nil elsewhere: no node-wide bound).
	reqBufs *fuseloop.RequestBuffers
	// manyChild: this process is the many-volumes server of that backend,
	// started by the bench (see manyVolumes).
	manyChild string
}

func main() {
	if len(os.Args) > 1 {
		if sub, ok := subcommands[os.Args[1]]; ok {
			sub(os.Args[2:])
			return
		}
	}
	var o options
	jsonOut := flag.String("json", "", "write the results as JSON to this file")
	pngOut := flag.String("png", "", "write a chart of the ratios to the anchor to this PNG file")
	mdOut := flag.String("md", "", "also write the Markdown report to this file")
	flag.StringVar(&o.dir, "dir", "", "work directory (default: a new temp dir under /var/tmp)")
	flag.DurationVar(&o.runtime, "runtime", 3*time.Second, "fio runtime per job and run (after the ramp)")
	flag.DurationVar(&o.ramp, "ramp", time.Second, "fio ramp time per job and run (not measured)")
	flag.IntVar(&o.repeat, "repeat", 3, "runs per figure (the figure is their median)")
	span := flag.Int("span-mib", 256, "device/image size and fio region in MiB")
	flag.StringVar(&o.only, "only", "", `comma-separated substrings of "<row> (<backend>)": run only matching rows (row names hold commas: separate with "|" instead, e.g. "ack journaled|librbd, journaling (fio"); "many" and "replay" select those parts`)
	jobFilter := flag.String("jobs", "", `comma-separated substrings: run only matching fio jobs (e.g. "64K seqwrite,1M seqwrite")`)
	flag.BoolVar(&o.local, "local", true, "measure our device on the local backend and the plain loop")
	flag.BoolVar(&o.ceph, "ceph", cephBuilt, "measure on Ceph (needs a binary built with -tags ceph,pacific)")
	policies := flag.String("policies", "applied,journaled,"+writeBackPolicy, "ack policies of our full-journal rows (names blockdev.ParseAckPolicy accepts; others are skipped with a note)")
	flag.IntVar(&o.payload, "max-payload", 0, "journal event payload cap of our device (0: default)")
	flag.IntVar(&o.replayMB, "replay-mib", 64, "uncommitted journal to replay, MiB (Ceph; 0: skip the replay race)")
	flag.StringVar(&o.cephConf, "ceph-conf", "", "use this existing cluster as it is (no fresh clusters) instead of the bench's own")
	flag.StringVar(&o.cephDir, "ceph-dir", "/var/tmp/csi-rbdj-bench-ceph", "state directory of the bench's own cluster (wiped; never the shared test cluster's)")
	flag.IntVar(&o.cephPort, "ceph-port", 13400, "mon port of the bench's own cluster (msgr2; msgr1 is port+1)")
	flag.StringVar(&o.cephFresh, "ceph-fresh", "round", `when to start the bench's cluster afresh: "round" (before the Ceph rows of each round) or "row" (before each Ceph row of each round)`)
	flag.StringVar(&o.scripts, "ceph-scripts", "", "directory of ceph-up.sh and ceph-down.sh (default: ./hack, or ../hack next to this binary)")
	many := flag.String("many", "1,10,50", `volume counts for the many-volumes run (one process serving them all, fio on all at once); "" skips it`)
	flag.DurationVar(&o.manyRuntime, "many-runtime", 10*time.Second, "fio runtime per many-volumes run (after the ramp)")
	manySpan := flag.Int("many-span-mib", 64, "size of each volume of the many-volumes run, MiB")
	manyJobs := flag.String("many-jobs", "4K randwrite QD4,1M seqwrite QD4", `fio job run on every volume at once in the many-volumes run, one run per job: "<size> randwrite|seqwrite QD<n>", comma-separated`)
	flag.StringVar(&o.manyPolicy, "many-policy", volume.DefaultAckPolicy, "ack policy of the many-volumes run (default: the driver's)")
	logFile := flag.String("log", "", "write the served devices' logs (klog) to this file (default: discarded)")
	flag.BoolVar(&o.latency, "latency", false, "print, for each run on our device, the mean request, journal-append and apply latencies (where a write's time goes)")
	flag.StringVar(&o.memProfile, "memprofile", "", "write a heap profile at the peak live heap of each many-volumes run to <this>.<backend>-<volumes>-<job> (go tool pprof -sample_index=inuse_space)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run (our devices are served in this process)")
	flag.StringVar(&o.manyChild, "many-child", "", "internal: serve the many-volumes run of this backend (local, ceph) in this process and print its results as JSON")
	flag.Parse()
	o.span = int64(*span) << 20
	o.manySpan = int64(*manySpan) << 20
	o.policies = splitList(*policies)
	var err error
	if o.many, err = parseCounts(*many); err != nil {
		fatal(err)
	}
	for _, spec := range splitList(*manyJobs) {
		j, err := parseJob(spec)
		if err != nil {
			fatal(fmt.Errorf("-many-jobs: %w", err))
		}
		o.manyJobs = append(o.manyJobs, j)
	}
	if len(o.manyJobs) == 0 {
		o.many = nil
	}
	if *jobFilter != "" {
		if jobs = selectJobs(allJobs, *jobFilter); len(jobs) == 0 {
			fatal(fmt.Errorf("-jobs %q matches none of the jobs", *jobFilter))
		}
	}
	if o.repeat < 1 {
		fatal(fmt.Errorf("-repeat must be at least 1"))
	}
	if o.cephFresh != "round" && o.cephFresh != "row" {
		fatal(fmt.Errorf(`-ceph-fresh must be "round" or "row", not %q`, o.cephFresh))
	}
	// The devices log (contextually, from the run's context) every open
	// and close; the bench's own progress goes to stderr, their logs to
	// -log.
	var logger klog.Logger // the zero logger discards
	if *logFile != "" {
		flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
		if o.manyChild != "" {
			flags = os.O_WRONLY | os.O_CREATE | os.O_APPEND // the parent's log
		}
		f, err := os.OpenFile(*logFile, flags, 0o644)
		if err != nil {
			fatal(err)
		}
		defer f.Close()
		logger = textlogger.NewLogger(textlogger.NewConfig(textlogger.Output(f)))
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fatal(err)
		}
	}
	// An interrupt stops the run; the targets are closed and the bench's
	// cluster is wiped on the way out. A second one kills at once.
	ctx, stop := signal.NotifyContext(klog.NewContext(context.Background(), logger), os.Interrupt, syscall.SIGTERM)
	go func() { <-ctx.Done(); stop() }()
	if o.manyChild != "" {
		must(manyChildMain(ctx, o))
		return
	}
	rep, err := run(ctx, o)
	pprof.StopCPUProfile()
	if err != nil {
		fatal(err)
	}
	md := markdown(rep)
	fmt.Print(md)
	if *mdOut != "" {
		must(os.WriteFile(*mdOut, []byte(md), 0o644))
	}
	if *jsonOut != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		must(err)
		must(os.WriteFile(*jsonOut, b, 0o644))
	}
	if *pngOut != "" {
		must(writeChart(*pngOut, rep))
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "blockdev-bench:", err)
	os.Exit(1)
}

func must(err error) {
	if err != nil {
		fatal(err)
	}
}

// parseJob parses a write job of the many-volumes run: "4K randwrite QD4",
// "1M seqwrite QD4" (random writes are measured in IOPS, sequential ones in
// MB/s).
func parseJob(spec string) (job, error) {
	f := strings.Fields(spec)
	if len(f) != 3 {
		return job{}, fmt.Errorf("%q: want \"<size> randwrite|seqwrite QD<n>\"", spec)
	}
	j := job{Name: strings.Join(f, " "), Write: true}
	size := strings.ToUpper(f[0])
	digits := strings.TrimRight(size, "KM")
	n, err := strconv.Atoi(digits)
	if err != nil || n <= 0 || len(digits) != len(size)-1 {
		return job{}, fmt.Errorf("%q: size %q is not <n>K or <n>M", spec, f[0])
	}
	j.BS = strings.ToLower(size)
	switch f[1] {
	case "randwrite":
		j.RW, j.Metric = "randwrite", "IOPS"
	case "seqwrite":
		j.RW, j.Metric = "write", "MB/s"
	default:
		return job{}, fmt.Errorf("%q: %q is not randwrite or seqwrite", spec, f[1])
	}
	qd, ok := strings.CutPrefix(f[2], "QD")
	if j.QD, err = strconv.Atoi(qd); !ok || err != nil || j.QD < 1 || j.QD > 1024 {
		return job{}, fmt.Errorf("%q: queue depth %q is not QD<1..1024>", spec, f[2])
	}
	return j, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// parseCounts parses the -many list ("1,10,50"); it must ascend.
func parseCounts(s string) ([]int, error) {
	var out []int
	for _, p := range splitList(s) {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-many: %q is not a positive count", p)
		}
		if len(out) > 0 && n <= out[len(out)-1] {
			return nil, fmt.Errorf("-many: counts must ascend (%q)", s)
		}
		out = append(out, n)
	}
	return out, nil
}

// A rowSpec is one row of the table: a block path under test, opened
// afresh for each round.
type rowSpec struct {
	Name    string
	Backend string // local, ceph or "-"
	open    func(ctx context.Context) (*target, error)
	// fixedWork: the row's runs move a fixed amount (rbd bench), not
	// for -runtime (for the estimate only).
	fixedWork bool
}

func (r rowSpec) label() string { return r.Name + " (" + r.Backend + ")" }

// A group is rows that share an environment: begin prepares it for a round
// (for Ceph, a fresh cluster) and returns what ends it.
type group struct {
	name     string
	rows     []rowSpec
	begin    func(ctx context.Context) (end func(), err error)
	perRow   bool // begin/end around each row instead of each round
	needsOSD bool
}

// A target is one opened block path.
type target struct {
	Name    string
	Backend string
	// run measures one job once.
	run func(ctx context.Context, j job) (sample, error)
	// fill writes the whole span once (before reads of a fresh image).
	fill  func(ctx context.Context) error
	close func() error
}

func run(ctx context.Context, o options) (*report, error) {
	start := time.Now()
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
	rep := &report{
		Machine: machine(), Date: start.UTC().Format("2006-01-02 15:04 MST"),
		Runtime: o.runtime.String(), Ramp: o.ramp.String(), Repeat: o.repeat, ManyRuntime: o.manyRuntime.String(),
		Span: fmt.Sprintf("%d MiB", o.span>>20), Ratios: map[string]float64{},
	}
	policies, notes := policyRows(o.policies)
	for _, n := range notes {
		fmt.Fprintln(os.Stderr, "blockdev-bench: note:", n)
	}
	rep.Notes = append(rep.Notes, notes...)

	var groups []*group
	if o.local {
		groups = append(groups, localGroup(o, policies))
	}
	var cl *cephCluster
	if o.ceph {
		var err error
		if cl, err = newCephCluster(o); err != nil {
			return nil, err
		}
		defer cl.down()
		g, gnotes, err := cephGroup(o, cl, policies)
		if err != nil {
			return nil, err
		}
		rep.Notes = append(rep.Notes, gnotes...)
		groups = append(groups, g)
	}
	for _, g := range groups {
		g.rows = filterRows(g.rows, o.only)
	}
	runMany := len(o.many) > 0 && (o.only == "" || matchesAny("many", o.only))
	runReplay := o.ceph && o.replayMB > 0 && (o.only == "" || matchesAny("replay", o.only))
	est := estimate(o, groups, runMany, runReplay)
	fmt.Fprintf(os.Stderr, "blockdev-bench: %d round(s) of %d row(s) × %d job(s), fio %s + %s ramp per run; estimated %s\n",
		o.repeat, countRows(groups), len(jobs), o.runtime, o.ramp, est.Round(10*time.Second))

	acc := newAccumulator()
	for r := 0; r < o.repeat; r++ {
		for _, g := range groups {
			if err := runRound(ctx, o, g, r, acc); err != nil {
				return nil, err
			}
		}
	}
	for _, g := range groups {
		for _, row := range g.rows {
			if res := acc.result(row); res != nil {
				rep.Results = append(rep.Results, *res)
			}
		}
	}
	if runMany {
		var err error
		if rep.Many, err = manyVolumes(ctx, o, cl); err != nil {
			return nil, fmt.Errorf("many volumes: %w", err)
		}
	}
	if runReplay {
		if err := cl.fresh(ctx); err != nil {
			return nil, err
		}
		// The driver's journals (splay width 1) and librbd's default (4):
		// librbd's player reads the splay objects of a set in parallel, so
		// the width changes its replay time.
		for _, width := range []uint8{volume.DefaultJournalSplayWidth, 4} {
			r, err := replayBench(ctx, o, cl.conf, width)
			if err != nil {
				return nil, fmt.Errorf("replay (splay width %d): %w", width, err)
			}
			rep.Replay = append(rep.Replay, *r)
			rep.Ratios[fmt.Sprintf("replay speedup vs librbd (journal splay width %d)", r.SplayWidth)] = r.Speedup
		}
	}
	if cl != nil {
		rep.CephCluster = cl.describe()
		if cl.managed {
			rep.CephCluster += fmt.Sprintf(" (before the Ceph rows of each %s, the many-volumes run and the replay race)", o.cephFresh)
		}
	}
	rep.Targets = evaluate(targetSpecs(), rep)
	rep.Duration = time.Since(start).Round(time.Second).String()
	fmt.Fprintf(os.Stderr, "blockdev-bench: done in %s (estimated %s)\n", rep.Duration, est.Round(10*time.Second))
	return rep, nil
}

// runRound runs every row of g once, in the order of round r, each with
// every job.
func runRound(ctx context.Context, o options, g *group, r int, acc *accumulator) error {
	if len(g.rows) == 0 {
		return nil
	}
	var end func()
	if !g.perRow {
		var err error
		if end, err = g.begin(ctx); err != nil {
			return fmt.Errorf("%s, round %d: %w", g.name, r+1, err)
		}
		defer end()
	}
	for _, i := range rotation(len(g.rows), r, o.repeat) {
		row := g.rows[i]
		if g.perRow {
			end, err := g.begin(ctx)
			if err != nil {
				return fmt.Errorf("%s, round %d: %w", row.label(), r+1, err)
			}
			err = runRow(ctx, o, row, r, acc)
			end()
			if err != nil {
				return err
			}
			continue
		}
		if err := runRow(ctx, o, row, r, acc); err != nil {
			return err
		}
	}
	return nil
}

func runRow(ctx context.Context, o options, row rowSpec, r int, acc *accumulator) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t, err := row.open(ctx)
	if err != nil {
		return fmt.Errorf("%s: open: %w", row.label(), err)
	}
	// filled: the image holds data over the whole span, so that reads do
	// not measure holes.
	filled := false
	for _, j := range jobs {
		if !j.Write && !filled {
			if err := t.fill(ctx); err != nil {
				t.close()
				return fmt.Errorf("%s: filling the image before %s: %w", row.label(), j.Name, err)
			}
			filled = true
		}
		s, err := t.run(ctx, j)
		if err != nil {
			t.close()
			return fmt.Errorf("%s: %s: %w", row.label(), j.Name, err)
		}
		if j.Write && j.RW == "write" && s.Bytes >= float64(o.span) {
			filled = true
		}
		acc.add(row, j, s)
		fmt.Fprintf(os.Stderr, "[%d/%d] %-42s %-6s %-18s %10.0f %-4s  cpu/GB serve %s osd %s\n",
			r+1, o.repeat, row.Name, row.Backend, j.Name, s.Value, j.Metric, fmtCPU(perGB(s.ServeCPU, s.Bytes)), fmtCPU(perGB(s.OSDCPU, s.Bytes)))
		if s.Latency != "" {
			fmt.Fprintf(os.Stderr, "      latency: %s\n", s.Latency)
		}
	}
	if err := t.close(); err != nil {
		return fmt.Errorf("%s: close: %w", row.label(), err)
	}
	return nil
}

func filterRows(rows []rowSpec, only string) []rowSpec {
	if only == "" {
		return rows
	}
	var out []rowSpec
	for _, r := range rows {
		if matchesAny(r.label(), only) {
			out = append(out, r)
		}
	}
	return out
}

func countRows(groups []*group) int {
	n := 0
	for _, g := range groups {
		n += len(g.rows)
	}
	return n
}

// estimate is the expected duration of the run: fio time plus per-run
// overheads measured on the development machine.
func estimate(o options, groups []*group, many, replay bool) time.Duration {
	// Overheads measured on a loaded 2-core machine: fio's start and the
	// device's open per run, the rows' opens and closes.
	perRun := o.runtime + o.ramp + 600*time.Millisecond
	var d time.Duration
	for _, g := range groups {
		rows := time.Duration(len(g.rows))
		for _, r := range g.rows {
			run := perRun
			if r.fixedWork {
				run = 1500 * time.Millisecond
			}
			d += time.Duration(o.repeat) * (time.Duration(len(jobs))*run + time.Second)
		}
		if g.needsOSD {
			if g.perRow {
				d += time.Duration(o.repeat) * rows * 7 * time.Second
			} else {
				d += time.Duration(o.repeat) * 7 * time.Second
			}
		}
	}
	if many {
		backends := 0
		if o.local {
			backends++
		}
		if o.ceph {
			backends++
		}
		last := 0
		if len(o.many) > 0 {
			last = o.many[len(o.many)-1]
		}
		d += time.Duration(backends) * (time.Duration(len(o.many)*len(o.manyJobs)*o.repeat)*(perRun+time.Second) + time.Duration(last)*200*time.Millisecond + 5*time.Second)
	}
	if replay {
		d += time.Duration(o.replayMB) * 400 * time.Millisecond
	}
	return d
}

// writeBackPolicy is the ack policy of the write-back rows (issue 15).
const writeBackPolicy = "writeback"

// durablePolicies acknowledge a write only once its journal entry is safe.
var durablePolicies = []string{"applied", "journaled"}

// A policyRow is one ack policy blockdev.ParseAckPolicy accepted.
type policyRow struct {
	Name   string
	Policy blockdev.AckPolicy
}

// policyRows parses the ack policy names; a name the blockdev package does
// not know (e.g. a policy of a newer branch) becomes a note, not an error.
func policyRows(names []string) ([]policyRow, []string) {
	var rows []policyRow
	var notes []string
	seen := map[string]bool{}
	for _, n := range names {
		if seen[n] {
			continue
		}
		seen[n] = true
		p, err := blockdev.ParseAckPolicy(n)
		if err != nil {
			notes = append(notes, fmt.Sprintf("ack policy %q skipped: %v", n, err))
			continue
		}
		rows = append(rows, policyRow{Name: n, Policy: p})
	}
	return rows, notes
}

// policyRowName is the table row of our device, fully journaled, with ack
// policy p.
func policyRowName(p string) string { return "ours, full journal, ack " + p }

// unjournaledName is our device with journaling off (the baseline of the
// journal's cost).
const unjournaledName = "ours, journaling off"

// matchesAny says whether s contains one of the substrings of list,
// separated by "|" when list holds one (row names hold commas), else by ",".
func matchesAny(s, list string) bool {
	sep := ","
	if strings.Contains(list, "|") {
		sep = "|"
	}
	for _, p := range strings.Split(list, sep) {
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

// slug makes a row name usable as a path element.
func slug(s string) string {
	return strings.NewReplacer(" ", "-", ",", "", "(", "", ")", "", "/", "-").Replace(s)
}

// scratchDir is a new directory under the work directory, for one opening
// of one row.
func scratchDir(o options, name string) (string, error) {
	if err := os.MkdirAll(o.dir, 0o755); err != nil {
		return "", err
	}
	return os.MkdirTemp(o.dir, slug(name)+"-")
}

// cleanupCtx is for closing what a run opened: it outlives an interrupt of
// the run (ctx) but not by more than a minute.
func cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
}

func abs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}
