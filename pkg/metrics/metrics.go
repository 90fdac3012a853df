// Package metrics is csi-rbdj's Prometheus endpoint: the registry, the
// collectors of the node plugin (one set of series per volume this node
// serves, read from the journaled devices' own counters) and of the
// controller (CSI calls, backend connections), and the HTTP server.
//
// The lower layers (blockdev, journal, exclusivelock) do not depend on
// Prometheus: they keep lock-free counters that the collectors read at
// scrape time (blockdev.Device.Stats, journal.Journaler.Lag and Stats,
// exclusivelock.Lock.Stats), and report latencies through
// blockdev.Observer, which this package implements with histograms.
//
// Every metric is named csi_rbdj_*; README.md ("Metrics") lists them. No
// label carries a secret: volumes are labelled by their CSI volume id,
// journal clients by their journal client id.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Namespace prefixes every metric name.
const Namespace = "csi_rbdj"

// NewRegistry returns a registry with the Go runtime and process
// collectors; the plugin adds its own collectors to it.
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// latencyBuckets span 100 µs to about 6.5 s: a journaled write on a
// quiet cluster takes a millisecond or two, one stuck behind a recovering
// OSD seconds.
var latencyBuckets = prometheus.ExponentialBuckets(0.0001, 2, 17)

// callBuckets span 1 ms to about 4 minutes: CSI calls range from a Probe
// to formatting a large volume.
var callBuckets = prometheus.ExponentialBuckets(0.001, 4, 10)
