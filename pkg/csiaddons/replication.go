package csiaddons

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/csi-addons/spec/lib/go/replication"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/klog/v2"

	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

// VolumeReplicationClass parameters (as ceph-csi's).
const (
	// ParamMirroringMode is "journal" (the default; csi-rbdj's volumes
	// are journaled). ceph-csi's other mode, "snapshot", is refused.
	ParamMirroringMode = "mirroringMode"
	// ParamForce "true" lets DisableVolumeReplication disable mirroring
	// on a non-primary copy (ceph-csi's "force").
	ParamForce = "force"
	// ParamSchedulingInterval and ParamSchedulingStartTime schedule
	// mirror snapshots in snapshot mode; journal mode replicates every
	// write as it is journaled, so they are accepted and ignored.
	ParamSchedulingInterval  = "schedulingInterval"
	ParamSchedulingStartTime = "schedulingStartTime"
)

// Response headers of GetVolumeReplicationInfo with the backlog the v0.2.0
// response has no field for (the slowest peer's).
const (
	HeaderEntriesBehind = "csi-rbdj-replication-entries-behind"
	HeaderBytesBehind   = "csi-rbdj-replication-bytes-behind"
	HeaderSetsBehind    = "csi-rbdj-replication-object-sets-behind"
)

// request is what every replication request has: the volume, named by
// volume_id (v0.2.0) or by replication_source (which newer csi-addons
// sidecars send alone).
type request interface {
	GetVolumeId() string
	GetReplicationSource() *replication.ReplicationSource
	GetSecrets() map[string]string
}

// volumeIDOf returns the volume a request is about. A volume group is
// Unimplemented (csi-rbdj has no volume groups); volume_id and
// replication_source naming different volumes is InvalidArgument.
func volumeIDOf(req request) (string, error) {
	id := req.GetVolumeId()
	src := req.GetReplicationSource()
	if g := src.GetVolumegroup(); g != nil {
		return "", status.Errorf(codes.Unimplemented, "replication of volume group %q: csi-rbdj has no volume groups; replicate its volumes one by one", g.GetVolumeGroupId())
	}
	if v := src.GetVolume().GetVolumeId(); v != "" {
		if id != "" && id != v {
			return "", status.Errorf(codes.InvalidArgument, "volume_id %q and replication_source volume %q differ", id, v)
		}
		id = v
	}
	if id == "" {
		return "", status.Error(codes.InvalidArgument, "volume_id is missing (neither volume_id nor replication_source.volume.volume_id is set)")
	}
	return id, nil
}

// target is the volume a call is about, opened.
type target struct {
	name string // the volume id as the request gave it
	id   volume.VolumeID
	st   storage.Storage
	m    storage.Mirrorer
	pool objstore.Pool
}

// open resolves a request's volume id and opens its cluster with the
// request's secrets. Errors are gRPC statuses: InvalidArgument for a
// missing or damaged id, NotFound for an id csi-rbdj never issues or a
// missing pool, FailedPrecondition for the local backend (it cannot
// mirror), what volume.StorageStatus says for the cluster.
func (s *Server) open(ctx context.Context, id string, secrets map[string]string) (*target, error) {
	vid, err := volume.ResolveVolumeID(s.o.Backend, id)
	if err != nil {
		return nil, err
	}
	st, err := volume.VolumeStorage(ctx, s.o.Backend, vid, secrets, volume.SecretsReplication)
	if err != nil {
		return nil, err
	}
	m, err := storage.MirrorerOf(st)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %q: %v: run csi-rbdj with --backend ceph and a second Ceph cluster with rbd-mirror", id, err)
	}
	pool, err := st.Pool(ctx, vid.Pool)
	switch {
	case errors.Is(err, storage.ErrPoolNotFound):
		return nil, status.Errorf(codes.NotFound, "volume %q does not exist: %v", id, err)
	case err != nil:
		return nil, volume.OpStatus(err, volume.SecretsReplication, codes.Internal, fmt.Sprintf("open pool %q of cluster %q", vid.Pool, vid.Cluster))
	}
	return &target{id: vid, st: st, m: m, pool: pool}, nil
}

