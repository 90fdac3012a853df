package main

import (
	"math"
	"os"
	"reflect"
	"testing"
	"time"
)

func TestMedianAndSpread(t *testing.T) {
	nan := math.NaN()
	for _, tc := range []struct {
		name        string
		in          []float64
		median      float64
		spread      float64
		ok, spread0 bool
	}{
		{name: "empty", in: nil},
		{name: "only NaN", in: []float64{nan, math.Inf(1)}},
		{name: "one", in: []float64{7}, median: 7, spread: 0, ok: true},
		{name: "odd, unsorted", in: []float64{30, 10, 20}, median: 20, spread: 0.5, ok: true},
		{name: "even: mean of the middle two", in: []float64{4, 1, 3, 2}, median: 2.5, spread: 0.6, ok: true},
		{name: "NaN ignored", in: []float64{nan, 100, 80, 120}, median: 100, spread: 0.2, ok: true},
		{name: "zero median has no spread", in: []float64{0, 0, 1}, median: 0, ok: true, spread0: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := append([]float64(nil), tc.in...)
			m, ok := median(tc.in)
			if ok != tc.ok || (ok && math.Abs(m-tc.median) > 1e-9) {
				t.Errorf("median(%v) = %v, %v; want %v, %v", tc.in, m, ok, tc.median, tc.ok)
			}
			if !sameFloats(in, tc.in) {
				t.Errorf("median reordered its input: %v, was %v", tc.in, in)
			}
			s, sok := spread(tc.in)
			wantOK := tc.ok && !tc.spread0
			if sok != wantOK || (sok && math.Abs(s-tc.spread) > 1e-9) {
				t.Errorf("spread(%v) = %v, %v; want %v, %v", tc.in, s, sok, tc.spread, wantOK)
			}
		})
	}
}

// sameFloats compares element by element, NaN equal to NaN.
func sameFloats(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] && !(math.IsNaN(a[i]) && math.IsNaN(b[i])) {
			return false
		}
	}
	return true
}

