package main

import (
	"math"
	"strings"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
)

// metadataName is the row of our device in journalMode metadata (data
// written in place, only its extent logged; issue 18).
const metadataName = "ours, metadata journal"

// featuresFor is the image features a device configuration needs on the
// local backend (0: pkg/image's default, with librbd journaling).
func featuresFor(bo blockdev.Options) uint64 {
	if bo.JournalMode == blockdev.JournalMetadata {
		return clsrbd.FeatureLayering | clsrbd.FeatureExclusiveLock
	}
	return 0
}

// selectJobs keeps the jobs whose name contains one of the comma-separated
// substrings.
func selectJobs(all []job, filter string) []job {
	var out []job
	for _, j := range all {
		for _, p := range strings.Split(filter, ",") {
			if p != "" && strings.Contains(j.Name, p) {
				out = append(out, j)
				break
			}
		}
	}
	return out
}

// metadataRatios adds the issue 18 targets: metadata mode against our
// unjournaled path (target ≥ 0.9) and against full journaling (target
// ≥ 1.5) at 64K and 1M sequential writes, per backend.
// It also drops the ratios -jobs left without figures (NaN, Inf).
func metadataRatios(rep *report, out map[string]any) {
	for k, v := range out {
		if f, ok := v.(float64); ok && (math.IsNaN(f) || math.IsInf(f, 0)) {
			delete(out, k)
		}
	}
	for _, backend := range []string{"local", "ceph"} {
		m := find(rep, metadataName, backend)
		if m == nil {
			continue
		}
		for _, jn := range []string{"64K seqwrite QD4", "1M seqwrite QD4"} {
			v, ok := m.Values[jn]
			if !ok {
				continue
			}
			if off := find(rep, "ours, journaling off", backend); off != nil && off.Values[jn] > 0 {
				out[backend+" metadata journal: "+jn+" vs our unjournaled"] = v / off.Values[jn]
			}
			for _, policy := range []string{"ack after apply", "ack after journal"} {
				if full := find(rep, "ours, journaled, "+policy, backend); full != nil && full.Values[jn] > 0 {
					out[backend+" metadata journal: "+jn+" vs full journaling, "+policy] = v / full.Values[jn]
				}
			}
		}
	}
}
