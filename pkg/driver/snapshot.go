package driver

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/klog/v2"
)

// Snapshots (CreateSnapshot, DeleteSnapshot, ListSnapshots).
//
// A CSI snapshot is an RBD user snapshot of the source volume's image,
// named after the CSI name (volume.SnapNameFor: "csi-snap-<hash>"); its
// id names the image and the snapshot
// (rbdj1/<backend>/<cluster>/<pool>/<image>@<snapshot>), so that the
// controller finds it without a lookup. A record object
// "csi.snapshot.<snapshot>" in the source's pool holds the CSI name and
// the source volume id: it makes CreateSnapshot idempotent by name (the
// same name with another source is AlreadyExists) and lets
// ListSnapshots list this driver's snapshots. The record is written
// before the snapshot is made and removed if making it fails, and after
// the snapshot when it is deleted.
//
// On a volume a node serves, the snapshot is made by the node (the image's
// lock owner) through librbd's owner protocol, so it holds every write
// acknowledged before CreateSnapshot was called (storage.Snapshotter). A
// volume whose lock holder does not answer is refused (Unavailable,
// naming the holder): nothing is made.

// snapRecordPrefix names the snapshot record objects.
const snapRecordPrefix = "csi.snapshot."

// snapshotRecord is the content of a snapshot record object.
type snapshotRecord struct {
	Name    string    `json:"name"`
	Source  string    `json:"source"` // the source volume id
	Created time.Time `json:"created"`
	// FormatBlank: the source was a new, never formatted volume when the
	// snapshot was requested (its copies may be formatted by the node;
	// storage.MetaFormatBlank).
	FormatBlank bool `json:"formatBlank,omitempty"` // ImageID is the id of the source's image: the snapshot lives there,
	// also after the volume was deleted and its image parked ("" in
	// records written before: the image name).
	ImageID string `json:"imageID,omitempty"`
}

// snapStatus maps a failed snapshot operation.
func snapStatus(err error, what string) error {
	switch {
	case errors.Is(err, storage.ErrOwnerUnresponsive):
		return status.Errorf(codes.Unavailable, "%s: %v", what, err)
	case errors.Is(err, image.ErrNotFound):
		return status.Errorf(codes.NotFound, "%s: %v", what, err)
	}
	return volume.OpStatus(err, volume.SecretsSnapshotter, codes.Internal, what)
}

