// Package driver is csi-rbdj's CSI gRPC server: one Driver type that serves
// the Identity service always, the Controller service in the controller and
// all modes, and the Node service (implemented in pkg/nodeserver, handed in
// through Options) in the node and all modes. The Controller service
// (controller.go) creates, deletes, lists and validates volumes, grows
// them (expand.go), snapshots them (snapshot.go) and creates volumes from
// snapshots and volumes (clone.go), through the storage layer (pkg/storage) with the volume
// model of pkg/volume; it does not link the data path (pkg/blockdev).
//
// The controller does not implement ControllerPublish: a volume is attached
// by NodeStage taking the image's exclusive lock, which enforces one writer
// wherever the request comes from (see README.md).
package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/grpcserver"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// DefaultName is the driver's name (CSIDriver object, StorageClass
// provisioner).
const DefaultName = "rbdj.csi-rbdj.dev"

// Mode says which CSI services a Driver serves.
type Mode string

// Modes.
const (
	ModeController Mode = "controller"
	ModeNode       Mode = "node"
	ModeAll        Mode = "all"
)

// ParseMode parses a --mode value.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeController, ModeNode, ModeAll:
		return m, nil
	}
	return "", fmt.Errorf("unknown mode %q (want controller, node or all)", s)
}

func (m Mode) controller() bool { return m == ModeController || m == ModeAll }
func (m Mode) node() bool       { return m == ModeNode || m == ModeAll }

// Readier is implemented by a node server that is not ready at once (it
// re-serves staged volumes first); Probe reports it.
type Readier interface {
	// Ready returns nil once the server can take requests.
	Ready() error
}

// Options configure a Driver.
type Options struct {
	// Name is the driver name (default DefaultName).
	Name string
	// Version is reported by GetPluginInfo.
	Version string
	// Mode selects the services.
	Mode Mode
	// Backend opens the storage of a request's cluster with its
	// credentials.
	Backend storage.Backend
	// NodeServer serves the Node service (required in node and all modes).
	NodeServer csi.NodeServer
	// MaxVolumeBytes bounds a volume's size (default DefaultMaxVolumeBytes).
	MaxVolumeBytes int64
	// Interceptors run around every unary call, outermost first, before
	// the driver's own logging interceptor (metrics: they see the status
	// codes clients see).
	Interceptors []grpc.UnaryServerInterceptor
}

// DefaultMaxVolumeBytes is the largest volume CreateVolume makes: 64 TiB.
const DefaultMaxVolumeBytes int64 = 64 << 40

// Driver is a CSI plugin instance.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer

	o Options

	// locks serialises controller operations per volume name / id: a
	// concurrent second operation on the same volume fails with Aborted,
	// which the CO retries (the CSI spec's recommendation).
	locks grpcserver.KeyLocks

	server grpcserver.Server

	// flattenKick wakes the background flattener (flatten.go).
	flattenKick chan struct{}
}

// New validates o and returns a Driver.
func New(o Options) (*Driver, error) {
	if o.Name == "" {
		o.Name = DefaultName
	}
	if err := validateDriverName(o.Name); err != nil {
		return nil, err
	}
	if _, err := ParseMode(string(o.Mode)); err != nil {
		return nil, err
	}
	if o.Backend == nil {
		return nil, errors.New("driver: no storage backend")
	}
	if o.Mode.node() && o.NodeServer == nil {
		return nil, fmt.Errorf("driver: mode %s needs a node server", o.Mode)
	}
	if o.MaxVolumeBytes <= 0 {
		o.MaxVolumeBytes = DefaultMaxVolumeBytes
	}
	if o.Version == "" {
		o.Version = "dev"
	}
	return &Driver{o: o, flattenKick: make(chan struct{}, 1)}, nil
}

// validateDriverName applies the CSI rule: at most 63 characters, a DNS
// name of alphanumerics, '-' and '.', starting and ending alphanumeric.
func validateDriverName(n string) error {
	if len(n) > 63 {
		return fmt.Errorf("driver name %q is longer than 63 characters", n)
	}
	for i, c := range n {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (c != '-' && c != '.' || i == 0 || i == len(n)-1) {
			return fmt.Errorf("driver name %q is not a DNS-style name (alphanumerics, '-' and '.')", n)
		}
	}
	if n == "" {
		return errors.New("empty driver name")
	}
	return nil
}

// Name returns the driver name.
func (d *Driver) Name() string { return d.o.Name }

// ParseEndpoint turns "unix:///path" (or "unix:/path", or a bare path)
// into a socket path.
func ParseEndpoint(ep string) (string, error) {
	if strings.HasPrefix(ep, "/") {
		return ep, nil
	}
	u, err := url.Parse(ep)
	if err != nil {
		return "", fmt.Errorf("endpoint %q: %w", ep, err)
	}
	if u.Scheme != "unix" {
		return "", fmt.Errorf("endpoint %q: only unix:///path endpoints are supported", ep)
	}
	p := u.Path
	if p == "" {
		p = u.Opaque
	}
	if u.Host != "" {
		p = filepath.Join(u.Host, p)
	}
	if p == "" {
		return "", fmt.Errorf("endpoint %q has no path", ep)
	}
	return p, nil
}

