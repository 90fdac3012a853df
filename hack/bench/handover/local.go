package main

import (
	"context"
	"fmt"

	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/classes"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

// connectBackend opens the child's cluster.
func connectBackend(ctx context.Context, cfg childConfig) (*backendConn, error) {
	switch cfg.Backend {
	case "local":
		return connectLocal(ctx, cfg)
	case "ceph":
		return connectCeph(ctx, cfg)
	}
	return nil, fmt.Errorf("unknown backend %q", cfg.Backend)
}

// connectLocal opens the local cluster under cfg.LocalDir.
func connectLocal(ctx context.Context, cfg childConfig) (*backendConn, error) {
	c, err := local.Open(cfg.LocalDir, local.Options{Classes: classes.Standard()})
	if err != nil {
		return nil, err
	}
	return poolConn(ctx, c, cfg.Pool)
}

// createLocal creates the benchmark's image in a new local cluster under
// cfg.LocalDir (a journaled image, as a StorageClass of the driver makes).
func createLocal(ctx context.Context, cfg childConfig, size int64) error {
	conn, err := connectLocal(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.close()
	return image.Create(ctx, conn.pool, cfg.Image, size, image.CreateOptions{JournalSplayWidth: volume.DefaultJournalSplayWidth})
}
