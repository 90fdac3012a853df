// Package grpcserver is the serving plumbing the CSI server (pkg/driver)
// and the csi-addons server (pkg/csiaddons) share: a gRPC server that
// serves until its context ends and then stops gracefully within a bound,
// the interceptor that logs every call (never the request: it may carry
// secrets), and the per-key try-locks that make a concurrent second
// operation on one volume fail with Aborted, which the caller retries.
package grpcserver

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// stopGrace is how long Stop lets in-flight calls finish.
const stopGrace = 10 * time.Second

// Server serves one grpc.Server and stops it.
type Server struct {
	mu  sync.Mutex
	srv *grpc.Server
}

// Use makes srv the server that Serve serves and Stop stops; call it
// before Serve.
func (s *Server) Use(srv *grpc.Server) {
	s.mu.Lock()
	s.srv = srv
	s.mu.Unlock()
}

// Serve serves the server given to Use on l until ctx is done or Stop is
// called; then it stops gracefully (bounded by 10 s, then forcibly).
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return errors.New("grpcserver: Serve before Use")
	}
	done := make(chan struct{})
	defer close(done)
	go func() { // owned by Serve: ends when Serve returns
		select {
		case <-ctx.Done():
			s.Stop()
		case <-done:
		}
	}()
	err := srv.Serve(l)
	if errors.Is(err, grpc.ErrServerStopped) {
		err = nil
	}
	return err
}

// Stop stops serving: in-flight calls get 10 s to finish.
func (s *Server) Stop() {
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return
	}
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(stopGrace):
		srv.Stop()
		<-stopped
	}
}

// CallLog is how LogCalls logs: the messages of a call that failed and of
// one that succeeded, the methods logged at V(5) (the others at V(2)), and
// the key/value pairs naming what a request is about.
type CallLog struct {
	Failed, Succeeded string
	Quiet             []string
	Keys              func(req any) []any
}

// LogCalls returns an interceptor that logs each call as l says, with its
// method and duration (never the request itself: it may carry secrets),
// and turns plain errors into Internal ones.
func LogCalls(l CallLog) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		logger := klog.FromContext(ctx)
		resp, err := handler(ctx, req)
		method := info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:]
		kv := append([]any{"method", method, "duration", time.Since(start).Round(time.Microsecond)}, l.Keys(req)...)
		if err != nil {
			if _, ok := status.FromError(err); !ok {
				err = status.Error(codes.Internal, err.Error())
			}
			logger.Info(l.Failed, append(kv, "code", status.Code(err), "err", status.Convert(err).Message())...)
			return resp, err
		}
		v := 2
		if slices.Contains(l.Quiet, method) {
			v = 5
		}
		logger.V(v).Info(l.Succeeded, kv...)
		return resp, nil
	}
}

// KeyLocks gives one lock per key, taken without waiting.
type KeyLocks struct {
	mu   sync.Mutex
	held map[string]bool
}

// TryLock takes key or returns false if it is held.
func (l *KeyLocks) TryLock(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held == nil {
		l.held = map[string]bool{}
	}
	if l.held[key] {
		return false
	}
	l.held[key] = true
	return true
}

// Unlock releases key.
func (l *KeyLocks) Unlock(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.held, key)
}
