//go:build linux

package fuseloop

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
)

// BenchmarkServe measures the FUSE server alone (a memory backend) with
// fio through the loop device, serving with the reader pool and, as the
// baseline in the same run, with one reader starting a goroutine per
// request (Options.oneReader). Besides IOPS or MB/s it reports the FUSE
// requests per I/O the loop device completed (req/loop-io: 1 means no
// extra round trip, no GETATTR or FLUSH per I/O) and per I/O fio issued
// (req/fio-io: the block layer splits a 1 MiB direct write from a user
// buffer of 4 KiB pages in two, the loop queue taking 128 segments), and
// the CPU this process spent per I/O. Run it with
// -benchtime=1x (each fio job runs a fixed time); on a shared machine
// repeat it (-count) and compare modes within one run.
func BenchmarkServe(b *testing.B) {
	kerneltest.RequireRoot(b)
	requireTools(b, "fio")
	jobs := []struct {
		name, rw, bs string
		qd           int
	}{
		{"4K-randread-QD16", "randread", "4k", 16},
		{"4K-randread-QD1", "randread", "4k", 1},
		{"4K-randwrite-QD16", "randwrite", "4k", 16},
		{"1M-write-QD4", "write", "1m", 4},
	}
	for _, j := range jobs {
		for _, mode := range []string{"oneReader", "pool"} {
			b.Run(j.name+"/"+mode, func(b *testing.B) {
				const size = 256 << 20
				be := newMemBackend(size, size)
				d := attach(b, be, Options{RequestTimeout: 30 * time.Second, oneReader: mode == "oneReader"})
				loop := strings.TrimPrefix(d.Path(), "/dev/")
				b.Logf("%s queue: %s", loop, queueLimits(loop))
				for range b.N {
					before, ios0, cpu0 := d.RequestCounts(), loopIOs(b, loop), cpuTime()
					res := runFio(b, d.Path(), j.rw, j.bs, j.qd, 4*time.Second)
					after, ios1, cpu := d.RequestCounts(), loopIOs(b, loop), cpuTime()-cpu0
					ios := ios1 - ios0
					if ios == 0 {
						b.Fatal("the loop device completed no I/O")
					}
					var reqs uint64
					var kinds []string
					for k, v := range after {
						if n := v - before[k]; n > 0 {
							reqs += n
							kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
						}
					}
					sort.Strings(kinds)
					if j.bs == "4k" {
						b.ReportMetric(res.iops, "IOPS")
					} else {
						b.ReportMetric(res.bw/1e6, "MB/s")
					}
					b.ReportMetric(float64(reqs)/float64(ios), "req/loop-io")
					if res.ios > 0 {
						b.ReportMetric(float64(reqs)/float64(res.ios), "req/fio-io")
					}
					b.ReportMetric(float64(cpu.Microseconds())/float64(ios), "cpu-µs/io")
					b.Logf("%s %s: %d loop I/Os, FUSE requests %s", j.name, mode, ios, strings.Join(kinds, " "))
				}
			})
		}
	}
}

type fioResult struct {
	iops, bw float64
	ios      uint64 // I/Os fio issued
}

// runFio runs one fio job on dev and returns its IOPS and bytes/s.
func runFio(b *testing.B, dev, rw, bs string, qd int, d time.Duration) fioResult {
	b.Helper()
	out, err := exec.Command("fio", "--name=j", "--filename="+dev, "--ioengine=libaio", "--direct=1",
		"--rw="+rw, "--bs="+bs, fmt.Sprintf("--iodepth=%d", qd), "--size=256m", "--time_based",
		fmt.Sprintf("--runtime=%ds", int(d.Seconds())), "--output-format=json").Output()
	if err != nil {
		b.Fatalf("fio: %v\n%s", err, out)
	}
	var r struct {
		Jobs []struct {
			Read, Write struct {
				IOPS float64 `json:"iops"`
				BW   float64 `json:"bw_bytes"`
				IOs  uint64  `json:"total_ios"`
			}
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out, &r); err != nil || len(r.Jobs) != 1 {
		b.Fatalf("fio output: %v\n%s", err, out)
	}
	s := r.Jobs[0].Read
	if strings.Contains(rw, "write") {
		s = r.Jobs[0].Write
	}
	return fioResult{iops: s.IOPS, bw: s.BW, ios: s.IOs}
}

// loopIOs is the number of reads and writes the block device completed.
func loopIOs(b *testing.B, dev string) uint64 {
	b.Helper()
	raw, err := os.ReadFile("/sys/block/" + dev + "/stat")
	if err != nil {
		b.Fatal(err)
	}
	var f [11]uint64
	if _, err := fmt.Sscan(string(raw), &f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6], &f[7], &f[8], &f[9], &f[10]); err != nil {
		b.Fatalf("parse %s stat: %v", dev, err)
	}
	return f[0] + f[4] // reads completed + writes completed
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// queueLimits describes the block queue limits that decide how the kernel
// splits I/O on dev.
func queueLimits(dev string) string {
	var out []string
	for _, f := range []string{"max_sectors_kb", "max_hw_sectors_kb", "max_segments", "max_segment_size", "read_ahead_kb"} {
		b, err := os.ReadFile("/sys/block/" + dev + "/queue/" + f)
		if err == nil {
			out = append(out, f+"="+strings.TrimSpace(string(b)))
		}
	}
	return strings.Join(out, " ")
}
