package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/klog/v2"
)

// DefaultVolumeBytes is the size of a volume whose request names none.
const DefaultVolumeBytes int64 = 1 << 30

// controllerTimeout bounds one controller operation on the backend.
const controllerTimeout = 2 * time.Minute

// recordPrefix names the per-volume record objects: "csi.volume.<image>"
// holds the CSI name and parameters a volume was created with, written
// before the image is created and removed after it is deleted. It makes
// CreateVolume idempotent by name (with a full parameter comparison) and
// lets ListVolumes list only this driver's volumes.
const recordPrefix = "csi.volume."

// volumeRecord is the content of a record object.
type volumeRecord struct {
	Name    string              `json:"name"`
	Params  volume.VolumeParams `json:"params"`
	Created time.Time           `json:"created"`
	// FormatMark is the state of the image's "new, may be formatted"
	// marker (formatmark.go); "" in records older than the marker.
	FormatMark string `json:"formatMark,omitempty"`
	// Source is the snapshot or volume id the volume was copied from
	// (clone.go); CopyPending is set until the copy is complete, and
	// CopiedBytes says how far it got.
	Source      string `json:"source,omitempty"`
	CopyPending bool   `json:"copyPending,omitempty"`
	CopiedBytes int64  `json:"copiedBytes,omitempty"`
	// Layered: the volume is a layered clone of Source's snapshot (else a
	// copy); CopyPending then means its temporary snapshot may still need
	// removing. FlattenPending: the clone is deeper than the soft limit
	// and waits for the background flatten (flatten.go).
	Layered        bool `json:"layered,omitempty"`
	FlattenPending bool `json:"flattenPending,omitempty"`
}

func wrapBool(b bool) *wrapperspb.BoolValue { return wrapperspb.Bool(b) }

// poolNotFound is the status of a missing pool named by a StorageClass.
func poolNotFound(pool string, err error) error {
	return status.Errorf(codes.InvalidArgument, "parameter %q: %v: create it first (ceph osd pool create %s && rbd pool init %s) or name an existing pool", volume.ParamPool, err, pool, pool)
}

