package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// A sample is one run of one job on one target.
type sample struct {
	Value float64 // IOPS or MB/s (the job's metric), over the measured time
	// Bytes is what the whole run moved (ramp included: the measured
	// bytes scaled by (ramp+runtime)/runtime), the denominator of the CPU
	// figures, whose window is the whole run too.
	Bytes float64
	// CPU seconds over the run: of the process serving the block path
	// (this one for our device, fio for librbd, rbd for rbd bench; NaN
	// for the plain loop, which the kernel serves), of fio, of the OSD
	// (NaN without one).
	ServeCPU, FioCPU, OSDCPU float64
	// Latency, with -latency: fio's mean latency and, on our device, the
	// device's mean latencies (measured part of the run; device: ramp
	// included).
	Latency string
}

// serving says which process serves a target's block path, for its CPU
// accounting.
type serving int

const (
	servedByUs     serving = iota // our device, served in this process
	servedByClient                // librbd inside fio (or rbd bench)
	servedByKernel                // the plain loop device
)

// fioTarget runs fio jobs on one block path.
type fioTarget struct {
	o      options
	env    []string // added to fio's environment
	engine []string // fio options selecting the device or image
	serve  serving
	osdPID func() int // nil without an OSD
	// lat, with -latency, sums our device's latencies: each run prints
	// their means (where a write's time goes: journal append, apply).
	lat *latencyObserver
}

func (f fioTarget) osd() int {
	if f.osdPID == nil {
		return 0
	}
	return f.osdPID()
}

func (f fioTarget) run(ctx context.Context, j job) (sample, error) {
	args := append([]string{
		"--name=" + strings.ReplaceAll(j.Name, " ", "_"),
		"--rw=" + j.RW, "--bs=" + j.BS, fmt.Sprintf("--iodepth=%d", j.QD),
		fmt.Sprintf("--size=%d", f.o.span), "--time_based",
		fmt.Sprintf("--runtime=%d", max(1, int(f.o.runtime.Seconds()))),
		fmt.Sprintf("--ramp_time=%d", int(f.o.ramp.Seconds())),
		"--output-format=json", "--randrepeat=0", "--norandommap",
	}, f.engine...)
	// Each run starts with no dirty page cache: the kernel writes the
	// local store's object files (and the plain loop's file) back after
	// the run that wrote them, and that writeback landed on the next run
	// (the row after a 1M job measured up to a third slower).
	syscall.Sync()
	osd := f.osd()
	lat0 := f.lat.snapshot()
	self0, osd0 := selfCPU(), procCPU(osd)
	out, fioCPU, err := runFio(ctx, f.env, f.o.runtime+f.o.ramp, args)
	self1, osd1 := selfCPU(), procCPU(osd)
	if err != nil {
		return sample{}, err
	}
	rs, err := parseFio(out)
	if err != nil {
		return sample{}, err
	}
	if len(rs) != 1 {
		return sample{}, fmt.Errorf("fio reported %d jobs, want 1", len(rs))
	}
	st := rs[0].Read
	if j.Write {
		st = rs[0].Write
	}
	s := sample{
		Value:  st.IOPS,
		Bytes:  wholeRunBytes(st.IOBytes, st.RuntimeMS, f.o.ramp),
		FioCPU: fioCPU,
		OSDCPU: osd1 - osd0,
	}
	if j.Metric == "MB/s" {
		s.Value = st.BWBytes / 1e6
	}
	if f.o.latency {
		s.Latency = fmt.Sprintf("fio mean %v", time.Duration(st.Lat.Mean).Round(time.Microsecond))
		if f.lat != nil {
			s.Latency += "; device means: " + f.lat.snapshot().since(lat0)
		}
	}
	switch f.serve {
	case servedByUs:
		s.ServeCPU = self1 - self0
	case servedByClient:
		s.ServeCPU = fioCPU
	default:
		s.ServeCPU = math.NaN()
	}
	return s, nil
}

// fill writes the whole span once, sequentially (not measured).
func (f fioTarget) fill(ctx context.Context) error {
	args := append([]string{
		"--name=fill", "--rw=write", "--bs=1m", "--iodepth=4",
		fmt.Sprintf("--size=%d", f.o.span), "--output-format=json",
	}, f.engine...)
	_, _, err := runFio(ctx, f.env, 10*time.Minute, args)
	return err
}

// wholeRunBytes scales the bytes fio measured after the ramp to the whole
// run, assuming the ramp ran at the measured rate.
func wholeRunBytes(ioBytes, runtimeMS float64, ramp time.Duration) float64 {
	if runtimeMS <= 0 {
		return math.NaN()
	}
	return ioBytes * (runtimeMS + float64(ramp.Milliseconds())) / runtimeMS
}

