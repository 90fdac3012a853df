package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"
)

// Path is where the server exposes the metrics.
const Path = "/metrics"

// shutdownTimeout bounds a graceful shutdown: scrapes are short.
const shutdownTimeout = 5 * time.Second

// Server serves the metrics of a registry over HTTP.
type Server struct {
	l      net.Listener
	srv    *http.Server
	errLog *errorLog
}

// Listen binds addr (host:port; ":9810" for every interface) now, so that
// an address that cannot be bound is an error at startup rather than a
// log line later. Serve serves on it.
func Listen(addr string, g prometheus.Gatherer) (*Server, error) {
	if addr == "" {
		return nil, errors.New("metrics: empty listen address")
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %q (--metrics-address): %w", addr, err)
	}
	el := &errorLog{}
	mux := http.NewServeMux()
	mux.Handle(Path, promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorHandling:       promhttp.ContinueOnError,
		ErrorLog:            el,
		MaxRequestsInFlight: 4,
		Timeout:             30 * time.Second,
	}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, "csi-rbdj metrics: %s\n", Path)
	})
	return &Server{l: l, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, errLog: el}, nil
}

// Addr is the bound address (the port chosen for ":0").
func (s *Server) Addr() net.Addr { return s.l.Addr() }

// Serve serves until ctx ends, then shuts down gracefully (scrapes in
// flight get a few seconds). It returns nil after a shutdown, or why
// serving failed.
func (s *Server) Serve(ctx context.Context) error {
	s.errLog.log = klog.FromContext(ctx) // set before the first scrape can run
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.l) }() // ends with Shutdown/Close below
	klog.FromContext(ctx).Info("Serving metrics", "address", s.l.Addr().String(), "path", Path)
	select {
	case err := <-errc:
		return fmt.Errorf("metrics: serve on %s: %w", s.l.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	err := s.srv.Shutdown(sctx)
	if err != nil {
		_ = s.srv.Close()
	}
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("metrics: shut down: %w", err)
	}
	return nil
}

// Close stops the server at once and releases the bound address (for a
// server that will not Serve, e.g. when startup fails later).
func (s *Server) Close() error {
	err := s.srv.Close()
	if lerr := s.l.Close(); lerr != nil && !errors.Is(lerr, net.ErrClosed) && err == nil {
		err = lerr
	}
	return err
}

// errorLog sends promhttp's errors (a collector that failed) to the logger
// of Serve's context.
type errorLog struct{ log klog.Logger }

func (e *errorLog) Println(v ...any) {
	e.log.Error(nil, "Metrics collection error", "err", fmt.Sprint(v...))
}
