//go:build ceph && pacific

package main

import (
	"context"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/extentlog"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// withExtentLog wraps an image removal so that it also removes the image's
// extent log (which librbd does not know about).
func withExtentLog(pool objstore.Pool, remove func(name string) error) func(name string) error {
	return func(name string) error {
		ctx := context.Background()
		id, idErr := clsrbd.GetID(ctx, pool, clsrbd.IDOID(name))
		if err := remove(name); err != nil {
			return err
		}
		if idErr != nil {
			return nil
		}
		return extentlog.Remove(ctx, pool, id)
	}
}
