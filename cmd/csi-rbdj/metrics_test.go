package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// TestServeMetricsBindFailure: a metrics address that cannot be bound
// fails `serve` at startup with an error naming the flag.
func TestServeMetricsBindFailure(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	c := serveConfig{mode: "all", backend: "local", localDir: filepath.Join(dir, "cluster"), clusterID: "default",
		stateDir: filepath.Join(dir, "state"), nodeID: "n", endpoint: "unix://" + filepath.Join(dir, "csi.sock"),
		metricsAddress: busy.Addr().String()}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = serve(ctx, c)
	if err == nil || !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "--metrics-address") {
		t.Fatalf("serve with a taken metrics address: %v", err)
	}
	if _, serr := os.Stat(filepath.Join(dir, "csi.sock")); serr == nil {
		t.Error("serve created its CSI socket although it failed to start")
	}
}

// scrape returns the metric families the endpoint serves.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// sample returns the value of the series of name with the given labels
// (a histogram's sample count), or -1 if there is none.
func sample(mfs map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	mf := mfs[name]
	if mf == nil {
		return -1
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
next:
	for _, m := range mf.Metric {
		n := 0
		for _, l := range m.Label {
			if v, ok := want[l.GetName()]; ok {
				if v != l.GetValue() {
					continue next
				}
				n++
			}
		}
		if n != len(want) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return -1
}

// serveInProcess runs serve with c in a goroutine. The returned stop
// cancels it and waits (at most timeout) for it to return, without error.
func serveInProcess(t *testing.T, c serveConfig, timeout time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, c) }()
	return func() {
		t.Helper()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(timeout):
			t.Errorf("serve did not stop in %v", timeout)
		}
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestServeMetrics runs `serve --mode all --metrics-address` in process,
// stages a Block volume, writes to it through the kernel and checks what a
// scrape shows: the volume's write counters and histograms move, its
// journal lag returns to 0, the CSI calls and the backend connection are
// counted, and the volume's series go when it is unstaged.
func TestServeMetrics(t *testing.T) {
	kerneltest.RequireRoot(t)
	dir := t.TempDir()
	maddr := freePort(t)
	c := serveConfig{mode: "all", backend: "local", localDir: filepath.Join(dir, "cluster"), clusterID: "default", noSync: true,
		stateDir: filepath.Join(dir, "state"), nodeID: "test-node", endpoint: "unix://" + filepath.Join(dir, "csi.sock"),
		driverName: "rbdj.csi-rbdj.dev", requestTimeout: 20 * time.Second, metricsAddress: maddr}
	stop := serveInProcess(t, c, 2*time.Minute)
	t.Cleanup(func() {
		stop()
		if l, err := net.Listen("tcp", maddr); err != nil {
			t.Errorf("metrics address still bound after serve returned: %v", err)
		} else {
			l.Close()
		}
		waitNoLoops(t, dir)
	})
	ctx := context.Background()
	cc, err := dial(filepath.Join(dir, "csi.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctrl, node, ident := csi.NewControllerClient(cc), csi.NewNodeClient(cc), csi.NewIdentityClient(cc)
	if err := probeUntilReady(ctx, ident, nil, time.Minute); err != nil {
		t.Fatalf("plugin: %v", err)
	}

	vc := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	vol, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "metrics", VolumeCapabilities: []*csi.VolumeCapability{vc},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}, Parameters: map[string]string{"ackPolicy": "journaled"}})
	if err != nil {
		t.Fatal(err)
	}
	id := vol.GetVolume().GetVolumeId()
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "pods", "a", "dev")
	if err := os.Mkdir(staging, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: vc,
		VolumeContext: vol.GetVolume().GetVolumeContext()}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc}); err != nil {
		t.Fatal(err)
	}
	before := scrape(t, maddr)
	if got := sample(before, "csi_rbdj_volume_state", "volume_id", id, "state", "serving"); got != 1 {
		t.Errorf("volume state serving = %v, want 1", got)
	}
	writesBefore := sample(before, "csi_rbdj_volume_requests_total", "volume_id", id, "op", "write")

	data := make([]byte, 1<<20)
	rand.Read(data)
	f, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, 3<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()

	after := scrape(t, maddr)
	vl := []string{"volume_id", id}
	for _, c := range []struct {
		name   string
		labels []string
		min    float64
	}{
		{"csi_rbdj_volume_requests_total", []string{"op", "write"}, writesBefore + 1},
		{"csi_rbdj_volume_request_bytes_total", []string{"op", "write"}, 1 << 20},
		{"csi_rbdj_volume_requests_total", []string{"op", "flush"}, 1},
		{"csi_rbdj_volume_ack_duration_seconds", []string{"op", "write"}, 1},
		{"csi_rbdj_volume_journal_append_duration_seconds", nil, 1},
		{"csi_rbdj_volume_flush_duration_seconds", nil, 1},
		{"csi_rbdj_volume_journal_entries_total", nil, 1},
		{"csi_rbdj_volume_lock_state", []string{"state", "held"}, 1},
		{"csi_rbdj_node_volumes_served", nil, 1},
		{"csi_rbdj_csi_calls_total", []string{"method", "NodeStageVolume", "code", "OK"}, 1},
		{"csi_rbdj_csi_calls_total", []string{"method", "CreateVolume", "code", "OK"}, 1},
		{"csi_rbdj_csi_call_duration_seconds", []string{"method", "NodePublishVolume", "code", "OK"}, 1},
		{"csi_rbdj_backend_connections", []string{"cluster", "default", "state", "connected"}, 1},
	} {
		labels := c.labels
		if strings.HasPrefix(c.name, "csi_rbdj_volume_") {
			labels = append(append([]string(nil), vl...), labels...)
		}
		if got := sample(after, c.name, labels...); got < c.min {
			t.Errorf("%s%v = %v, want >= %v", c.name, labels, got, c.min)
		}
	}
	// Everything written gets applied and committed: our lag returns to 0.
	deadline := time.Now().Add(30 * time.Second)
	for {
		m := scrape(t, maddr)
		e := sample(m, "csi_rbdj_volume_journal_lag_entries", "volume_id", id, "own", "true")
		b := sample(m, "csi_rbdj_volume_journal_lag_bytes", "volume_id", id, "own", "true")
		if e == 0 && b == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("journal lag still %v entries, %v bytes", e, b)
		}
		time.Sleep(100 * time.Millisecond)
	}

	if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	gone := scrape(t, maddr)
	for name, mf := range gone {
		for _, m := range mf.Metric {
			for _, l := range m.Label {
				if l.GetName() == "volume_id" {
					t.Errorf("series %s%v left after unstage", name, fmt.Sprint(m.Label))
				}
			}
		}
	}
	if got := sample(gone, "csi_rbdj_node_volumes_served"); got != 0 {
		t.Errorf("volumes served after unstage = %v", got)
	}
	if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
}