// CreateSnapshot snapshots a volume (idempotent by name).
func (d *Driver) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	name := req.GetName()
	if name == "" {
		return nil, status.Error(codes.InvalidArgument, "name is missing (the CO names each snapshot it creates)")
	}
	if req.GetSourceVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "source_volume_id is missing")
	}
	vid, err := volume.ResolveVolumeID(d.o.Backend, req.GetSourceVolumeId())
	if err != nil {
		return nil, err
	}
	ctx, done, err := d.operation(ctx, "snap/"+name, "snapshot", name)
	if err != nil {
		return nil, err
	}
	defer done()
	logger := klog.FromContext(ctx).WithValues("name", name, "sourceVolumeID", vid.String())
	ctx = klog.NewContext(ctx, logger)

	st, pool, err := d.volumePool(ctx, vid, req.GetSecrets(), volume.SecretsSnapshotter)
	if err != nil {
		return nil, err
	}
	sn, err := storage.SnapshotterOf(st)
	if err != nil {
		return nil, status.Errorf(codes.Unimplemented, "%v", err)
	}
	if _, err := readRecord(ctx, pool, vid.Image); errors.Is(err, objstore.ErrNotFound) {
		// Static volumes have no record: the image decides.
		if _, err := st.ImageInfo(ctx, pool, vid.Image); errors.Is(err, image.ErrNotFound) {
			return nil, status.Errorf(codes.NotFound, "source volume %s does not exist", vid)
		} else if err != nil {
			return nil, volume.OpStatus(err, volume.SecretsSnapshotter, codes.Internal, "inspect source volume "+vid.String())
		}
	} else if err != nil {
		return nil, volume.OpStatus(err, volume.SecretsSnapshotter, codes.Internal, "read volume record of "+vid.String())
	}
	snap := volume.SnapNameFor(name)
	sid := volume.SnapshotID{VolumeID: vid, Snap: snap}
	if err := sid.Validate(); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "cannot form a snapshot id: %v", err)
	}

	rec, err := readSnapRecord(ctx, pool, snap)
	fresh := false
	switch {
	case err == nil:
		if rec.Name != name {
			return nil, status.Errorf(codes.Internal, "snapshot %s already belongs to %q (name hash collision with %q)", snap, rec.Name, name)
		}
		if rec.Source != vid.String() {
			return nil, status.Errorf(codes.AlreadyExists, "snapshot %q already exists of volume %s, not of %s; use another name", name, rec.Source, vid)
		}
	case errors.Is(err, objstore.ErrNotFound):
		// Copies of a never formatted volume may be formatted; of anything
		// else, never (the marker as it is before the snapshot: a volume
		// formatted meanwhile is no longer blank, so the node will not
		// format a copy anyway).
		fb, err := storage.GetFormatBlank(ctx, pool, vid.Image)
		if err != nil {
			return nil, volume.OpStatus(err, volume.SecretsSnapshotter, codes.Internal, "read the format state of "+vid.String())
		}
		imageID, err := storage.ImageID(ctx, pool, vid.Image)
		if errors.Is(err, image.ErrNotFound) {
			return nil, status.Errorf(codes.NotFound, "source volume %s does not exist", vid)
		} else if err != nil {
			return nil, volume.OpStatus(err, volume.SecretsSnapshotter, codes.Internal, "look up the image of "+vid.String())
		}
		rec = snapshotRecord{Name: name, Source: vid.String(), Created: time.Now().UTC(), FormatBlank: fb == storage.FormatBlankNew, ImageID: imageID}
		if err := writeSnapRecord(ctx, pool, snap, rec); err != nil {
			return nil, volume.OpStatus(err, volume.SecretsSnapshotter, codes.Internal, "write snapshot record")
		}
		fresh = true
	default:
		return nil, volume.OpStatus(err, volume.SecretsSnapshotter, codes.Internal, "read snapshot record")
	}

	info, err := sn.CreateSnapshot(ctx, pool, vid.Image, snap)
	if err != nil {
		if fresh {
			// Nothing is left behind: the snapshot was not made (an owner
			// that failed undoes its own part).
			if _, gerr := sn.Snapshot(context.WithoutCancel(ctx), pool, vid.Image, snap); errors.Is(gerr, storage.ErrSnapshotNotFound) {
				if rerr := removeSnapRecord(context.WithoutCancel(ctx), pool, snap); rerr != nil {
					logger.Error(rerr, "Could not remove the record of a snapshot that was not made", "snapshot", snap)
				}
			}
		}
		return nil, snapStatus(err, fmt.Sprintf("snapshot volume %s", vid))
	}
	logger.Info("Snapshot created", "snapshotID", sid.String(), "id", info.ID, "size", info.Size)
	return &csi.CreateSnapshotResponse{Snapshot: snapshotOf(sid, info)}, nil
}

func snapshotOf(sid volume.SnapshotID, info storage.SnapshotInfo) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:     sid.String(),
		SourceVolumeId: sid.VolumeID.String(),
		SizeBytes:      info.Size,
		CreationTime:   timestamppb.New(info.Created),
		// An RBD snapshot is complete once it exists.
		ReadyToUse: true,
	}
}

// volumePool opens the storage and pool of vid (NotFound for a missing
// pool).
func (d *Driver) volumePool(ctx context.Context, vid volume.VolumeID, secrets map[string]string, of volume.SecretsOf) (storage.Storage, objstore.Pool, error) {
	st, err := volume.VolumeStorage(ctx, d.o.Backend, vid, secrets, of)
	if err != nil {
		return nil, nil, err
	}
	pool, err := st.Pool(ctx, vid.Pool)
	if errors.Is(err, storage.ErrPoolNotFound) {
		return nil, nil, status.Errorf(codes.NotFound, "volume %s does not exist (no pool %q)", vid, vid.Pool)
	}
	if err != nil {
		return nil, nil, volume.OpStatus(err, of, codes.Unavailable, fmt.Sprintf("open pool %q", vid.Pool))
	}
	return st, pool, nil
}

