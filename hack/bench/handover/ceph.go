//go:build ceph && pacific

package main

import (
	"context"
	"fmt"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/librbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

const cephBuilt = true

func connectCeph(ctx context.Context, cfg childConfig) (*backendConn, error) {
	if cfg.CephConf == "" {
		return nil, fmt.Errorf("no cluster: pass -ceph-conf (hack/ceph-up.sh prints it) or set CEPH_CONF")
	}
	c, err := ceph.Connect(ctx, ceph.Config{ConfigFile: cfg.CephConf})
	if err != nil {
		return nil, err
	}
	return poolConn(ctx, c, cfg.Pool)
}

// createCeph creates a journaled image (the features a StorageClass of the
// driver gives: layering, exclusive-lock, journaling) and returns its
// removal.
func createCeph(ctx context.Context, cfg childConfig, size int64) (func(context.Context) error, error) {
	conn, err := connectCeph(ctx, cfg)
	if err != nil {
		return nil, err
	}
	features := uint64(clsrbd.FeatureLayering | clsrbd.FeatureExclusiveLock | clsrbd.FeatureJournaling)
	if err := librbd.Create(ctx, conn.pool, cfg.Image, size, image.CreateOptions{Features: features, JournalSplayWidth: volume.DefaultJournalSplayWidth}); err != nil {
		conn.close()
		return nil, err
	}
	return func(ctx context.Context) error {
		defer conn.close()
		return librbd.Remove(ctx, conn.pool, cfg.Image)
	}, nil
}