// CreateVolume creates a journaled image (idempotent by name).
func (d *Driver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	name := req.GetName()
	if name == "" {
		return nil, status.Error(codes.InvalidArgument, "name is missing (the CO names each volume it creates)")
	}
	if err := volume.ValidateCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	params, err := volume.ParseParams(req.GetParameters())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	size, err := d.volumeSize(req.GetCapacityRange(), params.ObjectOrder)
	if err != nil {
		return nil, err
	}
	ctx, done, err := d.operation(ctx, "name/"+name, "volume", name)
	if err != nil {
		return nil, err
	}
	defer done()
	logger := klog.FromContext(ctx).WithValues("name", name)

	st, err := d.o.Backend.Storage(ctx, params.ClusterID, req.GetSecrets())
	if err != nil {
		return nil, volume.StorageStatus(err, volume.SecretsProvisioner, volume.FromParams)
	}
	params.ClusterID = st.ClusterID()
	if err := d.checkSourcePlace(req, st.ClusterID(), params.Pool); err != nil {
		return nil, err
	}
	pool, err := st.EnsurePool(ctx, params.Pool)
	if err != nil {
		if errors.Is(err, storage.ErrPoolNotFound) {
			return nil, poolNotFound(params.Pool, err)
		}
		return nil, volume.OpStatus(err, volume.SecretsProvisioner, codes.Unavailable, fmt.Sprintf("open pool %q", params.Pool))
	}
	mirrorer, err := checkMirroring(ctx, st, pool, params)
	if err != nil {
		return nil, err
	}
	// A restore or clone (clone.go) carries its source's data and format
	// state; it is at least as large as its source.
	src, err := d.resolveSource(ctx, st, pool, params, req)
	if err != nil {
		return nil, err
	}
	if size, err = src.fitSize(size, req.GetCapacityRange(), params.ObjectOrder); err != nil {
		return nil, err
	}
	imageName := volume.ImageNameFor(name)
	vid := volume.VolumeID{Backend: st.Backend(), Cluster: st.ClusterID(), Pool: params.Pool, Image: imageName}
	if err := vid.Validate(); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "cannot form a volume id: %v", err)
	}
	resp := func(size int64) *csi.CreateVolumeResponse {
		return &csi.CreateVolumeResponse{Volume: &csi.Volume{VolumeId: vid.String(), CapacityBytes: size, VolumeContext: volume.WithPVName(params.VolumeContext(), req.GetParameters()), ContentSource: req.GetVolumeContentSource()}}
	}
	capRange := req.GetCapacityRange()

	rec, err := readRecord(ctx, pool, imageName)
	switch {
	case err == nil:
		if rec.Name != name {
			return nil, status.Errorf(codes.Internal, "image %s already belongs to volume %q (name hash collision with %q)", imageName, rec.Name, name)
		}
		if rec.Params.ClusterID == "" { // a record written before volumes named their cluster
			rec.Params.ClusterID = params.ClusterID
		}
		if rec.Params.JournalMode == "" { // a record written before journal modes: full
			rec.Params.JournalMode = volume.JournalModeFull
		}
		if rec.Params.JournalMode != params.JournalMode {
			// The mode is fixed for the life of a volume: its image was
			// created for it (librbd journaling or the extent log).
			return nil, status.Errorf(codes.InvalidArgument, "parameter %q: volume %q exists with journal mode %q; the journal mode of a volume cannot be changed (requested %q): create a new volume",
				volume.ParamJournalMode, name, rec.Params.JournalMode, params.JournalMode)
		}
		rec.Params = rec.Params.WithCloneDefaults() // a record written before the clone depth limits
		if rec.Source != src.ID() {
			return nil, status.Errorf(codes.AlreadyExists, "volume %q already exists with content source %q, not %q; delete it or use another name", name, rec.Source, src.ID())
		}
		if rec.Params != params {
			return nil, status.Errorf(codes.AlreadyExists, "volume %q already exists with different parameters (%s); delete it or use the same parameters", name, paramsDiff(rec.Params, params))
		}
		info, err := st.ImageInfo(ctx, pool, imageName)
		if err == nil && rec.CopyPending {
			// An earlier call did not finish the volume: go on.
			finish := d.finishCopy
			if rec.Layered {
				finish = d.finishLayered
			}
			if err := finish(ctx, st, pool, src, imageName, &rec); err != nil {
				return nil, err
			}
		}
		if err == nil {
			if info.Size < capRange.GetRequiredBytes() || (capRange.GetLimitBytes() > 0 && info.Size > capRange.GetLimitBytes()) {
				return nil, status.Errorf(codes.AlreadyExists, "volume %q already exists with %d bytes, outside the requested range [%d, %d]",
					name, info.Size, capRange.GetRequiredBytes(), capRange.GetLimitBytes())
			}
			if diff := params.Matches(info); diff != "" {
				return nil, status.Errorf(codes.AlreadyExists, "volume %q exists but its image differs: %s", name, diff)
			}
			if rec.FormatMark == formatMarkPending {
				// An earlier attempt created the image but did not mark
				// it: it was never handed out, so it is still new.
				if err := markNew(ctx, pool, imageName, &rec); err != nil {
					return nil, volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "mark new volume "+vid.String())
				}
			}
			if err := ensureExtentLog(ctx, pool, imageName, params); err != nil { // journalmode.go
				return nil, err
			}
			if err := enableMirroring(ctx, mirrorer, pool, imageName); err != nil {
				return nil, err
			}
			logger.V(2).Info("Volume exists", "volumeID", vid.String(), "size", info.Size)
			return resp(info.Size), nil
		}
		if !errors.Is(err, image.ErrNotFound) {
			return nil, volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "inspect image "+imageName)
		}
		// A previous attempt wrote the record but did not finish the image:
		// clear what it left and create it now.
		if err := st.RemoveImage(ctx, pool, imageName); err != nil && !errors.Is(err, image.ErrNotFound) {
			return nil, volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "clear partial image "+imageName)
		}
	case errors.Is(err, objstore.ErrNotFound):
		rec = volumeRecord{Name: name, Params: params, Created: time.Now().UTC(), Source: src.ID(), CopyPending: src != nil}
		if src != nil {
			if rec.Layered, _, err = planLayered(ctx, pool, src, params); err != nil { // clone.go
				return nil, err
			}
		}
		if wantsFilesystem(req.GetVolumeCapabilities()) && src.formatAllowed() {
			rec.FormatMark = formatMarkPending
		}
		if err := writeRecord(ctx, pool, imageName, rec); err != nil {
			return nil, volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "write volume record")
		}
	default:
		return nil, volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "read volume record")
	}

	if src != nil && rec.Layered {
		if err := d.createLayered(ctx, st, pool, src, imageName, size, params, &rec); err != nil { // clone.go
			return nil, err
		}
	} else if err := st.CreateImage(ctx, pool, imageName, size, params.CreateOptions()); err != nil {
		code := codes.Internal
		if errors.Is(err, image.ErrInvalid) {
			code = codes.InvalidArgument
		}
		if !errors.Is(err, image.ErrExists) {
			if rerr := removeRecord(context.WithoutCancel(ctx), pool, imageName); rerr != nil {
				logger.Error(rerr, "Could not remove the record of a volume whose image was not created", "image", imageName)
			}
		}
		return nil, volume.OpStatus(err, volume.SecretsProvisioner, code, fmt.Sprintf("create image %s/%s", params.Pool, imageName))
	}
	if err := ensureExtentLog(ctx, pool, imageName, params); err != nil { // journalmode.go
		return nil, err
	}
	if src != nil && !rec.Layered {
		if err := d.finishCopy(ctx, st, pool, src, imageName, &rec); err != nil {
			return nil, err
		}
	}
	if wantsFilesystem(req.GetVolumeCapabilities()) && src.formatAllowed() {
		if err := markNew(ctx, pool, imageName, &rec); err != nil {
			return nil, volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "mark new volume "+vid.String())
		}
	}
	// A failure leaves the volume without mirroring: the CO retries and
	// the retry (volume exists) enables it.
	if err := enableMirroring(ctx, mirrorer, pool, imageName); err != nil {
		return nil, err
	}
	logger.Info("Volume created", "volumeID", vid.String(), "size", size, "features", params.Features,
		"objectOrder", params.ObjectOrder, "journalOrder", params.JournalOrder, "journalSplayWidth", params.JournalSplayWidth, "mirroring", params.Mirroring)
	return resp(size), nil
}

