package main

import (
	"context"
	"sync"

	"github.com/csi-rbdj/csi-rbdj/pkg/metrics"
	"github.com/csi-rbdj/csi-rbdj/pkg/nodeserver"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"k8s.io/klog/v2"
)

// pluginMetrics is the metrics endpoint of `serve`. A nil one
// (--metrics-address is empty) does nothing.
type pluginMetrics struct {
	reg   *prometheus.Registry
	srv   *metrics.Server
	node  *metrics.Node
	calls *metrics.CSICalls

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// newPluginMetrics binds addr (nil, nil if addr is empty): a bad or taken
// address is a startup error.
func newPluginMetrics(addr string) (*pluginMetrics, error) {
	if addr == "" {
		return nil, nil
	}
	m := &pluginMetrics{reg: metrics.NewRegistry(), node: metrics.NewNode(), calls: metrics.NewCSICalls()}
	m.reg.MustRegister(m.node, m.calls)
	srv, err := metrics.Listen(addr, m.reg)
	if err != nil {
		return nil, err
	}
	m.srv = srv
	return m, nil
}

// start adds the backend's connections and serves until stop (or ctx
// ends: the endpoint then stays up until stop, through the shutdown).
func (m *pluginMetrics) start(ctx context.Context, b storage.Backend) {
	if m == nil {
		return
	}
	if r, ok := b.(storage.ConnectionReporter); ok {
		m.reg.MustRegister(metrics.NewBackend(func() []metrics.ConnectionCount {
			var out []metrics.ConnectionCount
			for _, c := range r.Connections() {
				out = append(out, metrics.ConnectionCount{Cluster: c.Cluster, State: c.State, Count: c.Count})
			}
			return out
		}))
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m.cancel = cancel
	m.wg.Add(1)
	go func() { // owned by m: stop waits for it
		defer m.wg.Done()
		if err := m.srv.Serve(sctx); err != nil {
			klog.FromContext(sctx).Error(err, "Metrics server failed")
		}
	}()
}

// stop shuts the endpoint down (gracefully, bounded).
func (m *pluginMetrics) stop() {
	if m == nil {
		return
	}
	if m.cancel == nil {
		_ = m.srv.Close()
		return
	}
	m.cancel()
	m.wg.Wait()
}

// volumes is what the node server tells which volumes it serves.
// The node collector also reports handovers (adopted FUSE connections).
var _ nodeserver.HandoverMetrics = (*metrics.Node)(nil)

func (m *pluginMetrics) volumes() nodeserver.VolumeMetrics {
	if m == nil {
		return nil
	}
	return m.node
}

// interceptors are the driver's extra gRPC interceptors.
func (m *pluginMetrics) interceptors() []grpc.UnaryServerInterceptor {
	if m == nil {
		return nil
	}
	return []grpc.UnaryServerInterceptor{m.calls.Interceptor}
}