// runFio runs fio in its own process group and returns its output and the
// CPU time it used (its job processes and librbd's threads included). The
// run is bounded by its expected time plus two minutes; when ctx ends fio
// gets SIGINT (it stops its jobs and exits), then SIGKILL after 15 s.
func runFio(ctx context.Context, env []string, expected time.Duration, args []string) ([]byte, float64, error) {
	ctx, cancel := context.WithTimeout(ctx, expected+2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "fio", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGINT) }
	cmd.WaitDelay = 15 * time.Second
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	cpu := math.NaN()
	if cmd.ProcessState != nil {
		cpu = cmd.ProcessState.UserTime().Seconds() + cmd.ProcessState.SystemTime().Seconds()
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, cpu, fmt.Errorf("fio %s: %w", strings.Join(args, " "), errors.Join(err, context.Cause(ctx)))
		}
		return nil, cpu, fmt.Errorf("fio %s: %w: %s", strings.Join(args, " "), err, lastLine([]byte(stderr.String())))
	}
	return out, cpu, nil
}

// fioDir is one direction of one fio job's results.
type fioDir struct {
	IOPS      float64 `json:"iops"`
	BWBytes   float64 `json:"bw_bytes"`
	IOBytes   float64 `json:"io_bytes"`
	RuntimeMS float64 `json:"runtime"`
	Lat       struct {
		Mean float64 `json:"mean"` // ns, submission to completion
	} `json:"lat_ns"`
}

type fioJob struct {
	Name  string `json:"jobname"`
	Read  fioDir `json:"read"`
	Write fioDir `json:"write"`
}

// parseFio returns the jobs of fio's JSON output (which may follow
// warnings on stdout).
func parseFio(out []byte) ([]fioJob, error) {
	var r struct {
		Jobs []fioJob `json:"jobs"`
	}
	s := string(out)
	i := strings.IndexByte(s, '{')
	if i < 0 {
		return nil, fmt.Errorf("cannot parse fio output: no JSON in %q", lastLine(out))
	}
	if err := json.Unmarshal([]byte(s[i:]), &r); err != nil {
		return nil, fmt.Errorf("cannot parse fio output: %w", err)
	}
	if len(r.Jobs) == 0 {
		return nil, fmt.Errorf("cannot parse fio output: no jobs")
	}
	return r.Jobs, nil
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// accumulator collects the samples of every row and job across rounds.
type accumulator struct {
	samples map[string]map[string][]sample // row label → job → runs
}

func newAccumulator() *accumulator {
	return &accumulator{samples: map[string]map[string][]sample{}}
}

func (a *accumulator) add(row rowSpec, j job, s sample) {
	m := a.samples[row.label()]
	if m == nil {
		m = map[string][]sample{}
		a.samples[row.label()] = m
	}
	m[j.Name] = append(m[j.Name], s)
}

// result is the row's figures: per job the median of its runs, their
// spread, and the median CPU seconds per GB.
func (a *accumulator) result(row rowSpec) *result {
	m := a.samples[row.label()]
	if m == nil {
		return nil
	}
	res := &result{Target: row.Name, Backend: row.Backend, Values: map[string]float64{}, Jobs: map[string]*jobStats{}}
	for _, j := range jobs {
		ss := m[j.Name]
		if len(ss) == 0 {
			continue
		}
		js := summarize(ss)
		res.Values[j.Name] = js.Median
		res.Jobs[j.Name] = js
	}
	return res
}

func summarize(ss []sample) *jobStats {
	var vals, serve, fio, osd []float64
	for _, s := range ss {
		vals = append(vals, s.Value)
		serve = append(serve, perGB(s.ServeCPU, s.Bytes))
		fio = append(fio, perGB(s.FioCPU, s.Bytes))
		osd = append(osd, perGB(s.OSDCPU, s.Bytes))
	}
	js := &jobStats{Runs: vals}
	js.Median, _ = median(vals)
	js.Spread, _ = spread(vals)
	js.ServeCPUPerGB = medianPtr(serve)
	js.FioCPUPerGB = medianPtr(fio)
	js.OSDCPUPerGB = medianPtr(osd)
	return js
}

func medianPtr(xs []float64) *float64 {
	m, ok := median(xs)
	if !ok {
		return nil
	}
	return &m
}

func fmtCPU(x float64) string {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return "-"
	}
	return fmt.Sprintf("%.2f", x)
}