// volumeSize picks the image size for a capacity range: the required size
// (or DefaultVolumeBytes) rounded up to the object size.
func (d *Driver) volumeSize(cr *csi.CapacityRange, order uint8) (int64, error) {
	req, lim := cr.GetRequiredBytes(), cr.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, status.Errorf(codes.InvalidArgument, "capacity_range has negative bytes (required %d, limit %d)", req, lim)
	}
	if lim > 0 && req > lim {
		return 0, status.Errorf(codes.InvalidArgument, "capacity_range: required_bytes %d exceeds limit_bytes %d", req, lim)
	}
	size := req
	if size == 0 {
		size = DefaultVolumeBytes
		if lim > 0 && lim < size {
			size = lim
		}
	}
	obj := int64(1) << order
	if size > d.o.MaxVolumeBytes {
		return 0, status.Errorf(codes.OutOfRange, "requested %d bytes, but the largest volume this driver creates is %d bytes (%d TiB); request less", size, d.o.MaxVolumeBytes, d.o.MaxVolumeBytes>>40)
	}
	size = (size + obj - 1) / obj * obj
	if lim > 0 && size > lim {
		return 0, status.Errorf(codes.OutOfRange, "capacity is rounded up to whole %d-byte objects: %d bytes exceeds limit_bytes %d; raise the limit or lower objectOrder", obj, size, lim)
	}
	return size, nil
}

func paramsDiff(a, b volume.VolumeParams) string {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return fmt.Sprintf("existing %s, requested %s", ja, jb)
}