// DeleteSnapshot removes a snapshot and its record (idempotent).
func (d *Driver) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	sid, err := volume.ResolveSnapshotID(d.o.Backend, req.GetSnapshotId())
	if err != nil {
		if status.Code(err) == codes.NotFound {
			return &csi.DeleteSnapshotResponse{}, nil
		}
		return nil, err
	}
	ctx, done, err := d.operation(ctx, "snapid/"+sid.String(), "snapshot", sid.String())
	if err != nil {
		return nil, err
	}
	defer done()
	st, pool, err := d.volumePool(ctx, sid.VolumeID, req.GetSecrets(), volume.SecretsSnapshotter)
	if status.Code(err) == codes.NotFound {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	sn, err := storage.SnapshotterOf(st)
	if err != nil {
		return nil, status.Errorf(codes.Unimplemented, "%v", err)
	}
	// The snapshot's image: the volume's, or parked after the volume was
	// deleted (the record knows its id).
	imgName, imageID := sid.Image, ""
	rec, err := readSnapRecord(ctx, pool, sid.Snap)
	switch {
	case err == nil && rec.Source == sid.VolumeID.String():
		imageID = rec.ImageID
		if imgName, err = snapImage(ctx, pool, sid, rec); errors.Is(err, image.ErrNotFound) {
			imgName, err = "", nil // gone with its image
		}
	case errors.Is(err, objstore.ErrNotFound), err == nil:
		err = nil
	}
	if err != nil {
		return nil, volume.OpStatus(err, volume.SecretsSnapshotter, codes.Internal, "find the image of snapshot "+sid.String())
	}
	if imgName != "" {
		// A snapshot with clones moves to the trash namespace and goes
		// with its last clone (storage.Reap).
		err = sn.RemoveSnapshot(ctx, pool, imgName, sid.Snap)
		switch {
		case err == nil, errors.Is(err, storage.ErrSnapshotNotFound), errors.Is(err, image.ErrNotFound):
		default:
			return nil, snapStatus(err, "remove snapshot "+sid.String())
		}
	}
	if err := removeSnapRecord(ctx, pool, sid.Snap); err != nil {
		return nil, volume.OpStatus(err, volume.SecretsSnapshotter, codes.Internal, "remove snapshot record of "+sid.String())
	}
	if imageID != "" && storage.IsParked(imgName) {
		// The volume is gone: its image goes with its last snapshot.
		if err := storage.ReapParked(ctx, st, pool, imageID); err != nil {
			klog.FromContext(ctx).Error(err, "Could not remove a deleted volume's parked image after its last snapshot; the next removal in its family retries", "image", imgName)
		}
	}
	klog.FromContext(ctx).Info("Snapshot deleted", "snapshotID", sid.String())
	return &csi.DeleteSnapshotResponse{}, nil
}

// ListSnapshots lists this driver's snapshots in id order, with paging;
// by snapshot id or source volume id when the request names one.
func (d *Driver) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	after, err := listStart(req.GetMaxEntries(), req.GetStartingToken(), volume.ParseSnapshotID)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, controllerTimeout)
	defer cancel()

	var entries []*csi.ListSnapshotsResponse_Entry
	switch {
	case req.GetSnapshotId() != "":
		sid, err := volume.ParseSnapshotID(req.GetSnapshotId())
		if err != nil || sid.Backend != d.o.Backend.Kind() {
			return &csi.ListSnapshotsResponse{}, nil // no such snapshot
		}
		st, pool, err := d.volumePool(ctx, sid.VolumeID, req.GetSecrets(), volume.SecretsNone)
		if status.Code(err) == codes.NotFound {
			return &csi.ListSnapshotsResponse{}, nil
		}
		if err != nil {
			return nil, err
		}
		e, err := snapshotEntry(ctx, st, pool, sid)
		if err != nil {
			return nil, err
		}
		if e != nil {
			entries = append(entries, e)
		}
	case req.GetSourceVolumeId() != "":
		vid, err := volume.ParseVolumeID(req.GetSourceVolumeId())
		if err != nil || vid.Backend != d.o.Backend.Kind() {
			return &csi.ListSnapshotsResponse{}, nil
		}
		st, pool, err := d.volumePool(ctx, vid, req.GetSecrets(), volume.SecretsNone)
		if status.Code(err) == codes.NotFound {
			return &csi.ListSnapshotsResponse{}, nil
		}
		if err != nil {
			return nil, err
		}
		if entries, err = poolSnapshots(ctx, st, pool, vid.Pool, vid.String()); err != nil {
			return nil, err
		}
	default:
		var err error
		if entries, err = d.allSnapshots(ctx); err != nil {
			return nil, err
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Snapshot.SnapshotId < entries[j].Snapshot.SnapshotId })
	i := sort.Search(len(entries), func(i int) bool { return entries[i].Snapshot.SnapshotId > after })
	resp := &csi.ListSnapshotsResponse{}
	for ; i < len(entries); i++ {
		if max := int(req.GetMaxEntries()); max > 0 && len(resp.Entries) == max {
			resp.NextToken = listTokenPrefix + resp.Entries[len(resp.Entries)-1].Snapshot.SnapshotId
			break
		}
		resp.Entries = append(resp.Entries, entries[i])
	}
	return resp, nil
}

