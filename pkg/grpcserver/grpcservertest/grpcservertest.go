// Package grpcservertest serves a gRPC server in a test: on a listener,
// with a client connection to it, stopped at the end of the test.
package grpcservertest

import (
	"context"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Serve runs serve on the unix socket listener l until the end of the test
// (its context is then cancelled, and serve must return nil) and returns a
// client connection to it.
func Serve(t testing.TB, l net.Listener, serve func(ctx context.Context, l net.Listener) error) *grpc.ClientConn {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, l) }()
	conn, err := grpc.NewClient("unix://"+l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		cancel()
		<-done
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return conn
}
