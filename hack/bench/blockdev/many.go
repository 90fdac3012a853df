package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/memlimit"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

// manyEnv opens the volumes of the many-volumes run on one backend.
type manyEnv struct {
	backend string
	osdPID  int
	open    func(ctx context.Context, i int, bo blockdev.Options) (*servedDevice, error)
	close   func()
}

// manyResult is one volume count on one backend: this process serving all
// the volumes, fio writing to all of them at once.
type manyResult struct {
	Backend string `json:"backend"`
	Volumes int    `json:"volumes"`
	Policy  string `json:"ack_policy"`
	Job     string `json:"job_per_volume"`
	Metric  string `json:"metric"` // of the figures: IOPS or MB/s
	// Medians over the runs.
	Aggregate     float64   `json:"aggregate"`
	AggregateRuns []float64 `json:"aggregate_runs"`
	Spread        float64   `json:"aggregate_spread"`
	Slowest       float64   `json:"slowest_volume"`
	Fastest       float64   `json:"fastest_volume"`
	// SlowestToFastest is the median over the runs of each run's slowest
	// volume's figure over its fastest's.
	SlowestToFastest float64 `json:"slowest_to_fastest"`
	// PeakRSSMiB is the highest VmHWM of this process during a run (the
	// peak is reset before each run); RSSMiB its VmRSS after the last.
	PeakRSSMiB float64 `json:"peak_rss_mib"`
	// PeakLiveHeapMiB is the highest live Go heap (marked by the last GC)
	// seen during a run: what the Go side retains, without the garbage
	// GOGC lets accumulate and without cgo's memory.
	PeakLiveHeapMiB float64 `json:"peak_live_heap_mib"`
	// BaseRSSMiB is this process's RSS before the backend's first volume
	// was opened (what the peak includes besides serving the volumes).
	BaseRSSMiB    float64  `json:"base_rss_mib"`
	RSSMiB        float64  `json:"rss_mib"`
	Goroutines    int      `json:"goroutines_max"`
	IdleRoutines  int      `json:"goroutines_idle"`
	ServeCPUPerGB *float64 `json:"serve_cpu_s_per_gb,omitempty"`
	OSDCPUPerGB   *float64 `json:"osd_cpu_s_per_gb,omitempty"`
}

// manyRun is one fio run over every volume.
type manyRun struct {
	PerVolume  []float64 // IOPS or MB/s
	Bytes      float64
	ServeCPU   float64
	OSDCPU     float64
	PeakRSS    int64
	RSS        int64
	LiveHeap   uint64 // highest live Go heap sampled
	Goroutines int
}

// manyVolumes runs the many-volumes part on each backend (Ceph on a fresh
// cluster), each in a process of its own (this binary with -many-child): a
// node plugin serves nothing else, and the rows before would otherwise
// count in its memory (the Go heap they left, librados' buffers).
func manyVolumes(ctx context.Context, o options, cl *cephCluster) ([]manyResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var backends []string
	if o.local {
		backends = append(backends, "local")
	}
	if o.ceph {
		backends = append(backends, "ceph")
	}
	var out []manyResult
	for _, backend := range backends {
		// Later flags override earlier ones: the child gets the bench's
		// own flags, then its part.
		args := append(os.Args[1:len(os.Args):len(os.Args)], "-many-child="+backend, "-dir="+o.dir,
			"-cpuprofile=") // the parent's profile file is the parent's
		if backend == "ceph" {
			if err := cl.fresh(ctx); err != nil {
				return out, err
			}
			args = append(args, "-ceph-conf="+cl.conf)
		}
		var stdout bytes.Buffer
		cmd := exec.CommandContext(ctx, exe, args...)
		cmd.Stdout, cmd.Stderr = &stdout, os.Stderr
		cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) } // it closes its devices
		cmd.WaitDelay = 2 * time.Minute
		if err := cmd.Run(); err != nil {
			return out, fmt.Errorf("%s: the serving process: %w", backend, err)
		}
		var res []manyResult
		if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
			return out, fmt.Errorf("%s: the serving process's results: %w", backend, err)
		}
		out = append(out, res...)
	}
	return out, nil
}