// snapshotEntry describes snapshot sid, nil if it does not exist (or has no
// record: not a CSI snapshot).
func snapshotEntry(ctx context.Context, st storage.Storage, pool objstore.Pool, sid volume.SnapshotID) (*csi.ListSnapshotsResponse_Entry, error) {
	rec, err := readSnapRecord(ctx, pool, sid.Snap)
	if errors.Is(err, objstore.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, volume.OpStatus(err, volume.SecretsNone, codes.Internal, "read snapshot record of "+sid.String())
	}
	if rec.Source != sid.VolumeID.String() {
		return nil, nil
	}
	sn, err := storage.SnapshotterOf(st)
	if err != nil {
		return nil, status.Errorf(codes.Unimplemented, "%v", err)
	}
	imgName, err := snapImage(ctx, pool, sid, rec)
	if errors.Is(err, image.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, volume.OpStatus(err, volume.SecretsNone, codes.Internal, "find the image of snapshot "+sid.String())
	}
	info, err := sn.Snapshot(ctx, pool, imgName, sid.Snap)
	if errors.Is(err, storage.ErrSnapshotNotFound) || errors.Is(err, image.ErrNotFound) {
		return nil, nil // being made or deleted
	}
	if err != nil {
		return nil, volume.OpStatus(err, volume.SecretsNone, codes.Internal, "inspect snapshot "+sid.String())
	}
	return &csi.ListSnapshotsResponse_Entry{Snapshot: snapshotOf(sid, info)}, nil
}

// poolSnapshots lists the snapshots recorded in a pool (of source volume
// source only, unless it is "").
func poolSnapshots(ctx context.Context, st storage.Storage, pool objstore.Pool, poolName, source string) ([]*csi.ListSnapshotsResponse_Entry, error) {
	names, err := pool.List(ctx, snapRecordPrefix)
	if errors.Is(err, objstore.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, volume.OpStatus(err, volume.SecretsNone, codes.Internal, fmt.Sprintf("list pool %q", poolName))
	}
	var out []*csi.ListSnapshotsResponse_Entry
	for _, n := range names {
		snap := strings.TrimPrefix(n, snapRecordPrefix)
		rec, err := readSnapRecord(ctx, pool, snap)
		if errors.Is(err, objstore.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, volume.OpStatus(err, volume.SecretsNone, codes.Internal, "read snapshot record "+n)
		}
		if source != "" && rec.Source != source {
			continue
		}
		vid, err := volume.ParseVolumeID(rec.Source)
		if err != nil {
			continue
		}
		e, err := snapshotEntry(ctx, st, pool, volume.SnapshotID{VolumeID: vid, Snap: snap})
		if err != nil {
			return nil, err
		}
		if e != nil {
			out = append(out, e)
		}
	}
	return out, nil
}