// DeleteVolume removes the image and its record (idempotent). An image that
// is still open somewhere (staged on a node) is refused.
func (d *Driver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	vid, err := volume.ResolveVolumeID(d.o.Backend, req.GetVolumeId())
	if err != nil {
		if status.Code(err) == codes.NotFound {
			return &csi.DeleteVolumeResponse{}, nil // never issued by us: nothing to delete
		}
		return nil, err
	}
	ctx, done, err := d.operation(ctx, "id/"+vid.String(), "volume", vid.String())
	if err != nil {
		return nil, err
	}
	defer done()

	st, err := volume.VolumeStorage(ctx, d.o.Backend, vid, req.GetSecrets(), volume.SecretsProvisioner)
	if err != nil {
		return nil, err
	}
	pool, err := st.Pool(ctx, vid.Pool)
	if errors.Is(err, storage.ErrPoolNotFound) {
		return &csi.DeleteVolumeResponse{}, nil
	}
	if err != nil {
		return nil, volume.OpStatus(err, volume.SecretsProvisioner, codes.Unavailable, fmt.Sprintf("open pool %q", vid.Pool))
	}
	users, err := st.ImageUsers(ctx, pool, vid.Image)
	if err != nil {
		return nil, volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "check users of "+vid.String())
	}
	if len(users) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is still in use (staged on a node: %s); unstage it first", vid, describeUsers(users))
	}
	// A volume whose image has snapshots (CSI snapshots, or trashed ones
	// its clones use) is parked: the CO sees it deleted, its name is free,
	// and the image goes with its last snapshot (clone.go, storage.Reap).
	fam, err := storage.FamilyOf(ctx, pool, vid.Image)
	if err != nil && !errors.Is(err, image.ErrNotFound) {
		return nil, volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "list snapshots of "+vid.String())
	}
	if len(fam.Snapshots) > 0 {
		if err := d.parkVolume(ctx, st, pool, vid, fam); err != nil {
			return nil, err
		}
	} else if err := st.RemoveImage(ctx, pool, vid.Image); err != nil {
		switch {
		case errors.Is(err, image.ErrNotFound):
		case errors.Is(err, image.ErrBusy):
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s is still in use (its image has watchers; a crashed client's watch expires after 30 s); unstage it first: %v", vid, err)
		default:
			return nil, volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "remove image "+vid.String())
		}
	}
	if err := removeRecord(ctx, pool, vid.Image); err != nil {
		return nil, volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "remove volume record of "+vid.String())
	}
	klog.FromContext(ctx).Info("Volume deleted", "volumeID", vid.String())
	return &csi.DeleteVolumeResponse{}, nil
}

// lookupVolume finds an existing volume (NotFound otherwise), with the
// given secrets (of names where they come from).
func (d *Driver) lookupVolume(ctx context.Context, id string, secrets map[string]string, of volume.SecretsOf) (volume.VolumeID, storage.ImageInfo, volumeRecord, error) {
	vid, err := volume.ResolveVolumeID(d.o.Backend, id)
	if err != nil {
		return vid, storage.ImageInfo{}, volumeRecord{}, err
	}
	st, err := volume.VolumeStorage(ctx, d.o.Backend, vid, secrets, of)
	if err != nil {
		return vid, storage.ImageInfo{}, volumeRecord{}, err
	}
	pool, err := st.Pool(ctx, vid.Pool)
	if errors.Is(err, storage.ErrPoolNotFound) {
		return vid, storage.ImageInfo{}, volumeRecord{}, status.Errorf(codes.NotFound, "volume %s does not exist (no pool %q)", vid, vid.Pool)
	}
	if err != nil {
		return vid, storage.ImageInfo{}, volumeRecord{}, volume.OpStatus(err, of, codes.Unavailable, fmt.Sprintf("open pool %q", vid.Pool))
	}
	rec, err := readRecord(ctx, pool, vid.Image)
	if errors.Is(err, objstore.ErrNotFound) {
		return vid, storage.ImageInfo{}, volumeRecord{}, status.Errorf(codes.NotFound, "volume %s does not exist", vid)
	}
	if err != nil {
		return vid, storage.ImageInfo{}, volumeRecord{}, volume.OpStatus(err, of, codes.Internal, "read volume record of "+vid.String())
	}
	info, err := st.ImageInfo(ctx, pool, vid.Image)
	if errors.Is(err, image.ErrNotFound) {
		return vid, storage.ImageInfo{}, volumeRecord{}, status.Errorf(codes.NotFound, "volume %s does not exist (its image is gone)", vid)
	}
	if err != nil {
		return vid, storage.ImageInfo{}, volumeRecord{}, volume.OpStatus(err, of, codes.Internal, "inspect image of "+vid.String())
	}
	return vid, info, rec, nil
}

