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
		c, err := local.Open(cfg.LocalDir, local.Options{Classes: classes.Standard()})
		if err != nil {
			return nil, err
		}
		pool, err := c.Pool(ctx, cfg.Pool)
		if err != nil {
			c.Close()
			return nil, err
		}
		return &backendConn{pool: pool, fencer: c, close: func() { c.Close() }}, nil
	case "ceph":
		return connectCeph(ctx, cfg)
	}
	return nil, fmt.Errorf("unknown backend %q", cfg.Backend)
}

// createLocal creates the benchmark's image in a new local cluster under
// cfg.LocalDir (a journaled image, as a StorageClass of the driver makes).
func createLocal(ctx context.Context, cfg childConfig, size int64) error {
	c, err := local.Open(cfg.LocalDir, local.Options{Classes: classes.Standard()})
	if err != nil {
		return err
	}
	defer c.Close()
	pool, err := c.Pool(ctx, cfg.Pool)
	if err != nil {
		return err
	}
	return image.Create(ctx, pool, cfg.Image, size, image.CreateOptions{JournalSplayWidth: volume.DefaultJournalSplayWidth})
}
