package main

import (
	"context"
	"flag"
	"path/filepath"
	"testing"
	"time"

	"github.com/csi-addons/spec/lib/go/identity"
	"github.com/csi-addons/spec/lib/go/replication"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestServeCSIAddons: `serve --csi-addons-endpoint` serves the csi-addons
// Identity and Replication services on their own socket next to CSI's, and
// stops with the plugin; on the local backend replication calls say that
// mirroring needs Ceph.
func TestServeCSIAddons(t *testing.T) {
	dir := t.TempDir()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var c serveConfig
	serveFlags(fs, &c)
	if err := parseArgs(fs, []string{"--mode", "controller", "--backend", "local", "--local-dir", filepath.Join(dir, "cluster"), "--local-no-sync",
		"--endpoint", "unix://" + filepath.Join(dir, "csi.sock"), "--csi-addons-endpoint", "unix://" + filepath.Join(dir, "csi-addons.sock")}); err != nil {
		t.Fatal(err)
	}
	defer serveInProcess(t, c, 30*time.Second)()
	ctx := context.Background()

	conn, err := dial(filepath.Join(dir, "csi-addons.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ident := identity.NewIdentityClient(conn)
	var gi *identity.GetIdentityResponse
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		gi, err = ident.GetIdentity(cctx, &identity.GetIdentityRequest{})
		ccancel()
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil || gi.GetName() != c.driverName {
		t.Fatalf("GetIdentity: %v, %v (want name %q)", gi, err, c.driverName)
	}
	_, err = replication.NewControllerClient(conn).PromoteVolume(ctx, &replication.PromoteVolumeRequest{VolumeId: "rbdj1/local/default/rbd/csi-vol-0"})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("PromoteVolume on the local backend: %v, want FailedPrecondition", err)
	}
}
