package main

import (
	"context"
	"flag"
	"os"
	"path/filepath"

	"github.com/csi-rbdj/csi-rbdj/pkg/fuseholder"
	"k8s.io/klog/v2"
)

// holderMain runs the FUSE connection holder (pkg/fuseholder): a process
// that outlives node plugin restarts and keeps each volume's /dev/fuse
// file open, so the kernel does not abort the connection while the plugin
// is away. It holds no data and no credentials. On SIGTERM it exits and
// its files close: a volume whose plugin is running keeps its connection
// (the plugin holds it too); one whose plugin is away at that moment is
// aborted and goes through the re-serve fallback.
func holderMain(args []string) error {
	fs := flag.NewFlagSet("fuse-holder", flag.ExitOnError)
	socket := fs.String("socket", "/run/csi-rbdj-holder/holder.sock", "unix socket to serve on (its directory is shared with the node plugin)")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(*socket), 0o700); err != nil {
		return err
	}
	logger := klog.Background()
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logger))
	defer cancel()
	sig := make(chan os.Signal, 1)
	signalNotify(sig)
	defer signalStop(sig)
	go func() {
		select {
		case s := <-sig:
			logger.Info("fuse-holder: stopping", "signal", s.String())
			cancel()
		case <-ctx.Done():
		}
	}()
	srv, err := fuseholder.Listen(ctx, *socket)
	if err != nil {
		return err
	}
	defer srv.Close()
	return srv.Serve(ctx)
}