// Listen opens the unix socket for endpoint, replacing a stale socket file.
func Listen(endpoint string) (net.Listener, error) {
	path, err := ParseEndpoint(endpoint)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return l, nil
}

// Serve serves CSI on l until ctx is done or Stop is called; then it stops
// gracefully (bounded by 10 s, then forcibly).
func (d *Driver) Serve(ctx context.Context, l net.Listener) error {
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(append(slices.Clone(d.o.Interceptors), logCalls)...))
	csi.RegisterIdentityServer(srv, d)
	if d.o.Mode.controller() {
		csi.RegisterControllerServer(srv, d)
	}
	if d.o.Mode.node() {
		csi.RegisterNodeServer(srv, d.o.NodeServer)
	}
	d.server.Use(srv)
	if d.o.Mode.controller() {
		// The background flattener (flatten.go) lives as long as Serve.
		fctx, fcancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); d.runFlattener(fctx) }()
		defer wg.Wait()
		defer fcancel()
	}
	logger := klog.FromContext(ctx)
	clusters, err := d.o.Backend.Clusters()
	if err != nil {
		logger.Error(err, "Cluster configuration unreadable; requests fail until it is fixed")
	}
	logger.Info("Serving CSI", "driver", d.o.Name, "mode", d.o.Mode, "backend", d.o.Backend.Kind(),
		"clusters", clusters, "endpoint", l.Addr().String())
	return d.server.Serve(ctx, l)
}

// Stop stops serving: in-flight calls get 10 s to finish.
func (d *Driver) Stop() { d.server.Stop() }

// operation starts a controller operation: it takes the lock of key, or
// fails with Aborted naming the volume or snapshot (kind, name) an
// operation is already in progress on (the CO retries), and bounds the
// returned context by controllerTimeout; done cancels it and unlocks.
func (d *Driver) operation(ctx context.Context, key, kind, name string) (_ context.Context, done func(), err error) {
	if !d.locks.TryLock(key) {
		return ctx, nil, status.Errorf(codes.Aborted, "an operation on %s %q is already in progress; retry", kind, name)
	}
	ctx, cancel := context.WithTimeout(ctx, controllerTimeout)
	return ctx, func() { cancel(); d.locks.Unlock(key) }, nil
}

// logCalls logs each CSI call with its volume id (or name) and outcome.
var logCalls = grpcserver.LogCalls(grpcserver.CallLog{Failed: "CSI call failed", Succeeded: "CSI call",
	Quiet: []string{"Probe", "NodeGetCapabilities", "NodeGetVolumeStats"},
	Keys: func(req any) []any {
		var kv []any
		if v, ok := req.(interface{ GetVolumeId() string }); ok && v.GetVolumeId() != "" {
			kv = append(kv, "volumeID", v.GetVolumeId())
		}
		if v, ok := req.(interface{ GetName() string }); ok && v.GetName() != "" {
			kv = append(kv, "name", v.GetName())
		}
		return kv
	}})

// --- Identity ---

// GetPluginInfo returns the driver name and version.
func (d *Driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.o.Name, VendorVersion: d.o.Version,
		Manifest: map[string]string{"backend": d.o.Backend.Kind(), "mode": string(d.o.Mode)}}, nil
}

// GetPluginCapabilities advertises the controller service and online
// volume expansion.
func (d *Driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	var caps []*csi.PluginCapability
	if d.o.Mode.controller() {
		caps = append(caps, &csi.PluginCapability{Type: &csi.PluginCapability_Service_{
			Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_CONTROLLER_SERVICE}}})
		// Volumes grow while a node serves them (expand.go).
		caps = append(caps, &csi.PluginCapability{Type: &csi.PluginCapability_VolumeExpansion_{
			VolumeExpansion: &csi.PluginCapability_VolumeExpansion{Type: csi.PluginCapability_VolumeExpansion_ONLINE}}})
	}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

// Probe reports the health of the default cluster (with the default
// credentials; without them it is not checked) and, on a node, whether the
// staged volumes have been re-served after a restart.
func (d *Driver) Probe(ctx context.Context, _ *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := d.o.Backend.Storage(ctx, "", nil)
	switch {
	case errors.Is(err, storage.ErrNoCredentials):
		klog.FromContext(ctx).V(5).Info("Probe: no default credentials; the cluster is not checked")
	case err != nil:
		return nil, status.Errorf(codes.FailedPrecondition, "backend unhealthy: %v", err)
	default:
		if err := st.Health(ctx); err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "backend unhealthy: %v", err)
		}
	}
	if r, ok := d.o.NodeServer.(Readier); ok && d.o.Mode.node() {
		if err := r.Ready(); err != nil {
			klog.FromContext(ctx).V(2).Info("Probe: node not ready", "reason", err)
			return &csi.ProbeResponse{Ready: wrapBool(false)}, nil
		}
	}
	return &csi.ProbeResponse{Ready: wrapBool(true)}, nil
}