// begin resolves the volume req is about (volumeIDOf), checks the
// VolumeReplicationClass parameters (checkParams; nil for the calls that
// do not take them), locks the volume and opens it with the request's
// secrets.
func (s *Server) begin(ctx context.Context, req request, params map[string]string) (*target, func(), error) {
	id, err := volumeIDOf(req)
	if err != nil {
		return nil, nil, err
	}
	if err := checkParams(params); err != nil {
		return nil, nil, err
	}
	unlock, err := s.lock(id)
	if err != nil {
		return nil, nil, err
	}
	t, err := s.open(ctx, id, req.GetSecrets())
	if err != nil {
		unlock()
		return nil, nil, err
	}
	t.name = id
	return t, unlock, nil
}

// mirrorErr maps a Mirrorer error (volume.MirrorStatus).
func mirrorErr(err error, op string, t *target) error {
	return volume.MirrorStatus(err, volume.SecretsReplication, what(op, t))
}

// checkParams validates the VolumeReplicationClass parameters.
func checkParams(params map[string]string) error {
	switch mode := params[ParamMirroringMode]; mode {
	case "", storage.MirrorModeJournal:
	case "snapshot":
		return status.Errorf(codes.InvalidArgument, "parameter %s=snapshot: only journal mirroring is supported (csi-rbdj volumes are journaled and rbd-mirror replays their journal): set %s: journal in the VolumeReplicationClass", ParamMirroringMode, ParamMirroringMode)
	default:
		return status.Errorf(codes.InvalidArgument, "parameter %s=%q: unknown mode (want journal)", ParamMirroringMode, mode)
	}
	if v, ok := params[ParamForce]; ok {
		if _, err := strconv.ParseBool(v); err != nil {
			return status.Errorf(codes.InvalidArgument, "parameter %s=%q: want true or false", ParamForce, v)
		}
	}
	return nil
}

// EnableVolumeReplication enables journal mirroring of the volume's image
// (idempotent). A pool without mirroring is FailedPrecondition naming the
// command that enables it.
func (s *Server) EnableVolumeReplication(ctx context.Context, req *replication.EnableVolumeReplicationRequest) (*replication.EnableVolumeReplicationResponse, error) {
	t, unlock, err := s.begin(ctx, req, req.GetParameters())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, ok := req.GetParameters()[ParamSchedulingInterval]; ok {
		klog.FromContext(ctx).V(2).Info("Ignoring a snapshot schedule: journal mirroring replicates every write", "volumeID", t.name)
	}
	if err := t.m.EnableJournalMirroring(ctx, t.pool, t.id.Image); err != nil {
		return nil, mirrorErr(err, "enable journal mirroring of", t)
	}
	return &replication.EnableVolumeReplicationResponse{}, nil
}

// DisableVolumeReplication disables mirroring of the volume's image
// (idempotent). On a non-primary copy it needs the parameter force=true.
func (s *Server) DisableVolumeReplication(ctx context.Context, req *replication.DisableVolumeReplicationRequest) (*replication.DisableVolumeReplicationResponse, error) {
	t, unlock, err := s.begin(ctx, req, req.GetParameters())
	if err != nil {
		return nil, err
	}
	defer unlock()
	force, _ := strconv.ParseBool(req.GetParameters()[ParamForce])
	if err := t.m.DisableMirroring(ctx, t.pool, t.id.Image, force); err != nil {
		return nil, mirrorErr(err, "disable mirroring of", t)
	}
	return &replication.DisableVolumeReplicationResponse{}, nil
}

// PromoteVolume makes this site's copy primary; force promotes it even
// though the current primary cannot be asked (its site is lost). A primary
// copy is already promoted (OK).
func (s *Server) PromoteVolume(ctx context.Context, req *replication.PromoteVolumeRequest) (*replication.PromoteVolumeResponse, error) {
	t, unlock, err := s.begin(ctx, req, nil)
	if err != nil {
		return nil, err
	}
	defer unlock()
	err = t.m.PromoteImage(ctx, t.pool, t.id.Image, req.GetForce())
	if err != nil && !req.GetForce() && errors.Is(err, image.ErrBusy) {
		return nil, status.Errorf(codes.FailedPrecondition,
			"%s: %v: the other site still holds the primary copy (or its demotion has not replicated here yet): demote it there first, or promote with force if that site is lost",
			what("promote", t), err)
	}
	if err != nil {
		return nil, mirrorErr(err, "promote", t)
	}
	return &replication.PromoteVolumeResponse{}, nil
}

