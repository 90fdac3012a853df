package driver_test

import (
	"context"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop"
)

func fuseloopCleanup(ctx context.Context, stateDir, name string) error {
	return fuseloop.Cleanup(ctx, stateDir, name)
}