func TestPerGBAndWholeRunBytes(t *testing.T) {
	for _, tc := range []struct {
		name       string
		cpu, bytes float64
		want       float64 // NaN: unknown
	}{
		{"2 s over 4 GB", 2, 4e9, 0.5},
		{"no bytes", 2, 0, math.NaN()},
		{"unknown CPU", math.NaN(), 1e9, math.NaN()},
		{"unknown bytes", 1, math.NaN(), math.NaN()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := perGB(tc.cpu, tc.bytes)
			if math.IsNaN(tc.want) != math.IsNaN(got) || (!math.IsNaN(got) && math.Abs(got-tc.want) > 1e-12) {
				t.Errorf("perGB(%v, %v) = %v, want %v", tc.cpu, tc.bytes, got, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name     string
		io, rtMS float64
		ramp     time.Duration
		want     float64
		wantNaN  bool
	}{
		{name: "no ramp", io: 1000, rtMS: 4000, want: 1000},
		{name: "1 s ramp on 4 s", io: 1000, rtMS: 4000, ramp: time.Second, want: 1250},
		{name: "no runtime", io: 1000, rtMS: 0, ramp: time.Second, wantNaN: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := wholeRunBytes(tc.io, tc.rtMS, tc.ramp)
			if tc.wantNaN != math.IsNaN(got) || (!tc.wantNaN && got != tc.want) {
				t.Errorf("wholeRunBytes(%v, %v, %v) = %v, want %v (NaN %v)", tc.io, tc.rtMS, tc.ramp, got, tc.want, tc.wantNaN)
			}
		})
	}
}

func TestParseProcStat(t *testing.T) {
	// Fields 14 and 15 (utime, stime) in USER_HZ ticks.
	const tail = " S 1 24396 24396 0 -1 4194624 1196 0 0 0 1234 566 0 0 20 0 57 0 87013 1419087872 28415 18446744073709551615"
	for _, tc := range []struct {
		name    string
		line    string
		want    float64
		wantErr bool
	}{
		{name: "plain name", line: "24397 (ceph-osd)" + tail, want: 18.00},
		{name: "name with spaces and parentheses", line: "4242 (my (odd) proc)" + tail, want: 18.00},
		{name: "trailing newline", line: "1 (init)" + tail + "\n", want: 18.00},
		{name: "no name", line: "24397 ceph-osd S 1", wantErr: true},
		{name: "too short", line: "1 (x) S 1 2 3", wantErr: true},
		{name: "not a number", line: "1 (x) S 1 24396 24396 0 -1 4194624 1196 0 0 0 abc 566 0", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseProcStat(tc.line)
			if (err != nil) != tc.wantErr {
				t.Fatalf("parseProcStat: err = %v, want error %v", err, tc.wantErr)
			}
			if !tc.wantErr && math.Abs(got-tc.want) > 1e-9 {
				t.Errorf("parseProcStat = %v s, want %v s", got, tc.want)
			}
		})
	}
}

func TestProcCPUOfThisProcess(t *testing.T) {
	// A real /proc file: our own CPU time is positive and not more than
	// what getrusage says plus a tick.
	got := procCPU(os.Getpid())
	self := selfCPU()
	if math.IsNaN(got) || got < 0 || got > self+0.02 {
		t.Errorf("procCPU(self) = %v, getrusage %v", got, self)
	}
	if !math.IsNaN(procCPU(0)) {
		t.Errorf("procCPU(0) is not NaN")
	}
}

func TestParseStatusKB(t *testing.T) {
	status := "Name:\tblockdev-bench\nVmPeak:\t 2000 kB\nVmHWM:\t  123456 kB\nVmRSS:\t   65432 kB\nThreads:\t12\n"
	for _, tc := range []struct {
		name    string
		in      string
		keys    []string
		want    map[string]int64
		wantErr bool
	}{
		{name: "HWM and RSS", in: status, keys: []string{"VmHWM", "VmRSS"}, want: map[string]int64{"VmHWM": 123456 << 10, "VmRSS": 65432 << 10}},
		{name: "missing key", in: status, keys: []string{"VmSwap"}, wantErr: true},
		{name: "not in kB", in: "VmRSS:\t12\n", keys: []string{"VmRSS"}, wantErr: true},
		{name: "garbage number", in: "VmRSS:\t1x2 kB\n", keys: []string{"VmRSS"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStatusKB([]byte(tc.in), tc.keys...)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if !tc.wantErr && !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestRotation(t *testing.T) {
	for _, tc := range []struct {
		n, r, rounds int
		want         []int
	}{
		{n: 0, r: 0, rounds: 3, want: nil},
		{n: 4, r: 0, rounds: 1, want: []int{0, 1, 2, 3}},
		{n: 9, r: 0, rounds: 3, want: []int{0, 1, 2, 3, 4, 5, 6, 7, 8}},
		{n: 9, r: 1, rounds: 3, want: []int{3, 4, 5, 6, 7, 8, 0, 1, 2}},
		{n: 9, r: 2, rounds: 3, want: []int{6, 7, 8, 0, 1, 2, 3, 4, 5}},
		{n: 2, r: 1, rounds: 3, want: []int{0, 1}}, // 1*2/3 = 0
		{n: 2, r: 2, rounds: 3, want: []int{1, 0}},
	} {
		if got := rotation(tc.n, tc.r, tc.rounds); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("rotation(%d, %d, %d) = %v, want %v", tc.n, tc.r, tc.rounds, got, tc.want)
		}
	}
}

func TestSummarize(t *testing.T) {
	nan := math.NaN()
	ss := []sample{
		{Value: 100, Bytes: 1e9, ServeCPU: 2, FioCPU: 1, OSDCPU: nan},
		{Value: 300, Bytes: 2e9, ServeCPU: 2, FioCPU: 1, OSDCPU: nan},
		{Value: 200, Bytes: 1e9, ServeCPU: 3, FioCPU: 1, OSDCPU: nan},
	}
	js := summarize(ss)
	if js.Median != 200 || math.Abs(js.Spread-0.5) > 1e-9 || !reflect.DeepEqual(js.Runs, []float64{100, 300, 200}) {
		t.Errorf("median %v spread %v runs %v; want 200, 0.5, [100 300 200]", js.Median, js.Spread, js.Runs)
	}
	if js.ServeCPUPerGB == nil || *js.ServeCPUPerGB != 2 { // per run 2, 1, 3
		t.Errorf("serve CPU/GB = %v, want 2", js.ServeCPUPerGB)
	}
	if js.OSDCPUPerGB != nil {
		t.Errorf("OSD CPU/GB = %v without an OSD, want none", *js.OSDCPUPerGB)
	}
}

func TestSummarizeMany(t *testing.T) {
	runs := []manyRun{
		{PerVolume: []float64{100, 50, 80}, Bytes: 1e9, ServeCPU: 1, OSDCPU: 2, PeakRSS: 300 << 20, RSS: 200 << 20, Goroutines: 90},
		{PerVolume: []float64{100, 100, 100}, Bytes: 1e9, ServeCPU: 1, OSDCPU: 2, PeakRSS: 500 << 20, RSS: 250 << 20, Goroutines: 80, LiveHeap: 120 << 20},
		{PerVolume: []float64{120, 30, 90}, Bytes: 1e9, ServeCPU: 1, OSDCPU: 2, PeakRSS: 400 << 20, RSS: 220 << 20, Goroutines: 85},
	}
	m := summarizeMany(runs)
	if m.Aggregate != 240 { // 230, 300, 240
		t.Errorf("aggregate %v, want 240", m.Aggregate)
	}
	if m.SlowestToFastest != 0.5 { // 0.5, 1, 0.25
		t.Errorf("slowest/fastest %v, want 0.5", m.SlowestToFastest)
	}
	if m.Slowest != 50 || m.Fastest != 100 {
		t.Errorf("slowest %v fastest %v, want 50, 100", m.Slowest, m.Fastest)
	}
	if m.PeakLiveHeapMiB != 120 {
		t.Errorf("peak live heap %v MiB, want 120 (highest)", m.PeakLiveHeapMiB)
	}
	if m.PeakRSSMiB != 500 || m.RSSMiB != 220 || m.Goroutines != 90 {
		t.Errorf("peak RSS %v, RSS %v, goroutines %v; want 500 (highest), 220 (last), 90", m.PeakRSSMiB, m.RSSMiB, m.Goroutines)
	}
	for _, tc := range []struct {
		in   []float64
		want float64
	}{{[]float64{5}, 1}, {[]float64{0, 0}, 0}, {[]float64{10, 5, 20}, 0.25}, {nil, 0}} {
		if got := slowestToFastest(tc.in); got != tc.want {
			t.Errorf("slowestToFastest(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestParseFio(t *testing.T) {
	out := `fio: some warning
{"fio version":"fio-3.33","jobs":[{"jobname":"v0","read":{"iops":0,"bw_bytes":0,"io_bytes":0,"runtime":0},"write":{"iops":1000.5,"bw_bytes":4098048,"io_bytes":16392192,"runtime":4000}},{"jobname":"v1","read":{},"write":{"iops":10,"bw_bytes":1,"io_bytes":2,"runtime":4000}}]}`
	jobs, err := parseFio([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 2 || jobs[0].Name != "v0" || jobs[0].Write.IOPS != 1000.5 || jobs[0].Write.IOBytes != 16392192 || jobs[0].Write.RuntimeMS != 4000 || jobs[1].Write.IOPS != 10 {
		t.Errorf("parsed %+v", jobs)
	}
	for _, bad := range []string{"", "fio: error", `{"jobs":[]}`, `{"jobs":`} {
		if _, err := parseFio([]byte(bad)); err == nil {
			t.Errorf("parseFio(%q) succeeded", bad)
		}
	}
}