// DemoteVolume makes this site's copy non-primary. A non-primary copy is
// already demoted (OK); a copy staged on a node is refused
// (FailedPrecondition): its user must stop first.
func (s *Server) DemoteVolume(ctx context.Context, req *replication.DemoteVolumeRequest) (*replication.DemoteVolumeResponse, error) {
	t, unlock, err := s.begin(ctx, req, nil)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := t.m.DemoteImage(ctx, t.pool, t.id.Image); err != nil {
		if errors.Is(err, image.ErrBusy) {
			// librbd demotes through the image's owner, and the node that
			// serves it refuses to hand its lock over (nor does it demote
			// as owner): the image stays primary, nothing is half done.
			err = fmt.Errorf("%w: stop the workload that uses the volume first (so that its node unstages it), then demote; the image stays primary meanwhile", err)
		}
		return nil, mirrorErr(err, "demote", t)
	}
	return &replication.DemoteVolumeResponse{}, nil
}

// ResyncVolume makes a non-primary copy whose replication broke for good
// (rbd-mirror reports a split brain after a failback, or its client was
// disconnected for lagging: needsResync) copy the primary anew, and reports ready once
// the copy is replaying and has caught up. A healthy replica is not
// resynced unless force is set (the controller calls ResyncVolume on every
// reconcile of a secondary). A primary copy is FailedPrecondition.
func (s *Server) ResyncVolume(ctx context.Context, req *replication.ResyncVolumeRequest) (*replication.ResyncVolumeResponse, error) {
	t, unlock, err := s.begin(ctx, req, nil)
	if err != nil {
		return nil, err
	}
	defer unlock()
	log := klog.FromContext(ctx).WithValues("volumeID", t.name)
	mi, err := t.m.MirrorInfo(ctx, t.pool, t.id.Image)
	if errors.Is(err, image.ErrNotFound) && s.resyncing(t.name) {
		log.V(2).Info("Resync in progress: rbd-mirror is re-creating the image")
		return &replication.ResyncVolumeResponse{Ready: false}, nil
	}
	if err != nil {
		return nil, mirrorErr(err, "resync", t)
	}
	if !mi.Enabled {
		return nil, mirrorErr(fmt.Errorf("image %s/%s: %w", t.id.Pool, t.id.Image, storage.ErrMirroringDisabled), "resync", t)
	}
	if mi.Primary {
		return nil, status.Errorf(codes.FailedPrecondition, "%s: %v: only a non-primary copy can be resynced from its primary; demote this one first, or resync on the other site",
			what("resync", t), storage.ErrImagePrimary)
	}
	st, err := t.m.LocalMirrorStatus(ctx, t.pool, t.id.Image)
	if errors.Is(err, image.ErrNotFound) && s.resyncing(t.name) {
		log.V(2).Info("Resync in progress: rbd-mirror is removing the image")
		return &replication.ResyncVolumeResponse{Ready: false}, nil
	}
	if err != nil {
		return nil, mirrorErr(err, "resync", t)
	}
	if st.ResyncRequested {
		log.V(2).Info("Resync in progress", "state", st.State, "description", st.Description)
		return &replication.ResyncVolumeResponse{Ready: false}, nil
	}
	if req.GetForce() || needsResync(st) {
		log.Info("Requesting a resync", "force", req.GetForce(), "state", st.State, "description", st.Description)
		if err := t.m.ResyncImage(ctx, t.pool, t.id.Image); err != nil {
			return nil, mirrorErr(err, "resync", t)
		}
		s.resyncRequested(t.name)
		return &replication.ResyncVolumeResponse{Ready: false}, nil
	}
	ready, why := replayCaughtUp(st)
	if ready {
		s.resyncDone(t.name)
	}
	log.V(2).Info("Resync status", "ready", ready, "why", why)
	return &replication.ResyncVolumeResponse{Ready: ready}, nil
}

// needsResync reports whether rbd-mirror stopped replaying for good: a
// split brain (both sites were primary, after a failback) or its client
// disconnected from the primary's journal for lagging. Other errors (the
// remote not primary during a switch-over, a peer that is down) pass, and
// resyncing for them would copy the whole image for nothing.
func needsResync(st storage.MirrorSiteStatus) bool {
	return st.State == storage.MirrorStateError &&
		(strings.Contains(st.Description, "split-brain") || strings.Contains(st.Description, "disconnected"))
}