// allSnapshots lists the snapshots of every pool of every configured
// cluster (with the default credentials).
func (d *Driver) allSnapshots(ctx context.Context) ([]*csi.ListSnapshotsResponse_Entry, error) {
	var out []*csi.ListSnapshotsResponse_Entry
	err := d.eachPool(ctx, "snapshots", func(st storage.Storage, pool objstore.Pool, pn, _ string) error {
		es, err := poolSnapshots(ctx, st, pool, pn, "")
		out = append(out, es...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// parkVolume parks the image of a deleted volume that has snapshots: it is
// renamed (storage.ParkedName) and stays while they do; DeleteSnapshot of
// its last CSI snapshot, or the removal of the last clone of a trashed
// one, removes it. A volume with snapshots not made through CSI is refused
// (FailedPrecondition naming them).
func (d *Driver) parkVolume(ctx context.Context, st storage.Storage, pool objstore.Pool, vid volume.VolumeID, fam storage.Family) error {
	// Only CSI snapshots and trashed ones (kept for clones) are waited
	// for; another snapshot (`rbd snap create`, an rbd-mirror sync point)
	// would keep the image forever: refused, as before clones existed.
	var foreign []string
	for _, s := range fam.Snapshots {
		if s.Namespace.Type == rbdnotify.SnapNamespaceTrash {
			continue
		}
		rec, err := readSnapRecord(ctx, pool, s.Name)
		if err == nil && rec.Source == vid.String() {
			if rec.ImageID == "" {
				// A record written before records kept the image id: the
				// snapshot must stay findable once the image is renamed.
				if rec.ImageID, err = storage.ImageID(ctx, pool, vid.Image); err == nil {
					err = updateSnapRecord(ctx, pool, s.Name, rec)
				}
				if err != nil {
					return volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "record the image id in snapshot record "+s.Name)
				}
			}
			continue
		}
		if err != nil && !errors.Is(err, objstore.ErrNotFound) {
			return volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "read snapshot record "+s.Name)
		}
		foreign = append(foreign, s.Name+" ("+s.Namespace.String()+")")
	}
	if len(foreign) > 0 {
		return status.Errorf(codes.FailedPrecondition, "volume %s has snapshots not made through CSI (%s): remove them first (rbd snap rm %s/%s@<snapshot>); CSI snapshots and clones of the volume would not keep it from being deleted",
			vid, strings.Join(foreign, ", "), vid.Pool, vid.Image)
	}
	cl, err := storage.ClonerOf(st)
	if err != nil {
		return status.Errorf(codes.Unimplemented, "%v", err)
	}
	parked, err := cl.ParkImage(ctx, pool, vid.Image)
	if err != nil {
		if errors.Is(err, image.ErrBusy) {
			return status.Errorf(codes.FailedPrecondition, "volume %s is still in use; unstage it first: %v", vid, err)
		}
		return volume.OpStatus(err, volume.SecretsProvisioner, codes.Internal, "park the image of "+vid.String())
	}
	var names []string
	for _, s := range fam.Snapshots {
		n := s.Name
		if s.Namespace.Type != rbdnotify.SnapNamespaceUser {
			n += " (" + s.Namespace.String() + ")"
		}
		names = append(names, n)
	}
	klog.FromContext(ctx).Info("Volume deleted; its image is kept while its snapshots or their clones exist", "volumeID", vid.String(), "image", parked, "snapshots", strings.Join(names, ", "), "clones", fam.Children)
	return nil
}

// snapImage returns the name the image of snapshot sid has now (parked
// after its volume was deleted), from the record's image id.
func snapImage(ctx context.Context, pool objstore.Pool, sid volume.SnapshotID, rec snapshotRecord) (string, error) {
	return storage.ImageName(ctx, pool, sid.Image, rec.ImageID)
}

func readSnapRecord(ctx context.Context, pool objstore.Pool, snap string) (snapshotRecord, error) {
	return readJSONObject[snapshotRecord](ctx, pool, snapRecordPrefix+snap, "snapshot")
}

func writeSnapRecord(ctx context.Context, pool objstore.Pool, snap string, rec snapshotRecord) error {
	return createJSONObject(ctx, pool, snapRecordPrefix+snap, rec)
}

// updateSnapRecord replaces an existing snapshot record.
func updateSnapRecord(ctx context.Context, pool objstore.Pool, snap string, rec snapshotRecord) error {
	return updateJSONObject(ctx, pool, snapRecordPrefix+snap, rec)
}

func removeSnapRecord(ctx context.Context, pool objstore.Pool, snap string) error {
	return removeObject(ctx, pool, snapRecordPrefix+snap)
}
