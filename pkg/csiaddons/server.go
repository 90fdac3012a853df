// Package csiaddons serves the csi-addons services of csi-rbdj
// (github.com/csi-addons/spec v0.2.0) on their own unix socket, next to the
// CSI socket, in the controller plugin: Identity (which the csi-addons
// sidecar asks for the driver name and capabilities) and Replication (the
// VolumeReplication API: enable, disable, promote, demote, resync and
// replication info of rbd-mirror's journal mirroring).
//
// Like the CSI servers it holds no storage logic: every call resolves the
// volume id, opens the volume's cluster with the request's secrets (the
// VolumeReplicationClass's replication secret, or the default credentials)
// and asks the cluster's storage.Mirrorer.
package csiaddons

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/csi-addons/spec/lib/go/identity"
	"github.com/csi-addons/spec/lib/go/replication"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/klog/v2"

	"github.com/csi-rbdj/csi-rbdj/pkg/grpcserver"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
)

// Options configure a Server.
type Options struct {
	// Name is the CSI driver name (the csi-addons sidecar checks it
	// against the CSI driver's).
	Name string
	// Version is reported by GetIdentity.
	Version string
	// Backend opens the clusters.
	Backend storage.Backend
	// Now is the clock of GetVolumeReplicationInfo (tests); nil: time.Now.
	Now func() time.Time
}

// Server implements the csi-addons Identity and Replication controller
// services.
type Server struct {
	identity.UnimplementedIdentityServer
	replication.UnimplementedControllerServer

	o Options
	// locks gives one lock per volume: a second call on a volume while one
	// is in flight fails with Aborted (the csi-addons spec's "operation
	// pending for volume"), which the controller retries.
	locks  grpcserver.KeyLocks
	server grpcserver.Server

	mu sync.Mutex
	// resyncs are the volumes this server asked rbd-mirror to resync, and
	// when: rbd-mirror deletes the image and creates it anew about 30 s
	// later (its replayer's restart interval), and a ResyncVolume in that
	// window finds no image, which is the resync's progress, not a
	// missing volume. Lost on restart (such a call then answers NotFound
	// until the image is back, and the controller retries).
	resyncs map[string]time.Time
}

// resyncWindow is how long after a resync request a missing image counts
// as being re-created by rbd-mirror.
const resyncWindow = 10 * time.Minute

// resyncRequested records that volume id's resync was requested now.
func (s *Server) resyncRequested(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.resyncs == nil {
		s.resyncs = map[string]time.Time{}
	}
	now := s.o.Now()
	for k, t := range s.resyncs {
		if now.Sub(t) > resyncWindow {
			delete(s.resyncs, k)
		}
	}
	s.resyncs[id] = now
}

// resyncing reports whether volume id's resync was requested within
// resyncWindow.
func (s *Server) resyncing(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.resyncs[id]
	return ok && s.o.Now().Sub(t) <= resyncWindow
}

// resyncDone forgets volume id's resync.
func (s *Server) resyncDone(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.resyncs, id)
}

// New returns a Server.
func New(o Options) (*Server, error) {
	if o.Name == "" {
		return nil, errors.New("csi-addons: no driver name")
	}
	if o.Backend == nil {
		return nil, errors.New("csi-addons: no backend")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Server{o: o}, nil
}

// Register registers both services on srv.
func (s *Server) Register(srv *grpc.Server) {
	identity.RegisterIdentityServer(srv, s)
	replication.RegisterControllerServer(srv, s)
}

// Serve serves on l until ctx is done or Stop is called; then it stops
// gracefully (bounded by 10 s, then forcibly).
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	srv := grpc.NewServer(grpc.UnaryInterceptor(logCalls))
	s.Register(srv)
	s.server.Use(srv)
	klog.FromContext(ctx).Info("Serving csi-addons", "driver", s.o.Name, "services", "identity, replication", "endpoint", l.Addr().String())
	return s.server.Serve(ctx, l)
}

// Stop stops serving: in-flight calls get 10 s to finish.
func (s *Server) Stop() { s.server.Stop() }

// logCalls logs each csi-addons call with its volume id and outcome.
var logCalls = grpcserver.LogCalls(grpcserver.CallLog{Failed: "csi-addons call failed", Succeeded: "csi-addons call",
	Quiet: []string{"Probe"},
	Keys: func(req any) []any {
		if r, ok := req.(request); ok {
			if id, err := volumeIDOf(r); err == nil {
				return []any{"volumeID", id}
			}
		}
		return nil
	}})

// --- Identity ---

// GetIdentity returns the driver name and version.
func (s *Server) GetIdentity(context.Context, *identity.GetIdentityRequest) (*identity.GetIdentityResponse, error) {
	return &identity.GetIdentityResponse{Name: s.o.Name, VendorVersion: s.o.Version}, nil
}

// GetCapabilities advertises the controller service and VolumeReplication.
func (s *Server) GetCapabilities(context.Context, *identity.GetCapabilitiesRequest) (*identity.GetCapabilitiesResponse, error) {
	return &identity.GetCapabilitiesResponse{Capabilities: []*identity.Capability{
		{Type: &identity.Capability_Service_{Service: &identity.Capability_Service{Type: identity.Capability_Service_CONTROLLER_SERVICE}}},
		{Type: &identity.Capability_VolumeReplication_{VolumeReplication: &identity.Capability_VolumeReplication{Type: identity.Capability_VolumeReplication_VOLUME_REPLICATION}}},
	}}, nil
}

// Probe reports ready: the server holds no state that could be unready;
// whether a cluster answers is each call's business (its clusters differ
// per volume).
func (s *Server) Probe(context.Context, *identity.ProbeRequest) (*identity.ProbeResponse, error) {
	return &identity.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// lock takes volume id's lock or fails with Aborted.
func (s *Server) lock(id string) (func(), error) {
	if !s.locks.TryLock(id) {
		return nil, status.Errorf(codes.Aborted, "an operation on volume %q is in progress", id)
	}
	return func() { s.locks.Unlock(id) }, nil
}

// what names a call's operation in errors.
func what(op string, v *target) string {
	return fmt.Sprintf("%s %s/%s (cluster %q)", op, v.id.Pool, v.id.Image, v.id.Cluster)
}
