package main

import (
	"fmt"
	"strings"
)

// anchorName is the block path a user would pick instead of ours.
const anchorName = "librbd, journaling (fio rbd engine)"

// librbdNoCacheName is librbd with the durability contract of our device:
// a write is acknowledged once its journal entry is safe.
const librbdNoCacheName = "librbd, journaling, rbd_cache off (fio rbd engine)"

// anchor returns the anchor's results, or nil when it was not measured.
func anchor(rep *report) *result {
	for i := range rep.Results {
		if rep.Results[i].Target == anchorName {
			return &rep.Results[i]
		}
	}
	return nil
}

func find(rep *report, name, backend string) *result {
	for i := range rep.Results {
		if r := &rep.Results[i]; r.Target == name && r.Backend == backend {
			return r
		}
	}
	return nil
}

// ratios are the figures issue 8's targets are stated in.
func ratios(rep *report) map[string]any {
	out := map[string]any{}
	a := anchor(rep)
	for _, policy := range []string{"ack after apply", "ack after journal"} {
		ours := find(rep, "ours, journaled, "+policy, "ceph")
		if ours == nil {
			continue
		}
		if a != nil {
			out["ceph "+policy+": 4K randwrite QD16 vs librbd journaling"] = ours.Values["4K randwrite QD16"] / a.Values["4K randwrite QD16"]
			out["ceph "+policy+": 64K seqwrite QD4 vs librbd journaling"] = ours.Values["64K seqwrite QD4"] / a.Values["64K seqwrite QD4"]
		}
		if nc := find(rep, librbdNoCacheName, "ceph"); nc != nil {
			out["ceph "+policy+": 4K randwrite QD16 vs librbd journaling, cache off"] = ours.Values["4K randwrite QD16"] / nc.Values["4K randwrite QD16"]
			out["ceph "+policy+": 64K seqwrite QD4 vs librbd journaling, cache off"] = ours.Values["64K seqwrite QD4"] / nc.Values["64K seqwrite QD4"]
		}
		if off := find(rep, "ours, journaling off", "ceph"); off != nil {
			out["ceph "+policy+": 4K randwrite QD16 vs our unjournaled"] = ours.Values["4K randwrite QD16"] / off.Values["4K randwrite QD16"]
			out["ceph "+policy+": 4K randwrite QD1 vs our unjournaled"] = ours.Values["4K randwrite QD1"] / off.Values["4K randwrite QD1"]
		}
	}
	metadataRatios(rep, out) // metadata.go
	for _, r := range rep.Replay {
		out[fmt.Sprintf("replay speedup vs librbd (journal splay width %d)", r.SplayWidth)] = r.Speedup
	}
	return out
}

func markdown(rep *report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nMachine: %s. fio %s per job over %s (libaio, direct); `rbd bench` with the same sizes and depths.\n\n", rep.Machine, rep.Runtime, rep.Span)
	a := anchor(rep)
	b.WriteString("| target | backend |")
	for _, j := range jobs {
		fmt.Fprintf(&b, " %s (%s) |", j.Name, j.Metric)
	}
	b.WriteString("\n|---|---|")
	for range jobs {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	for _, r := range rep.Results {
		fmt.Fprintf(&b, "| %s | %s |", r.Target, r.Backend)
		for _, j := range jobs {
			v := r.Values[j.Name]
			if a != nil && a.Values[j.Name] > 0 {
				fmt.Fprintf(&b, " %.0f (%.2f×) |", v, v/a.Values[j.Name])
			} else {
				fmt.Fprintf(&b, " %.0f |", v)
			}
		}
		b.WriteString("\n")
	}
	if a != nil {
		fmt.Fprintf(&b, "\n(×: ratio to the anchor, %s)\n", anchorName)
	}
	for _, r := range rep.Replay {
		fmt.Fprintf(&b, "\nReplay of the same %d MiB uncommitted librbd journal (%d entries, splay width %d): ours %.2f s, librbd %.2f s (lock acquisition) — %.1f× faster.\n",
			r.MB, r.Entries, r.SplayWidth, r.OursSeconds, r.LibrbdSecond, r.Speedup)
	}
	if len(rep.Ratios) > 0 {
		b.WriteString("\nRatios:\n")
		for k, v := range rep.Ratios {
			fmt.Fprintf(&b, "- %s: %.2f\n", k, v)
		}
	}
	for _, n := range rep.Notes {
		fmt.Fprintf(&b, "\nNote: %s\n", n)
	}
	return b.String()
}
