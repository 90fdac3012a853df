package main

import (
	"strings"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
)

// metadataName is the row of our device in journalMode metadata (data
// written in place, only its extent logged; issue 18).
const metadataName = "ours, metadata journal"

// metadataPolicy is the ack policy of the metadata journal rows (the
// zero AckPolicy), compared with the full journal row of the same policy.
const metadataPolicy = "applied"

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
