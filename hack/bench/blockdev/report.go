package main

import (
	"fmt"
	"sort"
	"strings"
)

// anchorName is the block path a user would pick instead of ours.
const anchorName = "librbd, journaling (fio rbd engine)"

// librbdNoCacheName is librbd with the durability contract of our durable
// ack policies: a write is acknowledged once its journal entry is safe.
const librbdNoCacheName = "librbd, journaling, rbd_cache off (fio rbd engine)"

type report struct {
	Machine     string `json:"machine"`
	Date        string `json:"date"`
	Runtime     string `json:"runtime_per_job"`
	Ramp        string `json:"ramp_per_job"`
	Repeat      int    `json:"runs_per_figure"`
	ManyRuntime string `json:"many_volumes_runtime"`
	Span        string `json:"span"`
	CephCluster string `json:"ceph_cluster,omitempty"`
	// Results hold per row the median of each job's runs (Values) and the
	// runs, their spread and the CPU figures (Jobs).
	Results  []result           `json:"results"`
	Many     []manyResult       `json:"many_volumes,omitempty"`
	Replay   []replayResult     `json:"replay,omitempty"`
	Targets  []targetResult     `json:"targets,omitempty"`
	Ratios   map[string]float64 `json:"ratios,omitempty"`
	Notes    []string           `json:"notes,omitempty"`
	Duration string             `json:"duration"`
}

type result struct {
	Target  string               `json:"target"`
	Backend string               `json:"backend"`
	Values  map[string]float64   `json:"values"`
	Jobs    map[string]*jobStats `json:"jobs"`
}

// jobStats are one job's runs on one row.
type jobStats struct {
	Median float64   `json:"median"`
	Runs   []float64 `json:"runs"`
	// Spread is half the range of the runs relative to the median.
	Spread float64 `json:"spread"`
	// CPU seconds per GB moved (written; read for read jobs), medians:
	// of the process serving the block path (ours: this process; librbd:
	// fio or rbd), of fio, of the OSD.
	ServeCPUPerGB *float64 `json:"serve_cpu_s_per_gb,omitempty"`
	FioCPUPerGB   *float64 `json:"fio_cpu_s_per_gb,omitempty"`
	OSDCPUPerGB   *float64 `json:"osd_cpu_s_per_gb,omitempty"`
}

type replayResult struct {
	SplayWidth   int     `json:"journal_splay_width"`
	MB           int     `json:"uncommitted_mb"`
	Entries      int     `json:"entries"`
	OursSeconds  float64 `json:"ours_seconds"`
	LibrbdSecond float64 `json:"librbd_seconds"`
	Speedup      float64 `json:"speedup"`
}

// anchor returns the anchor's results, or nil when it was not measured.
func anchor(rep *report) *result { return find(rep, anchorName, "ceph") }

func find(rep *report, name, backend string) *result {
	for i := range rep.Results {
		if r := &rep.Results[i]; r.Target == name && r.Backend == backend {
			return r
		}
	}
	return nil
}

