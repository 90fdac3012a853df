package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

type report struct {
	Machine   string   `json:"machine"`
	Started   string   `json:"started"`
	Rate      int      `json:"writes_per_second"`
	Restarts  int      `json:"restarts_per_kind"`
	AckPolicy string   `json:"ack_policy"`
	Rows      []row    `json:"rows"`
	Notes     []string `json:"notes,omitempty"`
}

// row is one backend and kind of restart. Durations in milliseconds.
type row struct {
	Backend  string `json:"backend"`
	Kind     string `json:"kind"` // kill (SIGKILL) or term (SIGTERM, planned)
	Restarts int    `json:"restarts"`
	Writes   int    `json:"writes"`
	Errors   int    `json:"io_errors"`
	Lost     int    `json:"lost_blocks"` // blocks not holding their last acknowledged write (both kinds: one read-back at the end)

	BaseP50 float64 `json:"baseline_p50_ms"`
	BaseP99 float64 `json:"baseline_p99_ms"`
	BaseMax float64 `json:"baseline_max_ms"`
	P50     float64 `json:"p50_ms"`
	P99     float64 `json:"p99_ms"`
	// Max is the longest write of the phase: the pause a pod saw.
	Max         float64 `json:"max_ms"`
	PauseMedian float64 `json:"pause_median_ms"` // the median over restarts of the longest write overlapping each
	Target      float64 `json:"target_ms"`
	Met         bool    `json:"target_met"`

	// Where a handover's time went (means over the restarts; GapMax the
	// longest): signal until the child exited, the successor's exec,
	// cluster connection, open (lock takeover, fencing after a kill, journal
	// replay) and adoption (holder, NOTIFY_RESEND).
	Stop     float64   `json:"stop_mean_ms"`
	Handoff  float64   `json:"handoff_mean_ms,omitempty"`
	Close    float64   `json:"close_mean_ms,omitempty"`
	Exec     float64   `json:"exec_mean_ms"`
	Connect  float64   `json:"connect_mean_ms"`
	Open     float64   `json:"open_mean_ms"`
	Replay   float64   `json:"replay_mean_ms"` // the part of Open that replayed the journal
	Adopt    float64   `json:"adopt_mean_ms"`
	Gap      float64   `json:"gap_mean_ms"`
	GapMax   float64   `json:"gap_max_ms"`
	Replayed float64   `json:"replayed_entries_mean"`
	Each     []restart `json:"restarts_detail"`
}

func msf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// pct is the p-th percentile (nearest rank) of ds.
func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p/100*float64(len(s))+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

func mean(rs []restart, f func(restart) time.Duration) float64 {
	if len(rs) == 0 {
		return 0
	}
	var sum time.Duration
	for _, r := range rs {
		sum += f(r)
	}
	return msf(sum / time.Duration(len(rs)))
}

func summarize(backend, kind string, base, lats []time.Duration, rs []restart, lost, errs int, target time.Duration) row {
	r := row{
		Backend: backend, Kind: kind, Restarts: len(rs), Writes: len(lats), Errors: errs, Lost: lost,
		BaseP50: msf(pct(base, 50)), BaseP99: msf(pct(base, 99)), BaseMax: msf(pct(base, 100)),
		P50: msf(pct(lats, 50)), P99: msf(pct(lats, 99)), Max: msf(pct(lats, 100)),
		Target: msf(target), Each: rs,
	}
	var pauses []time.Duration
	var gapMax time.Duration
	var replayed int
	for _, x := range rs {
		pauses = append(pauses, x.Pause)
		gapMax = max(gapMax, x.Gap)
		replayed += x.Replayed
	}
	r.PauseMedian = msf(pct(pauses, 50))
	r.Met = target > 0 && r.Max <= msf(target) && errs == 0 && lost == 0
	r.Stop = mean(rs, func(x restart) time.Duration { return x.Stop })
	if kind == "term" {
		r.Handoff = mean(rs, func(x restart) time.Duration { return x.Handoff })
		r.Close = mean(rs, func(x restart) time.Duration { return x.Close })
	}
	r.Exec = mean(rs, func(x restart) time.Duration { return x.Exec })
	r.Connect = mean(rs, func(x restart) time.Duration { return x.Connect })
	r.Open = mean(rs, func(x restart) time.Duration { return x.Open })
	r.Replay = mean(rs, func(x restart) time.Duration { return x.Replay })
	r.Adopt = mean(rs, func(x restart) time.Duration { return x.Adopt })
	r.Gap = mean(rs, func(x restart) time.Duration { return x.Gap })
	r.GapMax = msf(gapMax)
	if len(rs) > 0 {
		r.Replayed = float64(replayed) / float64(len(rs))
	}
	return r
}

func kindName(k string) string {
	if k == "kill" {
		return "kill -9"
	}
	return "SIGTERM (planned)"
}

func markdown(rep *report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Handover pause (make bench-handover)\n\n")
	fmt.Fprintf(&b, "%s; started %s. One writer: 4 KiB O_DIRECT write + fdatasync on the loop device, %d/s, one at a time; "+
		"%d restarts of the serving process per kind; ack policy %s. The pause a pod sees is the longest write of the phase; "+
		"p99 is over every write of the phase (a restart every 0.2–0.6 s after the successor serves), the baseline over the writes before the first restart.\n\n",
		rep.Machine, rep.Started, rep.Rate, rep.Restarts, rep.AckPolicy)
	b.WriteString("| backend | restart | writes | I/O errors | lost | baseline p50 / p99 | p50 / p99 | longest write (pause) | median pause | target | met |\n")
	b.WriteString("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n")
	for _, r := range rep.Rows {
		met := "yes"
		if !r.Met {
			met = "**no**"
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %d | %.1f / %.1f ms | %.1f / %.1f ms | **%.0f ms** | %.0f ms | ≤ %.0f ms | %s |\n",
			r.Backend, kindName(r.Kind), r.Writes, r.Errors, r.Lost, r.BaseP50, r.BaseP99, r.P50, r.P99, r.Max, r.PauseMedian, r.Target, met)
	}
	b.WriteString("\nWhere a handover's time goes (means; stop: signal until the process exited — for SIGTERM the handoff, then drain/commit/unlock; " +
		"exec: the successor's start until its main; open: lock takeover, fencing after a kill, journal replay; adopt: holder, NOTIFY_RESEND; gap: signal until the successor serves):\n\n")
	b.WriteString("| backend | restart | stop | (handoff + close) | exec | connect | open | (of which replay: entries, time) | adopt | gap (mean / max) |\n")
	b.WriteString("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range rep.Rows {
		hc := "–"
		if r.Kind == "term" {
			hc = fmt.Sprintf("%.0f + %.0f ms", r.Handoff, r.Close)
		}
		fmt.Fprintf(&b, "| %s | %s | %.0f ms | %s | %.0f ms | %.0f ms | %.0f ms | %.0f, %.0f ms | %.0f ms | %.0f / %.0f ms |\n",
			r.Backend, kindName(r.Kind), r.Stop, hc, r.Exec, r.Connect, r.Open, r.Replayed, r.Replay, r.Adopt, r.Gap, r.GapMax)
	}
	for _, n := range rep.Notes {
		fmt.Fprintf(&b, "\nNote: %s\n", n)
	}
	return b.String()
}
