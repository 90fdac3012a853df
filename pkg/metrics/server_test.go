package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/testwait"
	"github.com/prometheus/client_golang/prometheus"
)

// TestServer scrapes the endpoint over HTTP and shuts it down with its
// context: the address is released.
func TestServer(t *testing.T) {
	reg := NewRegistry()
	calls := NewCSICalls()
	reg.MustRegister(calls)
	calls.calls.WithLabelValues("Probe", "OK").Inc()
	s, err := Listen("127.0.0.1:0", reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()

	url := "http://" + s.Addr().String()
	for _, tc := range []struct {
		path   string
		status int
		want   []string
	}{
		{Path, http.StatusOK, []string{`csi_rbdj_csi_calls_total{code="OK",method="Probe"} 1`, "go_goroutines", "process_open_fds"}},
		{"/", http.StatusOK, []string{"/metrics"}},
		{"/nope", http.StatusNotFound, nil},
	} {
		resp, err := http.Get(url + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != tc.status {
			t.Errorf("GET %s: %s, want %d", tc.path, resp.Status, tc.status)
		}
		for _, w := range tc.want {
			if !strings.Contains(string(body), w) {
				t.Errorf("GET %s: no %q in\n%s", tc.path, w, body)
			}
		}
	}

	cancel()
	if err := testwait.Recv(t, done, 10*time.Second, "Serve to return after its context ended"); err != nil {
		t.Fatalf("Serve after cancel: %v", err)
	}
	// The address is free again.
	l, err := net.Listen("tcp", s.Addr().String())
	if err != nil {
		t.Fatalf("address still bound after shutdown: %v", err)
	}
	l.Close()
}

// TestListenErrors: an address that cannot be bound is an error naming it
// and the flag.
func TestListenErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, tc := range []struct {
		name, addr string
		is         error
		want       string
	}{
		{"in use", busy.Addr().String(), syscall.EADDRINUSE, "address already in use"},
		{"no port", "127.0.0.1", nil, "missing port"},
		{"bad host", "256.0.0.1:9810", nil, "256.0.0.1"},
		{"empty", "", nil, "empty listen address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Listen(tc.addr, prometheus.NewRegistry())
			if err == nil {
				s.Close()
				t.Fatalf("Listen(%q) succeeded", tc.addr)
			}
			if !strings.Contains(err.Error(), tc.want) || tc.addr != "" && !strings.Contains(err.Error(), "--metrics-address") {
				t.Errorf("error %q does not say %q and name the flag", err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
		})
	}
}

// TestServerClose: a server that never served releases its address.
func TestServerClose(t *testing.T) {
	s, err := Listen("127.0.0.1:0", prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	addr := s.Addr().String()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("address still bound after Close: %v", err)
	}
	l.Close()
}
