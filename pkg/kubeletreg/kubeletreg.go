// Package kubeletreg registers a CSI driver with the kubelet through the
// kubelet's plugin-registration API (k8s.io/kubelet/pkg/apis/pluginregistration/v1):
// the job of the node-driver-registrar sidecar, done in the node plugin itself.
//
// The kubelet watches its registration directory (<kubelet root>/plugins_registry)
// for sockets. For each one it calls GetInfo, learns the driver's name and its CSI
// endpoint, calls NodeGetInfo on that endpoint, records the driver in the node's
// CSINode object and reports the outcome with NotifyRegistrationStatus. When the
// socket disappears it deregisters the driver.
//
//	reg, err := kubeletreg.Listen(kubeletreg.Options{
//		DriverName: "rbdj.csi-rbdj.dev",
//		Endpoint:   "/var/lib/kubelet/plugins/rbdj.csi-rbdj.dev/csi.sock",
//		Dir:        "/var/lib/kubelet/plugins_registry",
//	})
//	go reg.Serve()
//	defer reg.Close()
package kubeletreg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// SupportedVersions are the CSI versions the plugin offers the kubelet.
var SupportedVersions = []string{"1.0.0"}

// Options configure a registration server.
type Options struct {
	// DriverName is the CSI driver name (the CSIDriver object's name).
	DriverName string
	// Endpoint is the path of the driver's CSI socket as the kubelet sees it
	// (a host path: the kubelet dials it).
	Endpoint string
	// Dir is the kubelet's plugin registration directory.
	Dir string
	// Logger logs the server's events (the kubelet's calls carry no
	// logger of ours); unset, it is klog.Background().
	Logger klog.Logger
}

// Status is the outcome the kubelet reported last.
type Status struct {
	// Notified is false until the kubelet has reported an outcome.
	Notified bool
	// Registered is true when the kubelet accepted the driver.
	Registered bool
	// Error is the kubelet's error message when it did not.
	Error string
}

// Server serves the registration service on <Dir>/<DriverName>-reg.sock.
type Server struct {
	registerapi.UnimplementedRegistrationServer

	o    Options
	log  klog.Logger
	path string
	l    net.Listener
	srv  *grpc.Server

	mu     sync.Mutex
	status Status
	closed bool
}

// SocketPath is the registration socket of driver in dir (node-driver-registrar's name).
func SocketPath(dir, driver string) string {
	return filepath.Join(dir, driver+"-reg.sock")
}

// Listen creates the registration socket, replacing a stale one (a plugin that
// was killed leaves its socket behind). The kubelet notices the new socket and
// starts registering once Serve runs.
func Listen(o Options) (*Server, error) {
	switch {
	case o.DriverName == "":
		return nil, errors.New("kubeletreg: no driver name")
	case o.Endpoint == "" || !filepath.IsAbs(o.Endpoint):
		return nil, fmt.Errorf("kubeletreg: CSI endpoint %q: want an absolute socket path", o.Endpoint)
	case o.Dir == "":
		return nil, errors.New("kubeletreg: no registration directory")
	}
	if err := os.MkdirAll(o.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("kubeletreg: %w", err)
	}
	path := SocketPath(o.Dir, o.DriverName)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("kubeletreg: remove stale socket: %w", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("kubeletreg: %w", err)
	}
	log := o.Logger
	if log.GetSink() == nil {
		log = klog.Background()
	}
	s := &Server{o: o, log: log, path: path, l: l, srv: grpc.NewServer()}
	registerapi.RegisterRegistrationServer(s.srv, s)
	return s, nil
}

// Path is the registration socket's path.
func (s *Server) Path() string { return s.path }

// Serve answers the kubelet until Close. It returns nil after Close.
func (s *Server) Serve() error {
	s.log.Info("Serving kubelet plugin registration", "socket", s.path, "driver", s.o.DriverName, "endpoint", s.o.Endpoint)
	err := s.srv.Serve(s.l)
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// Close stops serving and removes the socket, so the kubelet deregisters the
// driver (as node-driver-registrar does on SIGTERM).
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.srv.Stop()
	if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("kubeletreg: %w", err)
	}
	return nil
}

// Status is the outcome the kubelet reported last.
func (s *Server) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// GetInfo tells the kubelet who we are and where the CSI endpoint is.
func (s *Server) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	s.log.V(2).Info("Kubelet asked for plugin info", "driver", s.o.DriverName)
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              s.o.DriverName,
		Endpoint:          s.o.Endpoint,
		SupportedVersions: SupportedVersions,
	}, nil
}

// NotifyRegistrationStatus records the kubelet's verdict.
func (s *Server) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	s.mu.Lock()
	s.status = Status{Notified: true, Registered: st.PluginRegistered, Error: st.Error}
	s.mu.Unlock()
	if st.PluginRegistered {
		s.log.Info("Registered with the kubelet", "driver", s.o.DriverName)
	} else {
		// The kubelet retries when the socket is re-created; the plugin keeps
		// serving (node-driver-registrar exits here so that its container restarts).
		s.log.Error(nil, "Kubelet refused the registration", "driver", s.o.DriverName, "error", st.Error)
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}