// ValidateVolumeCapabilities confirms the capabilities a volume supports.
func (d *Driver) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is missing")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume_capabilities are missing (give at least one)")
	}
	ctx, cancel := context.WithTimeout(ctx, controllerTimeout)
	defer cancel()
	if _, _, _, err := d.lookupVolume(ctx, req.GetVolumeId(), req.GetSecrets(), volume.SecretsControllerValidate); err != nil {
		return nil, err
	}
	if err := volume.ValidateCapabilities(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	if len(req.GetParameters()) > 0 {
		if _, err := volume.ParseParams(req.GetParameters()); err != nil {
			return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
		}
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// listToken encodes the position of a ListVolumes page: the id of the last
// volume returned. Volumes are listed in id order, so a token stays valid
// when volumes are added or deleted between pages.
const listTokenPrefix = "after:"

// listStart checks a List call's max_entries and starting token (issued by
// this driver: listTokenPrefix and an id parse accepts) and returns the id
// the page starts after ("" for the first page).
func listStart[ID any](maxEntries int32, token string, parse func(id string) (ID, error)) (string, error) {
	if maxEntries < 0 {
		return "", status.Errorf(codes.InvalidArgument, "max_entries %d is negative (0 means no limit)", maxEntries)
	}
	if token == "" {
		return "", nil
	}
	rest, ok := strings.CutPrefix(token, listTokenPrefix)
	if !ok {
		return "", status.Errorf(codes.Aborted, "starting_token %q was not issued by this driver; restart the listing without a token", token)
	}
	if _, err := parse(rest); err != nil {
		return "", status.Errorf(codes.Aborted, "starting_token %q is invalid (%v); restart the listing without a token", token, err)
	}
	return rest, nil
}

// ListVolumes lists this driver's volumes in id order, with paging.
func (d *Driver) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	after, err := listStart(req.GetMaxEntries(), req.GetStartingToken(), volume.ParseVolumeID)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, controllerTimeout)
	defer cancel()
	ids, err := d.allVolumes(ctx)
	if err != nil {
		return nil, err
	}
	i := sort.SearchStrings(ids, after)
	if i < len(ids) && ids[i] == after {
		i++
	}
	resp := &csi.ListVolumesResponse{}
	for ; i < len(ids); i++ {
		if max := int(req.GetMaxEntries()); max > 0 && len(resp.Entries) == max {
			resp.NextToken = listTokenPrefix + resp.Entries[len(resp.Entries)-1].Volume.VolumeId
			break
		}
		vid, info, rec, err := d.lookupVolume(ctx, ids[i], nil, volume.SecretsNone)
		if status.Code(err) == codes.NotFound {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: &csi.Volume{
			VolumeId: vid.String(), CapacityBytes: info.Size, VolumeContext: rec.Params.VolumeContext()}})
	}
	return resp, nil
}

