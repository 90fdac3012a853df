package main

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// median returns the median of the finite values in xs (the mean of the two
// middle ones for an even count), and false when there are none.
func median(xs []float64) (float64, bool) {
	v := finite(xs)
	if len(v) == 0 {
		return 0, false
	}
	sort.Float64s(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2], true
	}
	return (v[n/2-1] + v[n/2]) / 2, true
}

// spread is half the range of the finite values in xs relative to their
// median (0.1: the runs lie within ±10 % of the median), and false when
// there are no values or the median is 0.
func spread(xs []float64) (float64, bool) {
	v := finite(xs)
	m, ok := median(v)
	if !ok || m == 0 {
		return 0, false
	}
	lo, hi := v[0], v[0]
	for _, x := range v {
		lo, hi = min(lo, x), max(hi, x)
	}
	return (hi - lo) / 2 / math.Abs(m), true
}

func finite(xs []float64) []float64 {
	out := make([]float64, 0, len(xs))
	for _, x := range xs {
		if !math.IsNaN(x) && !math.IsInf(x, 0) {
			out = append(out, x)
		}
	}
	return out
}

// perGB is CPU seconds per 10⁹ bytes, NaN when either is unknown or no
// bytes moved.
func perGB(cpuSeconds, bytes float64) float64 {
	if math.IsNaN(cpuSeconds) || math.IsNaN(bytes) || bytes <= 0 {
		return math.NaN()
	}
	return cpuSeconds / (bytes / 1e9)
}

// userHZ is the unit of the times in /proc/<pid>/stat (USER_HZ, 100 on
// every Linux architecture this runs on).
const userHZ = 100

// parseProcStat returns utime+stime of a /proc/<pid>/stat line in seconds.
// The command name (field 2) is in parentheses and may itself hold spaces
// and parentheses, so the fields are counted from the last ')'.
func parseProcStat(line string) (float64, error) {
	i := strings.LastIndexByte(line, ')')
	if i < 0 {
		return 0, fmt.Errorf("proc stat: no command name in %q", line)
	}
	// After ")": state (3), ppid (4), ... utime (14), stime (15).
	f := strings.Fields(line[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("proc stat: %d fields after the command name, want at least 13", len(f))
	}
	var ticks uint64
	for _, s := range f[11:13] {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("proc stat: utime/stime %q: %w", s, err)
		}
		ticks += n
	}
	return float64(ticks) / userHZ, nil
}

// procCPU is the CPU time (user + system) a process has used, NaN when pid
// is 0 or the process is gone.
func procCPU(pid int) float64 {
	if pid <= 0 {
		return math.NaN()
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return math.NaN()
	}
	s, err := parseProcStat(string(b))
	if err != nil {
		return math.NaN()
	}
	return s
}

// selfCPU is this process's CPU time (user + system, all threads, cgo's
// included): the process that serves our devices.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return math.NaN()
	}
	return tvSeconds(ru.Utime) + tvSeconds(ru.Stime)
}

func tvSeconds(tv syscall.Timeval) float64 {
	return float64(tv.Sec) + float64(tv.Usec)/1e6
}

// parseStatusKB returns the named "<key>: <n> kB" fields of a
// /proc/<pid>/status file, in bytes.
func parseStatusKB(status []byte, keys ...string) (map[string]int64, error) {
	out := map[string]int64{}
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		for _, want := range keys {
			if k != want {
				continue
			}
			f := strings.Fields(v)
			if len(f) != 2 || f[1] != "kB" {
				return nil, fmt.Errorf("status: %s: unexpected value %q", k, v)
			}
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("status: %s: %w", k, err)
			}
			out[k] = n << 10
		}
	}
	for _, k := range keys {
		if _, ok := out[k]; !ok {
			return nil, fmt.Errorf("status: no %s", k)
		}
	}
	return out, nil
}

// selfMemory returns this process's peak (VmHWM) and current (VmRSS)
// resident set size in bytes.
func selfMemory() (hwm, rss int64, err error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0, err
	}
	m, err := parseStatusKB(b, "VmHWM", "VmRSS")
	if err != nil {
		return 0, 0, err
	}
	return m["VmHWM"], m["VmRSS"], nil
}

// resetPeakRSS sets VmHWM back to the current RSS (Linux ≥ 4.0), so the
// next reading is the peak of what follows.
func resetPeakRSS() error {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// rotation is the order in which round r (of rounds) visits n rows: each
// round starts at a different row, spread evenly, so that no row always
// runs first on a fresh cluster or last on a tired one.
func rotation(n, r, rounds int) []int {
	if n == 0 {
		return nil
	}
	start := 0
	if rounds > 0 {
		start = (r % rounds) * n / rounds
	}
	out := make([]int, n)
	for k := range out {
		out[k] = (start + k) % n
	}
	return out
}
