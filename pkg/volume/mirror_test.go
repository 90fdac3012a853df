package volume

import (
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestMirrorStatus(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("image rbd/x: %w", err) }
	tests := []struct {
		err  error
		want codes.Code
	}{
		{nil, codes.OK},
		{wrap(image.ErrNotFound), codes.NotFound},
		{wrap(storage.ErrMirroringUnsupported), codes.InvalidArgument},
		{wrap(storage.ErrPoolMirroringDisabled), codes.FailedPrecondition},
		{wrap(storage.ErrMirroringDisabled), codes.FailedPrecondition},
		{wrap(storage.ErrMirrorModeConflict), codes.FailedPrecondition},
		{wrap(storage.ErrImagePrimary), codes.FailedPrecondition},
		{wrap(image.ErrBusy), codes.FailedPrecondition},
		{wrap(storage.ErrUnreachable), codes.Unavailable},
		{wrap(syscall.ETIMEDOUT), codes.Unavailable},
		{status.Error(codes.Aborted, "as is"), codes.Aborted},
		{errors.New("other"), codes.Internal},
	}
	for _, tt := range tests {
		err := MirrorStatus(tt.err, SecretsProvisioner, "promote rbd/x")
		if got := status.Code(err); got != tt.want {
			t.Errorf("MirrorStatus(%v) = %v (%v), want %v", tt.err, got, err, tt.want)
		}
	}
}