// allVolumes returns the ids of every volume with a record in every
// configured cluster (with the default credentials), sorted. Errors are
// gRPC statuses.
func (d *Driver) allVolumes(ctx context.Context) ([]string, error) {
	var ids []string
	err := d.eachPool(ctx, "volumes", func(st storage.Storage, pool objstore.Pool, pn, cl string) error {
		names, err := pool.List(ctx, recordPrefix)
		if errors.Is(err, objstore.ErrNotFound) {
			return nil // deleted meanwhile
		}
		if err != nil {
			return volume.OpStatus(err, volume.SecretsNone, codes.Internal, fmt.Sprintf("list pool %q of cluster %q", pn, cl))
		}
		for _, n := range names {
			v := volume.VolumeID{Backend: st.Backend(), Cluster: st.ClusterID(), Pool: pn, Image: strings.TrimPrefix(n, recordPrefix)}
			if v.Validate() == nil {
				ids = append(ids, v.String())
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(ids)
	return ids, nil
}

// eachPool calls fn with every pool of every configured cluster, skipping
// pools whose names are not valid and pools deleted meanwhile; what names
// the listing ("volumes", "snapshots") in its errors. ListVolumes and
// ListSnapshots share it.
func (d *Driver) eachPool(ctx context.Context, what string, fn func(st storage.Storage, pool objstore.Pool, pn, cl string) error) error {
	clusters, err := d.o.Backend.Clusters()
	if err != nil {
		return status.Errorf(codes.FailedPrecondition, "cluster configuration: %v", err)
	}
	for _, cl := range clusters {
		st, err := d.o.Backend.Storage(ctx, cl, nil)
		if err != nil {
			return volume.StorageStatus(fmt.Errorf("list %s of cluster %q: %w", what, cl, err), volume.SecretsNone, volume.FromVolumeID)
		}
		pools, err := st.ListPools(ctx)
		if err != nil {
			return volume.OpStatus(err, volume.SecretsNone, codes.Internal, fmt.Sprintf("list pools of cluster %q", cl))
		}
		for _, pn := range pools {
			if storage.ValidateName("pool", pn) != nil {
				continue
			}
			pool, err := st.Pool(ctx, pn)
			if errors.Is(err, storage.ErrPoolNotFound) {
				continue // deleted meanwhile
			}
			if err != nil {
				return volume.OpStatus(err, volume.SecretsNone, codes.Internal, fmt.Sprintf("open pool %q of cluster %q", pn, cl))
			}
			if err := fn(st, pool, pn, cl); err != nil {
				return err
			}
		}
	}
	return nil
}

// GetCapacity reports what the backend can still hold (volumes are thin).
func (d *Driver) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	if len(req.GetVolumeCapabilities()) > 0 {
		if err := volume.ValidateCapabilities(req.GetVolumeCapabilities()); err != nil {
			return &csi.GetCapacityResponse{}, nil // no capacity for what cannot be created
		}
	}
	params, err := volume.ParseParams(req.GetParameters())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, controllerTimeout)
	defer cancel()
	st, err := d.o.Backend.Storage(ctx, params.ClusterID, nil)
	if err != nil {
		return nil, volume.StorageStatus(err, volume.SecretsNone, volume.FromParams)
	}
	avail, err := st.Available(ctx)
	if err != nil {
		return nil, volume.OpStatus(err, volume.SecretsNone, codes.Unavailable, "backend capacity")
	}
	return &csi.GetCapacityResponse{
		AvailableCapacity: avail,
		MaximumVolumeSize: wrapperspb.Int64(d.o.MaxVolumeBytes),
		MinimumVolumeSize: wrapperspb.Int64(1 << image.MinOrder),
	}, nil
}

// ControllerGetCapabilities advertises what the controller implements.
func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, c := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,          // expand.go
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT, // snapshot.go
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME, // clone.go
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: c}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// describeUsers formats watchers for an error message.
func describeUsers(ws []objstore.WatcherInfo) string {
	var parts []string
	for _, w := range ws {
		parts = append(parts, fmt.Sprintf("%s at %s", w.Client.Name(), w.Client.Addr))
	}
	return strings.Join(parts, ", ")
}

func readRecord(ctx context.Context, pool objstore.Pool, imageName string) (volumeRecord, error) {
	return readJSONObject[volumeRecord](ctx, pool, recordPrefix+imageName, "volume")
}

func writeRecord(ctx context.Context, pool objstore.Pool, imageName string, rec volumeRecord) error {
	return createJSONObject(ctx, pool, recordPrefix+imageName, rec)
}

func removeRecord(ctx context.Context, pool objstore.Pool, imageName string) error {
	return removeObject(ctx, pool, recordPrefix+imageName)
}
