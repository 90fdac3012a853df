package main

import (
	"fmt"
	"math"
)

// A targetSpec is one target of issues 15 and 18: a figure of the run (a
// ratio of two rows' medians, or a many-volumes figure) and the bound it
// must meet.
type targetSpec struct {
	Group string // the heading it is listed under
	Name  string
	// The figure must be ≥ Min (Unit "×") or ≤ Max (when Max > 0).
	Min, Max float64
	Unit     string // "×" for ratios, "MiB"
	value    func(rep *report) (float64, bool)
}

// A targetResult is a target evaluated against one run.
type targetResult struct {
	Group  string   `json:"group"`
	Name   string   `json:"name"`
	Want   string   `json:"want"`
	Got    *float64 `json:"got,omitempty"`
	Status string   `json:"status"` // met, missed, not measured
}

const (
	statusMet         = "met"
	statusMissed      = "missed"
	statusNotMeasured = "not measured"
)

func (t targetSpec) want() string {
	if t.Max > 0 {
		return fmt.Sprintf("≤ %g %s", t.Max, t.Unit)
	}
	return fmt.Sprintf("≥ %.2f%s", t.Min, t.Unit)
}

// evaluate checks every target against the run's figures.
func evaluate(specs []targetSpec, rep *report) []targetResult {
	out := make([]targetResult, 0, len(specs))
	for _, t := range specs {
		r := targetResult{Group: t.Group, Name: t.Name, Want: t.want(), Status: statusNotMeasured}
		if v, ok := t.value(rep); ok && !math.IsNaN(v) && !math.IsInf(v, 0) {
			r.Got = &v
			r.Status = statusMissed
			if (t.Max > 0 && v <= t.Max) || (t.Max <= 0 && v >= t.Min) {
				r.Status = statusMet
			}
		}
		out = append(out, r)
	}
	return out
}

// ratioOf is a row's median over a base row's for one job, when both were
// measured.
func ratioOf(row, rowBackend, base, baseBackend, jobName string) func(*report) (float64, bool) {
	return func(rep *report) (float64, bool) {
		a, b := find(rep, row, rowBackend), find(rep, base, baseBackend)
		if a == nil || b == nil {
			return 0, false
		}
		x, okx := a.Values[jobName]
		y, oky := b.Values[jobName]
		if !okx || !oky || y <= 0 {
			return 0, false
		}
		return x / y, true
	}
}

// manyFigure is a figure of the many-volumes run at a volume count: the
// worst over its jobs (the highest when worst is max, else the lowest).
func manyFigure(backend string, volumes int, worstIsMax bool, f func(manyResult) float64) func(*report) (float64, bool) {
	return func(rep *report) (float64, bool) {
		var v float64
		found := false
		for _, m := range rep.Many {
			if m.Backend != backend || m.Volumes != volumes {
				continue
			}
			x := f(m)
			switch {
			case !found:
				v = x
			case worstIsMax:
				v = max(v, x)
			default:
				v = min(v, x)
			}
			found = true
		}
		return v, found
	}
}

const (
	job4KQD1   = "4K randwrite QD1"
	job4KQD16  = "4K randwrite QD16"
	job64K     = "64K seqwrite QD4"
	job1M      = "1M seqwrite QD4"
	jobReadQ16 = "4K randread QD16"
)

// targetSpecs are the targets of issue 15 (write-back and durable policies
// against librbd, journaling overhead, many volumes) and issue 18 (metadata
// journal mode), stated as ratios measured in one run.
func targetSpecs() []targetSpec {
	var ts []targetSpec
	wb := policyRowName(writeBackPolicy)
	g := "write-back vs librbd journaling, default configuration (issue 15)"
	for _, t := range []struct {
		job string
		min float64
	}{{job4KQD1, 1.0}, {job4KQD16, 1.5}, {job64K, 1.5}, {jobReadQ16, 1.0}} {
		ts = append(ts, targetSpec{Group: g, Name: "ceph " + t.job, Min: t.min, Unit: "×",
			value: ratioOf(wb, "ceph", anchorName, "ceph", t.job)})
	}
	g = "durable policies vs librbd journaling with rbd_cache=false (issue 15)"
	for _, p := range durablePolicies {
		for _, t := range []struct {
			job string
			min float64
		}{{job4KQD1, 1.2}, {job4KQD16, 1.5}, {job64K, 1.5}} {
			ts = append(ts, targetSpec{Group: g, Name: "ceph ack " + p + ", " + t.job, Min: t.min, Unit: "×",
				value: ratioOf(policyRowName(p), "ceph", librbdNoCacheName, "ceph", t.job)})
		}
	}
	g = "our write-back within 30% of our unjournaled path (issue 15)"
	for _, b := range []string{"ceph", "local"} {
		for _, j := range []string{job4KQD1, job4KQD16, job64K, job1M, jobReadQ16} {
			ts = append(ts, targetSpec{Group: g, Name: b + " " + j, Min: 0.7, Unit: "×",
				value: ratioOf(wb, b, unjournaledName, b, j)})
		}
	}
	g = "metadata journal mode (issue 18)"
	for _, b := range []string{"ceph", "local"} {
		for _, j := range []string{job64K, job1M} {
			ts = append(ts,
				targetSpec{Group: g, Name: b + " " + j + " vs our unjournaled", Min: 0.9, Unit: "×",
					value: ratioOf(metadataName, b, unjournaledName, b, j)},
				targetSpec{Group: g, Name: b + " " + j + " vs full journal (ack " + metadataPolicy + ")", Min: 1.5, Unit: "×",
					value: ratioOf(metadataName, b, policyRowName(metadataPolicy), b, j)})
		}
	}
	g = "50 volumes served by one process (issue 15)"
	for _, b := range []string{"ceph", "local"} {
		ts = append(ts,
			targetSpec{Group: g, Name: b + " peak RSS (highest over the jobs)", Max: 1024, Unit: "MiB",
				value: manyFigure(b, 50, true, func(m manyResult) float64 { return m.PeakRSSMiB })},
			targetSpec{Group: g, Name: b + " slowest volume / fastest (lowest over the jobs)", Min: 0.5, Unit: "×",
				value: manyFigure(b, 50, false, func(m manyResult) float64 { return m.SlowestToFastest })})
	}
	return ts
}
