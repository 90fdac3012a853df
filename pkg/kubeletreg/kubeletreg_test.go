package kubeletreg

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// dial connects to the registration socket the way the kubelet's plugin watcher does.
func dial(t *testing.T, path string) registerapi.RegistrationClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return registerapi.NewRegistrationClient(conn)
}

func TestRegistration(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "plugins_registry")
	// A stale socket file of a killed plugin is replaced.
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(SocketPath(dir, "rbdj.csi-rbdj.dev"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Listen(Options{DriverName: "rbdj.csi-rbdj.dev", Endpoint: "/var/lib/kubelet/plugins/rbdj.csi-rbdj.dev/csi.sock", Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	if want := filepath.Join(dir, "rbdj.csi-rbdj.dev-reg.sock"); s.Path() != want {
		t.Fatalf("socket %s, want %s", s.Path(), want)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := dial(t, s.Path())
	info, err := c.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != registerapi.CSIPlugin || info.Name != "rbdj.csi-rbdj.dev" ||
		info.Endpoint != "/var/lib/kubelet/plugins/rbdj.csi-rbdj.dev/csi.sock" ||
		!slices.Equal(info.SupportedVersions, []string{"1.0.0"}) {
		t.Fatalf("GetInfo = %+v", info)
	}
	if st := s.Status(); st.Notified {
		t.Fatalf("status before any notification: %+v", st)
	}
	if _, err := c.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: "no NodeGetInfo"}); err != nil {
		t.Fatal(err)
	}
	if st := s.Status(); st != (Status{Notified: true, Error: "no NodeGetInfo"}) {
		t.Fatalf("status after refusal: %+v", st)
	}
	if _, err := c.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	if st := s.Status(); st != (Status{Notified: true, Registered: true}) {
		t.Fatalf("status after registration: %+v", st)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve after Close: %v", err)
	}
	if _, err := os.Stat(s.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket still there after Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestListenValidates(t *testing.T) {
	dir := t.TempDir()
	for _, o := range []Options{
		{Endpoint: "/csi.sock", Dir: dir},
		{DriverName: "d", Endpoint: "csi.sock", Dir: dir},
		{DriverName: "d", Endpoint: "/csi.sock"},
	} {
		if s, err := Listen(o); err == nil {
			s.Close()
			t.Errorf("Listen(%+v) succeeded", o)
		}
	}
}