// manyChildMain is the serving process of manyVolumes for backend
// o.manyChild: it prints its results as JSON on stdout.
func manyChildMain(ctx context.Context, o options) error {
	o.local, o.ceph = o.manyChild == "local", o.manyChild == "ceph"
	if !o.local && !o.ceph {
		return fmt.Errorf("-many-child %q: want local or ceph", o.manyChild)
	}
	var cl *cephCluster
	if o.ceph {
		if o.cephConf == "" {
			return fmt.Errorf("-many-child ceph needs -ceph-conf")
		}
		var err error
		if cl, err = newCephCluster(o); err != nil {
			return err
		}
	}
	res, err := serveManyVolumes(ctx, o, cl)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// serveManyVolumes serves 1, 10, 50 (-many) volumes from this process on
// each backend and runs each of -many-jobs on all of them at once, -repeat
// times per count and job. Volumes are added between counts, so each
// count's memory is that of serving exactly that many.
func serveManyVolumes(ctx context.Context, o options, cl *cephCluster) ([]manyResult, error) {
	policy, err := blockdev.ParseAckPolicy(o.manyPolicy)
	if err != nil {
		return nil, fmt.Errorf("-many-policy: %w", err)
	}
	// One node-wide budget, as the node plugin shares one among every
	// volume it serves (the backends run one after the other).
	bo := blockdev.Options{AckPolicy: policy, MaxPayload: o.payload, Node: blockdev.NewNodeBudget(0, 0)}
	// And its FUSE request buffers, with the plugin's default bound.
	o.reqBufs = fuseloop.NewRequestBuffers(0)
	// And the plugin's default Go soft memory limit (GOMEMLIMIT honoured).
	prev := debug.SetMemoryLimit(-1)
	limit, src, err := memlimit.Apply(0)
	if err != nil {
		return nil, err
	}
	defer debug.SetMemoryLimit(prev)
	if limit == 0 {
		limit = prev
	}
	fmt.Fprintf(os.Stderr, "blockdev-bench: many volumes: Go soft memory limit %d MiB (%s, as the node plugin's --memory-limit=0)\n", limit>>20, src)
	var out []manyResult
	var opens []func(context.Context) (*manyEnv, error)
	if o.local {
		opens = append(opens, func(ctx context.Context) (*manyEnv, error) { return localManyVolumes(ctx, o) })
	}
	if o.ceph {
		opens = append(opens, func(ctx context.Context) (*manyEnv, error) { return cephManyVolumes(ctx, o, cl) })
	}
	for _, open := range opens {
		res, err := manyOnBackend(ctx, o, open, bo)
		out = append(out, res...)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

func manyOnBackend(ctx context.Context, o options, open func(context.Context) (*manyEnv, error), bo blockdev.Options) (_ []manyResult, retErr error) {
	debug.FreeOSMemory()
	_, base, err := selfMemory()
	if err != nil {
		return nil, err
	}
	env, err := open(ctx)
	if err != nil {
		return nil, err
	}
	var devs []*servedDevice
	defer func() {
		// Close concurrently: 50 devices one by one take long.
		var wg sync.WaitGroup
		errs := make([]error, len(devs))
		for i, d := range devs {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = d.close(ctx) }()
		}
		wg.Wait()
		env.close()
		if err := errors.Join(errs...); err != nil && retErr == nil {
			retErr = fmt.Errorf("closing the volumes: %w", err)
		}
	}()
	var out []manyResult
	for _, n := range o.many {
		start := time.Now()
		for len(devs) < n {
			d, err := env.open(ctx, len(devs), bo)
			if err != nil {
				return out, fmt.Errorf("%s: volume %d: %w", env.backend, len(devs)+1, err)
			}
			devs = append(devs, d)
		}
		fmt.Fprintf(os.Stderr, "blockdev-bench: many volumes (%s): %d served (opened in %s)\n", env.backend, n, time.Since(start).Round(100*time.Millisecond))
		idle := runtime.NumGoroutine()
		for _, j := range o.manyJobs {
			var runs []manyRun
			for r := 0; r < o.repeat; r++ {
				var prof string
				if o.memProfile != "" {
					prof = fmt.Sprintf("%s.%s-%d-%s", o.memProfile, env.backend, n, strings.ReplaceAll(j.Name, " ", "_"))
				}
				mr, err := runMany(ctx, o, j, devs, env.osdPID, prof)
				if err != nil {
					return out, fmt.Errorf("%s, %d volumes, %s: %w", env.backend, n, j.Name, err)
				}
				lo, hi := minMax(mr.PerVolume)
				fmt.Fprintf(os.Stderr, "[%d/%d] many volumes %-6s %3d × %-17s %8.0f %s in all, per volume %.1f–%.1f, peak RSS %.0f MiB (live Go heap %.0f MiB), %d goroutines\n",
					r+1, o.repeat, env.backend, n, j.Name, sum(mr.PerVolume), j.Metric, lo, hi, float64(mr.PeakRSS)/(1<<20), float64(mr.LiveHeap)/(1<<20), mr.Goroutines)
				runs = append(runs, mr)
			}
			res := summarizeMany(runs)
			res.Backend, res.Volumes, res.Policy, res.IdleRoutines = env.backend, n, o.manyPolicy, idle
			res.Job, res.Metric = j.Name, j.Metric
			res.BaseRSSMiB = float64(base) / (1 << 20)
			out = append(out, res)
		}
	}
	return out, nil
}

// localManyVolumes puts the volumes in one local backend.
func localManyVolumes(ctx context.Context, o options) (*manyEnv, error) {
	c, pool, dir, drop, err := localPool(ctx, o, "many")
	if err != nil {
		return nil, err
	}
	return &manyEnv{
		backend: "local",
		open: func(ctx context.Context, i int, bo blockdev.Options) (*servedDevice, error) {
			name := fmt.Sprintf("vol%d", i)
			if err := image.Create(ctx, pool, name, o.manySpan, image.CreateOptions{JournalSplayWidth: volume.DefaultJournalSplayWidth}); err != nil {
				return nil, err
			}
			bo.Fencer = c
			return serveDevice(ctx, pool, name, filepath.Join(dir, "state"), bo, o.reqBufs)
		},
		close: drop,
	}, nil
}

// runMany runs one fio job per volume, all at once, and measures this
// process's memory, goroutines and CPU meanwhile.
func runMany(ctx context.Context, o options, j job, devs []*servedDevice, osdPID int, memProfile string) (manyRun, error) {
	// Measure the serving of these volumes, not what earlier rows left
	// on the heap.
	debug.FreeOSMemory()
	syscall.Sync() // as fioTarget.run: no writeback of the last run's files
	if err := resetPeakRSS(); err != nil {
		return manyRun{}, fmt.Errorf("resetting the peak RSS: %w", err)
	}
	args := []string{
		"--rw=" + j.RW, "--bs=" + j.BS, fmt.Sprintf("--iodepth=%d", j.QD),
		fmt.Sprintf("--size=%d", o.manySpan), "--time_based",
		fmt.Sprintf("--runtime=%d", max(1, int(o.manyRuntime.Seconds()))),
		fmt.Sprintf("--ramp_time=%d", int(o.ramp.Seconds())),
		"--ioengine=libaio", "--direct=1", "--thread",
		"--output-format=json", "--randrepeat=0", "--norandommap",
	}
	for i, d := range devs {
		args = append(args, fmt.Sprintf("--name=v%d", i), "--filename="+d.path)
	}
	var maxG int
	var maxLive uint64
	live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // owned by this call: stopped by done before it returns
		defer wg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			maxG = max(maxG, runtime.NumGoroutine())
			metrics.Read(live)
			if live[0].Value.Kind() == metrics.KindUint64 {
				if v := live[0].Value.Uint64(); v > maxLive {
					maxLive = v
					if memProfile != "" {
						// The heap profile's in-use figures are those of
						// the last GC: the live heap just sampled.
						writeHeapProfile(memProfile)
					}
				}
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	self0, osd0 := selfCPU(), procCPU(osdPID)
	out, _, err := runFio(ctx, nil, o.manyRuntime+o.ramp, args)
	self1, osd1 := selfCPU(), procCPU(osdPID)
	close(done)
	wg.Wait()
	if err != nil {
		return manyRun{}, err
	}
	fj, err := parseFio(out)
	if err != nil {
		return manyRun{}, err
	}
	if len(fj) != len(devs) {
		return manyRun{}, fmt.Errorf("fio reported %d jobs, want one per volume (%d)", len(fj), len(devs))
	}
	mr := manyRun{ServeCPU: self1 - self0, OSDCPU: osd1 - osd0, Goroutines: maxG, LiveHeap: maxLive}
	for _, v := range fj {
		x := v.Write.IOPS
		if j.Metric == "MB/s" {
			x = v.Write.BWBytes / 1e6
		}
		mr.PerVolume = append(mr.PerVolume, x)
		mr.Bytes += wholeRunBytes(v.Write.IOBytes, v.Write.RuntimeMS, o.ramp)
	}
	if mr.PeakRSS, mr.RSS, err = selfMemory(); err != nil {
		return manyRun{}, err
	}
	return mr, nil
}

func summarizeMany(runs []manyRun) manyResult {
	var agg, slow, fast, ratio, serve, osd []float64
	var res manyResult
	for _, r := range runs {
		lo, hi := minMax(r.PerVolume)
		agg = append(agg, sum(r.PerVolume))
		slow, fast = append(slow, lo), append(fast, hi)
		ratio = append(ratio, slowestToFastest(r.PerVolume))
		serve = append(serve, perGB(r.ServeCPU, r.Bytes))
		osd = append(osd, perGB(r.OSDCPU, r.Bytes))
		res.PeakRSSMiB = max(res.PeakRSSMiB, float64(r.PeakRSS)/(1<<20))
		res.PeakLiveHeapMiB = max(res.PeakLiveHeapMiB, float64(r.LiveHeap)/(1<<20))
		res.RSSMiB = float64(r.RSS) / (1 << 20)
		res.Goroutines = max(res.Goroutines, r.Goroutines)
	}
	res.AggregateRuns = agg
	res.Aggregate, _ = median(agg)
	res.Spread, _ = spread(agg)
	res.Slowest, _ = median(slow)
	res.Fastest, _ = median(fast)
	res.SlowestToFastest, _ = median(ratio)
	res.ServeCPUPerGB, res.OSDCPUPerGB = medianPtr(serve), medianPtr(osd)
	return res
}

// slowestToFastest is the slowest volume's figure over the fastest's (1
// for one volume; 0 when the fastest did nothing).
func slowestToFastest(xs []float64) float64 {
	lo, hi := minMax(xs)
	if hi <= 0 || math.IsNaN(hi) {
		return 0
	}
	return lo / hi
}

func minMax(xs []float64) (float64, float64) {
	if len(xs) == 0 {
		return math.NaN(), math.NaN()
	}
	lo, hi := xs[0], xs[0]
	for _, x := range xs {
		lo, hi = min(lo, x), max(hi, x)
	}
	return lo, hi
}

func sum(xs []float64) float64 {
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return s
}

// writeHeapProfile writes the heap profile to path (errors go to stderr:
// a missing profile does not fail the run).
func writeHeapProfile(path string) {
	f, err := os.Create(path)
	if err == nil {
		err = pprof.Lookup("heap").WriteTo(f, 0)
		if g, gerr := os.Create(path + ".goroutines"); gerr == nil {
			_ = pprof.Lookup("goroutine").WriteTo(g, 1)
			g.Close()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "blockdev-bench: heap profile %s: %v\n", path, err)
	}
}
