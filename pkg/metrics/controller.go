package metrics

import (
	"context"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// CSICalls counts the CSI calls a plugin serves, by method and gRPC status
// code, and times them. Register it, and install Interceptor as the
// outermost unary interceptor so that it sees the codes clients see.
type CSICalls struct {
	calls    *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewCSICalls returns the CSI call metrics.
func NewCSICalls() *CSICalls {
	return &CSICalls{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "csi", Name: "calls_total",
			Help: "CSI calls served, by method (e.g. CreateVolume, NodeStageVolume) and gRPC status code (OK, InvalidArgument, ...).",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "csi", Name: "call_duration_seconds",
			Help:    "Latency of the CSI calls served, by method and gRPC status code.",
			Buckets: callBuckets,
		}, []string{"method", "code"}),
	}
}

// Interceptor is a gRPC unary server interceptor that records each call.
func (c *CSICalls) Interceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	// The method set is the CSI services': bounded.
	method := info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:]
	code := status.Code(err).String()
	c.calls.WithLabelValues(method, code).Inc()
	c.duration.WithLabelValues(method, code).Observe(time.Since(start).Seconds())
	return resp, err
}

// Describe implements prometheus.Collector.
func (c *CSICalls) Describe(ch chan<- *prometheus.Desc) {
	c.calls.Describe(ch)
	c.duration.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *CSICalls) Collect(ch chan<- prometheus.Metric) {
	c.calls.Collect(ch)
	c.duration.Collect(ch)
}

// ConnectionCount is how many connections a backend holds to one cluster
// in one state.
type ConnectionCount struct {
	Cluster string
	// State is e.g. connecting, connected or retired (fenced, kept until
	// the devices still on it are closed).
	State string
	Count int
}

// Backend reports a storage backend's connections by cluster and state.
type Backend struct {
	conns func() []ConnectionCount
	desc  *prometheus.Desc
}

// NewBackend returns the collector of the connections conns reports
// (called at every scrape; it must not block).
func NewBackend(conns func() []ConnectionCount) *Backend {
	return &Backend{conns: conns, desc: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "backend", "connections"),
		"Connections the plugin's storage backend holds, by cluster id and state (connecting, connected, retired: dropped after this client was fenced, closed at shutdown).",
		[]string{"cluster", labelState}, nil)}
}

// Describe implements prometheus.Collector.
func (b *Backend) Describe(ch chan<- *prometheus.Desc) { ch <- b.desc }

// Collect implements prometheus.Collector.
func (b *Backend) Collect(ch chan<- prometheus.Metric) {
	// Sum duplicates: a backend may list one connection per credentials.
	sum := map[[2]string]int{}
	for _, c := range b.conns() {
		sum[[2]string{c.Cluster, c.State}] += c.Count
	}
	keys := make([][2]string, 0, len(sum))
	for k := range sum {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i][0] < keys[j][0] || keys[i][0] == keys[j][0] && keys[i][1] < keys[j][1]
	})
	for _, k := range keys {
		ch <- prometheus.MustNewConstMetric(b.desc, prometheus.GaugeValue, float64(sum[k]), k[0], k[1])
	}
}