func markdown(rep *report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nMachine: %s; %s. fio %s (after a %s ramp) per run over %s (libaio, direct); `rbd bench` with the same sizes and depths. Each figure is the median of %d runs.\n",
		rep.Machine, rep.Date, rep.Runtime, rep.Ramp, rep.Span, rep.Repeat)
	if rep.CephCluster != "" {
		fmt.Fprintf(&b, "Ceph: %s.\n", rep.CephCluster)
	}
	b.WriteString("\n")
	a := anchor(rep)
	// table writes a table with a row per target and a column per job; a
	// job a target did not run shows "-", the others cell(job, its stats).
	table := func(title string, units bool, cell func(j job, js *jobStats) string) {
		fmt.Fprintf(&b, "| %s | backend |", title)
		for _, j := range jobs {
			if units {
				fmt.Fprintf(&b, " %s (%s) |", j.Name, j.Metric)
			} else {
				fmt.Fprintf(&b, " %s |", j.Name)
			}
		}
		b.WriteString("\n|---|---|")
		for range jobs {
			b.WriteString("---:|")
		}
		b.WriteString("\n")
		for _, r := range rep.Results {
			fmt.Fprintf(&b, "| %s | %s |", r.Target, r.Backend)
			for _, j := range jobs {
				if js := r.Jobs[j.Name]; js == nil {
					b.WriteString(" - |")
				} else {
					b.WriteString(cell(j, js))
				}
			}
			b.WriteString("\n")
		}
	}
	table("target", true, func(j job, js *jobStats) string {
		c := fmt.Sprintf(" %.0f", js.Median)
		if a != nil && a.Values[j.Name] > 0 {
			c += fmt.Sprintf(" (%.2f×)", js.Median/a.Values[j.Name])
		}
		if len(js.Runs) > 1 {
			c += fmt.Sprintf(" ±%.0f%%", js.Spread*100)
		}
		return c + " |"
	})
	if a != nil {
		fmt.Fprintf(&b, "\n×: ratio to the anchor, %s. ", anchorName)
	}
	b.WriteString("±: half the range of the runs, relative to the median.\n")

	b.WriteString("\nCPU seconds per GB moved (written; read for the read job): the process serving the block path (ours: the bench process, which serves our devices; librbd: fio with librbd in it, or rbd) / the OSD. Whole runs, ramp included.\n\n")
	table("CPU s/GB: serving / OSD", false, func(_ job, js *jobStats) string {
		return fmt.Sprintf(" %s / %s |", fmtPtr(js.ServeCPUPerGB), fmtPtr(js.OSDCPUPerGB))
	})

	if len(rep.Many) > 0 {
		fmt.Fprintf(&b, "\nMany volumes served by one process (ack policy %s): fio runs the job on every volume at once for %s after the ramp; medians of %d runs; each backend in a serving process of its own (started for this part, as a node plugin serves nothing else); peak RSS: the highest VmHWM of the serving process during a run (its RSS before its first volume was opened: %s); peak live Go heap: the highest heap the Go GC found live (RSS adds the garbage GOGC lets grow, cgo's memory and the runtime's).\n\n", rep.Many[0].Policy, rep.ManyRuntime, rep.Repeat, baseRSS(rep.Many))
		b.WriteString("| backend | volumes | job per volume | aggregate | slowest / fastest volume | slowest ÷ fastest | peak RSS (MiB) | RSS after (MiB) | peak live Go heap (MiB) | goroutines idle / max | CPU s/GB serving / OSD |\n")
		b.WriteString("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, m := range rep.Many {
			sp := ""
			if len(m.AggregateRuns) > 1 {
				sp = fmt.Sprintf(" ±%.0f%%", m.Spread*100)
			}
			fmt.Fprintf(&b, "| %s | %d | %s | %s %s%s | %s / %s | %.2f | %.0f | %.0f | %.0f | %d / %d | %s / %s |\n",
				m.Backend, m.Volumes, m.Job, fmtFig(m.Aggregate), m.Metric, sp, fmtFig(m.Slowest), fmtFig(m.Fastest), m.SlowestToFastest,
				m.PeakRSSMiB, m.RSSMiB, m.PeakLiveHeapMiB, m.IdleRoutines, m.Goroutines, fmtPtr(m.ServeCPUPerGB), fmtPtr(m.OSDCPUPerGB))
		}
	}

	for _, r := range rep.Replay {
		fmt.Fprintf(&b, "\nReplay of the same %d MiB uncommitted librbd journal (%d entries, splay width %d): ours %.2f s, librbd %.2f s (lock acquisition) — %.1f× faster.\n",
			r.MB, r.Entries, r.SplayWidth, r.OursSeconds, r.LibrbdSecond, r.Speedup)
	}

	if len(rep.Targets) > 0 {
		met, missed, unmeasured := 0, 0, 0
		for _, t := range rep.Targets {
			switch t.Status {
			case statusMet:
				met++
			case statusMissed:
				missed++
			default:
				unmeasured++
			}
		}
		fmt.Fprintf(&b, "\nTargets (ratios of medians measured in this run): %d met, %d missed, %d not measured.\n", met, missed, unmeasured)
		group := ""
		for _, t := range rep.Targets {
			if t.Group != group {
				group = t.Group
				fmt.Fprintf(&b, "\n%s:\n\n| target | want | got | |\n|---|---|---:|---|\n", group)
			}
			got := "-"
			if t.Got != nil {
				if strings.HasSuffix(t.Want, "×") {
					got = fmt.Sprintf("%.2f×", *t.Got)
				} else {
					got = fmt.Sprintf("%.0f", *t.Got)
				}
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", t.Name, t.Want, got, t.Status)
		}
	}

	if len(rep.Ratios) > 0 {
		b.WriteString("\nRatios:\n")
		keys := make([]string, 0, len(rep.Ratios))
		for k := range rep.Ratios {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "- %s: %.2f\n", k, rep.Ratios[k])
		}
	}
	for _, n := range rep.Notes {
		fmt.Fprintf(&b, "\nNote: %s\n", n)
	}
	fmt.Fprintf(&b, "\nTotal time of the run: %s.\n", rep.Duration)
	return b.String()
}

// baseRSS lists the serving process's RSS before each backend's volumes.
func baseRSS(ms []manyResult) string {
	var parts []string
	seen := map[string]bool{}
	for _, m := range ms {
		if !seen[m.Backend] {
			seen[m.Backend] = true
			parts = append(parts, fmt.Sprintf("%s %.0f MiB", m.Backend, m.BaseRSSMiB))
		}
	}
	return strings.Join(parts, ", ")
}

// fmtFig prints a figure with a decimal when it is small.
func fmtFig(x float64) string {
	if x < 10 {
		return fmt.Sprintf("%.1f", x)
	}
	return fmt.Sprintf("%.0f", x)
}

func fmtPtr(p *float64) string {
	if p == nil {
		return "-"
	}
	return fmtCPU(*p)
}
