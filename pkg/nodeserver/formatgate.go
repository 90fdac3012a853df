package nodeserver

import (
	"context"
	"errors"
	"fmt"

	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// formatGate tells mountStaging whether a device that reads as blank may
// be formatted: only a volume known to be new may (storage.MetaFormatBlank
// describes the marker and why).
type formatGate interface {
	// Get reads the volume's marker.
	Get(ctx context.Context) (storage.FormatBlank, error)
	// Clear removes it (the device now holds a filesystem).
	Clear(ctx context.Context) error
	// Image names the image in messages.
	Image() (pool, name string)
}

// imageGate is the formatGate of an image: its metadata key, through the
// storage the volume is served from (both backends).
type imageGate struct {
	st  storage.Storage
	vid volume.VolumeID
}

// errNoStorage: the volume is not served from a storage (tests).
var errNoStorage = errors.New("the volume has no storage")

func (g imageGate) Get(ctx context.Context) (storage.FormatBlank, error) {
	if g.st == nil {
		return storage.FormatBlankUnset, errNoStorage
	}
	pool, err := g.st.Pool(ctx, g.vid.Pool)
	if err != nil {
		return storage.FormatBlankUnset, err
	}
	return storage.GetFormatBlank(ctx, pool, g.vid.Image)
}

func (g imageGate) Clear(ctx context.Context) error {
	if g.st == nil {
		return errNoStorage
	}
	pool, err := g.st.Pool(ctx, g.vid.Pool)
	if err != nil {
		return err
	}
	return storage.ClearFormatBlank(ctx, pool, g.vid.Image)
}

func (g imageGate) Image() (string, string) { return g.vid.Pool, g.vid.Image }

// spec is "pool/image" of a gate.
func spec(g formatGate) string {
	pool, name := g.Image()
	return pool + "/" + name
}

// gate returns the formatGate of a served volume.
func (s *Server) gate(v *stagedVolume) (formatGate, error) {
	vid, err := volume.ResolveVolumeID(s.o.Backend, v.rec.VolumeID)
	if err != nil {
		return nil, err
	}
	return imageGate{st: v.st, vid: vid}, nil
}

// checkFormat decides, before FormatAndMount, whether it may format: it
// returns the marker (to be cleared once the device holds a filesystem)
// and, for a blank device that is not known to be new, FailedPrecondition
// saying what was found and how to override it deliberately.
func checkFormat(ctx context.Context, r *record, existingFormat string, gate formatGate) (storage.FormatBlank, error) {
	logger := klog.FromContext(ctx)
	mark, err := gate.Get(ctx)
	if existingFormat != "" {
		if err != nil {
			// Not needed: the device holds a filesystem, nothing is formatted.
			logger.Error(err, "Reading the volume's format marker failed; it is cleared at a later stage", "image", spec(gate))
			return storage.FormatBlankUnset, nil
		}
		return mark, nil
	}
	if err != nil {
		return mark, volume.OpStatus(err, volume.SecretsNodeStage, codes.Unavailable,
			fmt.Sprintf("device %s of volume %s reads as blank; reading image %s's marker %s (whether it is new) failed", r.Device, r.VolumeID, spec(gate), storage.MetaFormatBlank))
	}
	if mark.Allowed() {
		logger.Info("Making a filesystem on a new volume", "device", r.Device, "fsType", r.FsType, "marker", mark.String())
		return mark, nil
	}
	found := "not set"
	if mark == storage.FormatBlankForeign {
		found = "set by another image (copied to this one, e.g. by rbd-mirror), not an allowance for this one"
	}
	return mark, status.Errorf(codes.FailedPrecondition,
		"volume %s should hold a filesystem (%s), but its device reads as blank (no filesystem or partition signature), and it is not known to be new (image metadata %s: %s): "+
			"csi-rbdj never formats a volume that may have held data. A blank volume that had data is e.g. a mirror replica that never synced (promoted after its primary was lost), an image whose data objects are gone, or a pre-provisioned image that was never formatted. "+
			"Check the image (rbd info / rbd du / rbd mirror image status %s); to make a new filesystem on it deliberately, destroying anything it held, run `%s` and stage it again",
		r.VolumeID, r.FsType, storage.MetaFormatBlank, found, spec(gate), storage.FormatBlankOverrideCommand(gate.Image()))
}

// clearFormatMark forgets the marker once the device holds a filesystem;
// a failure is logged and retried at the next stage (a device that holds
// a filesystem is never formatted, whatever the marker says).
func clearFormatMark(ctx context.Context, mark storage.FormatBlank, gate formatGate) {
	if mark == storage.FormatBlankUnset {
		return
	}
	if err := gate.Clear(ctx); err != nil {
		klog.FromContext(ctx).Error(err, "Clearing the volume's format marker failed; retried at the next stage", "image", spec(gate))
		return
	}
	klog.FromContext(ctx).V(2).Info("Cleared the format marker: the volume holds a filesystem", "image", spec(gate))
}