// replayCaughtUp reports whether this site's rbd-mirror replays the image
// and has nothing left to replay ("entries_behind_primary": 0 in its
// status description), and otherwise why not.
func replayCaughtUp(st storage.MirrorSiteStatus) (bool, string) {
	switch {
	case !st.Known:
		return false, "this site's rbd-mirror has reported no status for the image yet"
	case !st.Up:
		return false, "this site's rbd-mirror daemon is down"
	case st.State != storage.MirrorStateReplaying:
		return false, "rbd-mirror state " + st.State + ": " + st.Description
	}
	behind, ok := entriesBehind(st.Description)
	if !ok {
		return true, "replaying (the description has no backlog)"
	}
	return behind == 0, fmt.Sprintf("replaying, %d entries behind the primary", behind)
}

// entriesBehind reads entries_behind_primary from a journal replayer's
// status description: "replaying, {json}".
func entriesBehind(desc string) (int64, bool) {
	i := strings.IndexByte(desc, '{')
	if i < 0 {
		return 0, false
	}
	var d struct {
		EntriesBehind *int64 `json:"entries_behind_primary"`
	}
	if err := json.Unmarshal([]byte(desc[i:]), &d); err != nil || d.EntriesBehind == nil {
		return 0, false
	}
	return *d.EntriesBehind, true
}

// GetVolumeReplicationInfo reports, for a primary copy, the time up to
// which its replica holds its writes (last_sync_time): read from the
// primary's journal, where rbd-mirror commits the position of every entry
// it has replayed (storage.JournalReplication). With several peers it is
// the slowest one's. The backlog (entries, bytes, object sets) goes into
// response headers, which the v0.2.0 response has no field for.
func (s *Server) GetVolumeReplicationInfo(ctx context.Context, req *replication.GetVolumeReplicationInfoRequest) (*replication.GetVolumeReplicationInfoResponse, error) {
	t, unlock, err := s.begin(ctx, req, nil)
	if err != nil {
		return nil, err
	}
	defer unlock()
	mi, err := t.m.MirrorInfo(ctx, t.pool, t.id.Image)
	if err != nil {
		return nil, mirrorErr(err, "replication info of", t)
	}
	if !mi.Enabled {
		return nil, mirrorErr(fmt.Errorf("image %s/%s: %w", t.id.Pool, t.id.Image, storage.ErrMirroringDisabled), "replication info of", t)
	}
	if !mi.Primary {
		return nil, status.Errorf(codes.FailedPrecondition, "%s: this copy is non-primary: the replication is measured on the primary site's journal; ask that site", what("replication info of", t))
	}
	now := s.o.Now()
	peers, err := t.m.Replication(ctx, t.pool, t.id.Image)
	if err != nil {
		return nil, mirrorErr(err, "replication info of", t)
	}
	slowest := peers[0]
	for _, p := range peers[1:] {
		if p.Disconnected || (!slowest.Disconnected && ahead(slowest, p)) {
			slowest = p
		}
	}
	if slowest.Disconnected {
		return nil, status.Errorf(codes.FailedPrecondition,
			"%s: rbd-mirror peer %s fell too far behind and was disconnected from the journal (journalMaxConcurrentObjectSets): its replica can no longer catch up; ResyncVolume on that site",
			what("replication info of", t), slowest.MirrorUUID)
	}
	md := metadata.Pairs(HeaderSetsBehind, strconv.FormatUint(slowest.SetsBehind, 10))
	if slowest.Counted {
		md.Append(HeaderEntriesBehind, strconv.Itoa(slowest.EntriesBehind))
		md.Append(HeaderBytesBehind, strconv.FormatInt(slowest.BytesBehind, 10))
	}
	if err := grpc.SetHeader(ctx, md); err != nil {
		klog.FromContext(ctx).V(4).Info("No response header for the backlog", "err", err)
	}
	resp := &replication.GetVolumeReplicationInfoResponse{}
	last, ok := slowest.LastSync(now)
	if ok {
		resp.LastSyncTime = timestamppb.New(last)
	}
	klog.FromContext(ctx).V(2).Info("Replication info", "volumeID", t.name, "peer", slowest.MirrorUUID,
		"lastSync", last, "known", ok, "entriesBehind", slowest.EntriesBehind, "bytesBehind", slowest.BytesBehind, "setsBehind", slowest.SetsBehind)
	return resp, nil
}

// ahead reports whether peer a is less far behind than peer b.
func ahead(a, b storage.PeerReplication) bool {
	if a.SetsBehind != b.SetsBehind || !a.Counted || !b.Counted {
		return a.SetsBehind < b.SetsBehind || (a.SetsBehind == b.SetsBehind && a.Counted && !b.Counted)
	}
	return a.EntriesBehind < b.EntriesBehind
}
