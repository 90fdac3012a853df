package csiaddons

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/csi-addons/spec/lib/go/identity"
	"github.com/csi-addons/spec/lib/go/replication"
	"github.com/csi-rbdj/csi-rbdj/pkg/grpcserver/grpcservertest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

// fakeImage is a mirrored image of the fake Mirrorer.
type fakeImage struct {
	// statusGone: the image is being removed (its journal is gone).
	statusGone bool
	info       storage.MirrorInfo
	inUse      bool
	status     storage.MirrorSiteStatus
	peers      []storage.PeerReplication
}

// fakeMirrorer follows storage.Mirrorer's contract on a map of images; its
// pool mirroring is off when poolOff is set.
type fakeMirrorer struct {
	mu       sync.Mutex
	poolOff  bool
	images   map[string]*fakeImage
	calls    []string
	resyncs  int
	unreach  bool
	blockRun chan struct{} // PromoteImage waits on it when set
	running  chan struct{} // PromoteImage sends on it before it waits on blockRun
}

func (f *fakeMirrorer) img(name string) (*fakeImage, error) {
	if f.unreach {
		return nil, fmt.Errorf("Ceph cluster %q (monitors 192.0.2.1:6789): %w", "site-a", storage.ErrUnreachable)
	}
	i, ok := f.images[name]
	if !ok {
		return nil, fmt.Errorf("image %q: %w", name, image.ErrNotFound)
	}
	return i, nil
}

func (f *fakeMirrorer) CheckPoolMirroring(_ context.Context, p objstore.Pool) error {
	if f.poolOff {
		return fmt.Errorf("pool %q: %w: enable it with `%s`", "rbd", storage.ErrPoolMirroringDisabled, storage.PoolMirroringCommand("rbd"))
	}
	return nil
}

func (f *fakeMirrorer) EnableJournalMirroring(ctx context.Context, p objstore.Pool, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, err := f.img(name)
	if err != nil {
		return err
	}
	if i.info.Enabled {
		if i.info.Mode != storage.MirrorModeJournal {
			return storage.ErrMirrorModeConflict
		}
		return nil
	}
	if err := f.CheckPoolMirroring(ctx, p); err != nil {
		return err
	}
	f.calls = append(f.calls, "enable "+name)
	i.info.Enabled, i.info.Mode, i.info.Primary = true, storage.MirrorModeJournal, true
	return nil
}

func (f *fakeMirrorer) MirrorInfo(_ context.Context, _ objstore.Pool, name string) (storage.MirrorInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, err := f.img(name)
	if err != nil {
		return storage.MirrorInfo{}, err
	}
	return i.info, nil
}

func (f *fakeMirrorer) mirrored(name string) (*fakeImage, error) {
	i, err := f.img(name)
	if err != nil {
		return nil, err
	}
	if !i.info.Enabled {
		return nil, storage.ErrMirroringDisabled
	}
	return i, nil
}

func (f *fakeMirrorer) PromoteImage(_ context.Context, _ objstore.Pool, name string, force bool) error {
	if f.blockRun != nil {
		f.running <- struct{}{}
		<-f.blockRun
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	i, err := f.mirrored(name)
	if err != nil || i.info.Primary {
		return err
	}
	if !force && i.status.State == "peer-primary" {
		return fmt.Errorf("promote image rbd/%s: %w: device or resource busy", name, image.ErrBusy)
	}
	f.calls = append(f.calls, fmt.Sprintf("promote %s force=%v", name, force))
	i.info.Primary = true
	return nil
}

func (f *fakeMirrorer) DemoteImage(_ context.Context, _ objstore.Pool, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, err := f.mirrored(name)
	if err != nil || !i.info.Primary {
		return err
	}
	if i.inUse {
		return fmt.Errorf("image rbd/%s is in use by 1 client(s) (staged on a node): %w; unstage it before demoting it", name, image.ErrBusy)
	}
	f.calls = append(f.calls, "demote "+name)
	i.info.Primary = false
	return nil
}

func (f *fakeMirrorer) ResyncImage(_ context.Context, _ objstore.Pool, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, err := f.mirrored(name)
	if err != nil {
		return err
	}
	if i.info.Primary {
		return storage.ErrImagePrimary
	}
	f.calls = append(f.calls, "resync "+name)
	f.resyncs++
	i.status.ResyncRequested = true
	return nil
}

func (f *fakeMirrorer) DisableMirroring(_ context.Context, _ objstore.Pool, name string, force bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, err := f.img(name)
	if err != nil || !i.info.Enabled {
		return err
	}
	if !i.info.Primary && !force {
		return fmt.Errorf("image rbd/%s is a non-primary replica: %w", name, storage.ErrNotPrimary)
	}
	f.calls = append(f.calls, fmt.Sprintf("disable %s force=%v", name, force))
	i.info = storage.MirrorInfo{Primary: true}
	return nil
}

func (f *fakeMirrorer) LocalMirrorStatus(_ context.Context, _ objstore.Pool, name string) (storage.MirrorSiteStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, err := f.img(name)
	if err != nil {
		return storage.MirrorSiteStatus{}, err
	}
	if i.statusGone {
		return storage.MirrorSiteStatus{}, fmt.Errorf("image %q: journal image client: %w", name, image.ErrNotFound)
	}
	return i.status, nil
}

func (f *fakeMirrorer) Replication(_ context.Context, _ objstore.Pool, name string) ([]storage.PeerReplication, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, err := f.img(name)
	if err != nil {
		return nil, err
	}
	if len(i.peers) == 0 {
		return nil, storage.ErrNoMirrorPeer
	}
	return i.peers, nil
}

// fakeStorage is a Ceph-like Storage with only what the csi-addons server
// uses: Pool, and the Mirrorer.
type fakeStorage struct {
	storage.Storage // nil: any other method panics
	*fakeMirrorer
}

func (s fakeStorage) Backend() string   { return storage.BackendCeph }
func (s fakeStorage) ClusterID() string { return "site-a" }
func (s fakeStorage) Pool(_ context.Context, name string) (objstore.Pool, error) {
	if name != "rbd" {
		return nil, fmt.Errorf("pool %q: %w", name, storage.ErrPoolNotFound)
	}
	return nil, nil
}

// fakeBackend serves cluster "site-a" and records the secrets it was asked
// with.
type fakeBackend struct {
	st      fakeStorage
	mu      sync.Mutex
	secrets []map[string]string
}

func (b *fakeBackend) Kind() string                { return storage.BackendCeph }
func (b *fakeBackend) Clusters() ([]string, error) { return []string{"site-a"}, nil }
func (b *fakeBackend) Close() error                { return nil }
func (b *fakeBackend) Storage(_ context.Context, clusterID string, secrets map[string]string) (storage.Storage, error) {
	b.mu.Lock()
	b.secrets = append(b.secrets, secrets)
	b.mu.Unlock()
	if clusterID != "site-a" {
		return nil, fmt.Errorf("%w %q", storage.ErrUnknownCluster, clusterID)
	}
	if len(secrets) > 0 && secrets[storage.SecretUserKey] == "" {
		return nil, fmt.Errorf("%w: the secret has %q but no %q", storage.ErrNoCredentials, storage.SecretUserID, storage.SecretUserKey)
	}
	return b.st, nil
}

// serve runs a Server for b on a unix socket and returns clients of the
// spec.
func serve(t *testing.T, b storage.Backend, now func() time.Time) (identity.IdentityClient, replication.ControllerClient) {
	t.Helper()
	s, err := New(Options{Name: "rbdj.csi.example.com", Version: "test", Backend: b, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "csi-addons.sock"))
	if err != nil {
		t.Fatal(err)
	}
	conn := grpcservertest.Serve(t, l, s.Serve)
	return identity.NewIdentityClient(conn), replication.NewControllerClient(conn)
}

func volIDOf(name string) string { return "rbdj1/ceph/site-a/rbd/" + name }

func wantCode(t *testing.T, what string, err error, code codes.Code, msgs ...string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: got %v, want code %v", what, err, code)
	}
	for _, m := range msgs {
		if !strings.Contains(status.Convert(err).Message(), m) {
			t.Errorf("%s: message %q does not say %q", what, status.Convert(err).Message(), m)
		}
	}
}

func TestIdentity(t *testing.T) {
	id, _ := serve(t, &fakeBackend{}, nil)
	ctx := context.Background()
	gi, err := id.GetIdentity(ctx, &identity.GetIdentityRequest{})
	if err != nil || gi.GetName() != "rbdj.csi.example.com" || gi.GetVendorVersion() != "test" {
		t.Fatalf("GetIdentity: %v, %v", gi, err)
	}
	caps, err := id.GetCapabilities(ctx, &identity.GetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var ctrl, repl bool
	for _, c := range caps.GetCapabilities() {
		ctrl = ctrl || c.GetService().GetType() == identity.Capability_Service_CONTROLLER_SERVICE
		repl = repl || c.GetVolumeReplication().GetType() == identity.Capability_VolumeReplication_VOLUME_REPLICATION
	}
	if !ctrl || !repl {
		t.Fatalf("capabilities %v: want CONTROLLER_SERVICE and VOLUME_REPLICATION", caps)
	}
	p, err := id.Probe(ctx, &identity.ProbeRequest{})
	if err != nil || !p.GetReady().GetValue() {
		t.Fatalf("Probe: %v, %v", p, err)
	}
}

// call is one replication call of a table test.
type call func(ctx context.Context, c replication.ControllerClient) error

func enable(id string, params map[string]string) call {
	return func(ctx context.Context, c replication.ControllerClient) error {
		_, err := c.EnableVolumeReplication(ctx, &replication.EnableVolumeReplicationRequest{VolumeId: id, Parameters: params})
		return err
	}
}

func disable(id string, params map[string]string) call {
	return func(ctx context.Context, c replication.ControllerClient) error {
		_, err := c.DisableVolumeReplication(ctx, &replication.DisableVolumeReplicationRequest{VolumeId: id, Parameters: params})
		return err
	}
}

func promote(id string, force bool) call {
	return func(ctx context.Context, c replication.ControllerClient) error {
		_, err := c.PromoteVolume(ctx, &replication.PromoteVolumeRequest{VolumeId: id, Force: force})
		return err
	}
}

func demote(id string) call {
	return func(ctx context.Context, c replication.ControllerClient) error {
		_, err := c.DemoteVolume(ctx, &replication.DemoteVolumeRequest{VolumeId: id})
		return err
	}
}

func resync(id string, force bool, wantReady bool) call {
	return func(ctx context.Context, c replication.ControllerClient) error {
		r, err := c.ResyncVolume(ctx, &replication.ResyncVolumeRequest{VolumeId: id, Force: force})
		if err == nil && r.GetReady() != wantReady {
			return fmt.Errorf("ResyncVolume ready = %v, want %v", r.GetReady(), wantReady)
		}
		return err
	}
}

func info(id string) call {
	return func(ctx context.Context, c replication.ControllerClient) error {
		_, err := c.GetVolumeReplicationInfo(ctx, &replication.GetVolumeReplicationInfoRequest{VolumeId: id})
		return err
	}
}

// images of the table tests: primary (mirrored, primary), replica
// (mirrored, non-primary, replaying), plain (not mirrored), staged
// (primary, in use), broken (non-primary, rbd-mirror error), behind
// (non-primary, replaying with a backlog), peerprimary (non-primary, the
// peer still primary).
func testImages() map[string]*fakeImage {
	journal := func(primary bool) storage.MirrorInfo {
		return storage.MirrorInfo{Enabled: true, Mode: storage.MirrorModeJournal, Primary: primary, GlobalID: "g"}
	}
	replaying := func(behind int) storage.MirrorSiteStatus {
		return storage.MirrorSiteStatus{Known: true, Up: true, State: storage.MirrorStateReplaying,
			Description: fmt.Sprintf(`replaying, {"bytes_per_second":0.0,"entries_behind_primary":%d,"entries_per_second":0.0,"non_primary_position":{"entry_tid":3,"object_number":0,"tag_tid":1},"primary_position":{"entry_tid":3,"object_number":0,"tag_tid":1}}`, behind)}
	}
	return map[string]*fakeImage{
		"primary":     {info: journal(true)},
		"replica":     {info: journal(false), status: replaying(0)},
		"plain":       {info: storage.MirrorInfo{Primary: true}},
		"staged":      {info: journal(true), inUse: true},
		"broken":      {info: journal(false), status: storage.MirrorSiteStatus{Known: true, Up: true, State: storage.MirrorStateError, Description: "split-brain detected"}},
		"behind":      {info: journal(false), status: replaying(12)},
		"remoteerr":   {info: journal(false), status: storage.MirrorSiteStatus{Known: true, Up: true, State: storage.MirrorStateError, Description: "remote image is not primary"}},
		"lagged":      {info: journal(false), status: storage.MirrorSiteStatus{Known: true, Up: true, State: storage.MirrorStateError, Description: "disconnected"}},
		"down":        {info: journal(false), status: storage.MirrorSiteStatus{Known: true, Up: false, State: storage.MirrorStateReplaying}},
		"peerprimary": {info: journal(false), status: storage.MirrorSiteStatus{State: "peer-primary"}},
		"snapmode":    {info: storage.MirrorInfo{Enabled: true, Mode: "snapshot", Primary: true}},
	}
}

// TestReplicationCodes: every replication call's answer to bad input and
// to each image state, and what it did to the image.
func TestReplicationCodes(t *testing.T) {
	tests := []struct {
		name      string
		call      call
		poolOff   bool
		unreach   bool
		code      codes.Code
		msgs      []string
		wantCalls []string
	}{
		// Volume ids (as the CSI layer answers them).
		{name: "missing id", call: promote("", false), code: codes.InvalidArgument, msgs: []string{"volume_id is missing"}},
		{name: "damaged id", call: demote("rbdj1/ceph/site-a"), code: codes.InvalidArgument, msgs: []string{"malformed"}},
		{name: "foreign id", call: resync("0001-0009-rook-ceph-0000000000000001-deadbeef", false, false), code: codes.NotFound, msgs: []string{"not a csi-rbdj volume id"}},
		{name: "local id on ceph", call: enable("rbdj1/local/default/rbd/csi-vol-0", nil), code: codes.FailedPrecondition, msgs: []string{"backend \"local\""}},
		{name: "unknown cluster", call: info("rbdj1/ceph/site-z/rbd/primary"), code: codes.FailedPrecondition, msgs: []string{"site-z"}},
		{name: "unknown pool", call: promote("rbdj1/ceph/site-a/nopool/primary", false), code: codes.NotFound, msgs: []string{"nopool"}},
		{name: "unknown image", call: demote(volIDOf("gone")), code: codes.NotFound, msgs: []string{"gone"}},
		{name: "cluster down", call: promote(volIDOf("replica"), false), unreach: true, code: codes.Unavailable, msgs: []string{"192.0.2.1:6789", "promote rbd/replica"}},

		// Enable.
		{name: "enable", call: enable(volIDOf("plain"), map[string]string{ParamMirroringMode: "journal", ParamSchedulingInterval: "1m"}), wantCalls: []string{"enable plain"}},
		{name: "enable default mode", call: enable(volIDOf("plain"), nil), wantCalls: []string{"enable plain"}},
		{name: "enable again", call: enable(volIDOf("primary"), nil)},
		{name: "enable snapshot mode", call: enable(volIDOf("plain"), map[string]string{ParamMirroringMode: "snapshot"}), code: codes.InvalidArgument, msgs: []string{"only journal mirroring is supported"}},
		{name: "enable unknown mode", call: enable(volIDOf("plain"), map[string]string{ParamMirroringMode: "bogus"}), code: codes.InvalidArgument, msgs: []string{"bogus"}},
		{name: "enable pool without mirroring", call: enable(volIDOf("plain"), nil), poolOff: true, code: codes.FailedPrecondition, msgs: []string{"rbd mirror pool enable rbd image"}},
		{name: "enable snapshot-mirrored image", call: enable(volIDOf("snapmode"), nil), code: codes.FailedPrecondition, msgs: []string{"another mode"}},

		// Disable.
		{name: "disable primary", call: disable(volIDOf("primary"), nil), wantCalls: []string{"disable primary force=false"}},
		{name: "disable unmirrored", call: disable(volIDOf("plain"), nil)},
		{name: "disable replica", call: disable(volIDOf("replica"), nil), code: codes.FailedPrecondition, msgs: []string{"non-primary"}},
		{name: "disable replica force", call: disable(volIDOf("replica"), map[string]string{ParamForce: "true"}), wantCalls: []string{"disable replica force=true"}},
		{name: "disable bad force", call: disable(volIDOf("replica"), map[string]string{ParamForce: "yes please"}), code: codes.InvalidArgument, msgs: []string{"force"}},

		// Promote.
		{name: "promote replica", call: promote(volIDOf("replica"), false), wantCalls: []string{"promote replica force=false"}},
		{name: "promote primary (idempotent)", call: promote(volIDOf("primary"), false)},
		{name: "promote force", call: promote(volIDOf("peerprimary"), true), wantCalls: []string{"promote peerprimary force=true"}},
		{name: "promote peer still primary", call: promote(volIDOf("peerprimary"), false), code: codes.FailedPrecondition, msgs: []string{"other site still holds the primary", "force"}},
		{name: "promote unmirrored", call: promote(volIDOf("plain"), false), code: codes.FailedPrecondition, msgs: []string{"not enabled"}},

		// Demote.
		{name: "demote primary", call: demote(volIDOf("primary")), wantCalls: []string{"demote primary"}},
		{name: "demote replica (idempotent)", call: demote(volIDOf("replica"))},
		{name: "demote staged", call: demote(volIDOf("staged")), code: codes.FailedPrecondition, msgs: []string{"in use", "unstage", "stop the workload", "stays primary"}},

		// Resync.
		{name: "resync primary", call: resync(volIDOf("primary"), false, false), code: codes.FailedPrecondition, msgs: []string{"primary", "demote"}},
		{name: "resync unmirrored", call: resync(volIDOf("plain"), false, false), code: codes.FailedPrecondition, msgs: []string{"not enabled"}},
		{name: "resync healthy replica: ready, no resync", call: resync(volIDOf("replica"), false, true)},
		{name: "resync forced", call: resync(volIDOf("replica"), true, false), wantCalls: []string{"resync replica"}},
		{name: "resync split brain", call: resync(volIDOf("broken"), false, false), wantCalls: []string{"resync broken"}},
		{name: "resync disconnected replica", call: resync(volIDOf("lagged"), false, false), wantCalls: []string{"resync lagged"}},
		{name: "resync transient error: not ready, no resync", call: resync(volIDOf("remoteerr"), false, false)},
		{name: "resync replica behind: not ready", call: resync(volIDOf("behind"), false, false)},
		{name: "resync rbd-mirror down: not ready", call: resync(volIDOf("down"), false, false)},

		// Info (its values: TestReplicationInfo).
		{name: "info replica", call: info(volIDOf("replica")), code: codes.FailedPrecondition, msgs: []string{"non-primary", "primary site"}},
		{name: "info no peer yet", call: info(volIDOf("primary")), code: codes.NotFound, msgs: []string{"no rbd-mirror peer"}},
		{name: "info unmirrored", call: info(volIDOf("plain")), code: codes.FailedPrecondition, msgs: []string{"not enabled"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &fakeMirrorer{images: testImages(), poolOff: tt.poolOff, unreach: tt.unreach}
			_, c := serve(t, &fakeBackend{st: fakeStorage{fakeMirrorer: m}}, nil)
			err := tt.call(context.Background(), c)
			if tt.code == codes.OK && err != nil {
				t.Fatalf("got %v, want success", err)
			}
			wantCode(t, tt.name, err, tt.code, tt.msgs...)
			if strings.Join(m.calls, "; ") != strings.Join(tt.wantCalls, "; ") {
				t.Errorf("mirror operations %q, want %q", m.calls, tt.wantCalls)
			}
		})
	}
}

// TestReplicationSource: newer csi-addons sidecars name the volume by
// replication_source only; a volume group is Unimplemented; volume_id and
// replication_source naming different volumes is InvalidArgument.
func TestReplicationSource(t *testing.T) {
	m := &fakeMirrorer{images: testImages()}
	_, c := serve(t, &fakeBackend{st: fakeStorage{fakeMirrorer: m}}, nil)
	ctx := context.Background()
	src := func(id string) *replication.ReplicationSource {
		return &replication.ReplicationSource{Type: &replication.ReplicationSource_Volume{Volume: &replication.ReplicationSource_VolumeSource{VolumeId: id}}}
	}
	if _, err := c.DemoteVolume(ctx, &replication.DemoteVolumeRequest{ReplicationSource: src(volIDOf("primary"))}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(m.calls, ";") != "demote primary" {
		t.Fatalf("calls %v", m.calls)
	}
	if _, err := c.PromoteVolume(ctx, &replication.PromoteVolumeRequest{VolumeId: volIDOf("primary"), ReplicationSource: src(volIDOf("primary"))}); err != nil {
		t.Fatal(err)
	}
	_, err := c.GetVolumeReplicationInfo(ctx, &replication.GetVolumeReplicationInfoRequest{ReplicationSource: src(volIDOf("gone"))})
	wantCode(t, "info of a missing volume by source", err, codes.NotFound, "gone")
	_, err = c.PromoteVolume(ctx, &replication.PromoteVolumeRequest{VolumeId: volIDOf("primary"), ReplicationSource: src(volIDOf("replica"))})
	wantCode(t, "differing ids", err, codes.InvalidArgument, "differ")
	_, err = c.EnableVolumeReplication(ctx, &replication.EnableVolumeReplicationRequest{ReplicationSource: &replication.ReplicationSource{
		Type: &replication.ReplicationSource_Volumegroup{Volumegroup: &replication.ReplicationSource_VolumeGroupSource{VolumeGroupId: "g1"}}}})
	wantCode(t, "volume group", err, codes.Unimplemented, "volume group")
	_, err = c.ResyncVolume(ctx, &replication.ResyncVolumeRequest{})
	wantCode(t, "no volume", err, codes.InvalidArgument, "volume_id is missing")
}

// TestResyncSequence: the controller's repeated ResyncVolume calls on a
// split-brained replica request one resync, then wait (not ready) while
// it runs, then report ready once rbd-mirror replays with no backlog.
func TestResyncSequence(t *testing.T) {
	m := &fakeMirrorer{images: testImages()}
	_, c := serve(t, &fakeBackend{st: fakeStorage{fakeMirrorer: m}}, nil)
	ctx := context.Background()
	id := volIDOf("broken")
	for range 3 {
		if err := resync(id, false, false)(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if m.resyncs != 1 {
		t.Fatalf("%d resyncs requested, want 1", m.resyncs)
	}
	// rbd-mirror deletes the image (its journal first) and creates it
	// anew: meanwhile the resync is in progress (not NotFound).
	m.mu.Lock()
	m.images["broken"].statusGone = true
	m.mu.Unlock()
	if err := resync(id, false, false)(ctx, c); err != nil {
		t.Fatalf("resync while rbd-mirror removes the image: %v", err)
	}
	m.mu.Lock()
	img := m.images["broken"]
	img.statusGone = false
	delete(m.images, "broken")
	m.mu.Unlock()
	if err := resync(id, false, false)(ctx, c); err != nil {
		t.Fatalf("resync while rbd-mirror re-creates the image: %v", err)
	}
	m.mu.Lock()
	img.status = testImages()["replica"].status // re-created, caught up
	m.images["broken"] = img
	m.mu.Unlock()
	if err := resync(id, false, true)(ctx, c); err != nil {
		t.Fatal(err)
	}
	// Done: a missing image is NotFound again.
	m.mu.Lock()
	delete(m.images, "broken")
	m.mu.Unlock()
	err := resync(id, false, false)(ctx, c)
	wantCode(t, "resync of a missing image after the resync finished", err, codes.NotFound)
	if m.resyncs != 1 {
		t.Fatalf("%d resyncs requested, want 1", m.resyncs)
	}
}

// TestSecrets: the request's secrets reach the backend (the replication
// secret); a secret without a key is InvalidArgument naming the
// VolumeReplicationClass parameters; no secrets: the default credentials
// (nil secrets).
func TestSecrets(t *testing.T) {
	m := &fakeMirrorer{images: testImages()}
	b := &fakeBackend{st: fakeStorage{fakeMirrorer: m}}
	_, c := serve(t, b, nil)
	ctx := context.Background()
	sec := map[string]string{storage.SecretUserID: "mirror", storage.SecretUserKey: "AQD=="}
	if _, err := c.PromoteVolume(ctx, &replication.PromoteVolumeRequest{VolumeId: volIDOf("primary"), Secrets: sec}); err != nil {
		t.Fatal(err)
	}
	_, err := c.DemoteVolume(ctx, &replication.DemoteVolumeRequest{VolumeId: volIDOf("primary"), Secrets: map[string]string{storage.SecretUserID: "mirror"}})
	wantCode(t, "secret without key", err, codes.InvalidArgument, "replication.storage.openshift.io/replication-secret-name")
	if strings.Contains(status.Convert(err).Message(), "AQD") {
		t.Errorf("the key leaked into the error: %v", err)
	}
	if _, err := c.DemoteVolume(ctx, &replication.DemoteVolumeRequest{VolumeId: volIDOf("replica")}); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.secrets) != 3 || b.secrets[0][storage.SecretUserID] != "mirror" || len(b.secrets[2]) != 0 {
		t.Fatalf("backend asked with secrets %v", b.secrets)
	}
}

// TestConcurrentCallAborted: a second call on a volume while one runs is
// Aborted (the spec's "operation pending for volume").
func TestConcurrentCallAborted(t *testing.T) {
	m := &fakeMirrorer{images: testImages(), blockRun: make(chan struct{}), running: make(chan struct{})}
	_, c := serve(t, &fakeBackend{st: fakeStorage{fakeMirrorer: m}}, nil)
	ctx := context.Background()
	first := make(chan error, 1)
	go func() { first <- promote(volIDOf("replica"), false)(ctx, c) }()
	// The second call starts only once the first is inside the backend:
	// started any earlier, it may win the volume's lock itself and the
	// promotion is the one Aborted.
	select {
	case <-m.running:
	case err := <-first:
		t.Fatalf("first call returned before it reached the backend: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("first call did not reach the backend in 10s")
	}
	err := demote(volIDOf("replica"))(ctx, c)
	close(m.blockRun)
	wantCode(t, "second call", err, codes.Aborted, "in progress")
	if err := <-first; err != nil {
		t.Fatal(err)
	}
}

// TestReplicationInfo: last_sync_time and the backlog headers of the
// slowest peer.
func TestReplicationInfo(t *testing.T) {
	now := time.Date(2026, 12, 6, 5, 0, 0, 0, time.UTC)
	pending := now.Add(-42 * time.Second)
	tests := []struct {
		name     string
		peers    []storage.PeerReplication
		code     codes.Code
		wantSync time.Time // zero: no last_sync_time
		entries  string
		sets     string
	}{
		{name: "caught up", peers: []storage.PeerReplication{{MirrorUUID: "b", Counted: true}}, wantSync: now, entries: "0", sets: "0"},
		{name: "behind", peers: []storage.PeerReplication{{MirrorUUID: "b", Counted: true, EntriesBehind: 7, BytesBehind: 7 << 12, OldestPending: pending}},
			wantSync: pending, entries: "7", sets: "0"},
		{name: "slowest of two", peers: []storage.PeerReplication{
			{MirrorUUID: "b", Counted: true},
			{MirrorUUID: "c", Counted: true, EntriesBehind: 3, OldestPending: pending},
		}, wantSync: pending, entries: "3", sets: "0"},
		{name: "too far to count", peers: []storage.PeerReplication{{MirrorUUID: "b", Counted: true}, {MirrorUUID: "c", SetsBehind: 9}}, sets: "9"},
		{name: "disconnected", peers: []storage.PeerReplication{{MirrorUUID: "b", Counted: true}, {MirrorUUID: "c", Disconnected: true}}, code: codes.FailedPrecondition},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			imgs := testImages()
			imgs["primary"].peers = tt.peers
			m := &fakeMirrorer{images: imgs}
			_, c := serve(t, &fakeBackend{st: fakeStorage{fakeMirrorer: m}}, func() time.Time { return now })
			var hdr metadata.MD
			r, err := c.GetVolumeReplicationInfo(context.Background(), &replication.GetVolumeReplicationInfoRequest{VolumeId: volIDOf("primary")}, grpc.Header(&hdr))
			if tt.code != codes.OK {
				wantCode(t, "info", err, tt.code, "ResyncVolume")
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tt.wantSync.IsZero() && r.GetLastSyncTime() != nil:
				t.Errorf("last_sync_time %v, want none", r.GetLastSyncTime().AsTime())
			case !tt.wantSync.IsZero() && !r.GetLastSyncTime().AsTime().Equal(tt.wantSync):
				t.Errorf("last_sync_time %v, want %v", r.GetLastSyncTime().AsTime(), tt.wantSync)
			}
			if got := strings.Join(hdr.Get(HeaderEntriesBehind), ","); got != tt.entries {
				t.Errorf("entries behind %q, want %q", got, tt.entries)
			}
			if got := strings.Join(hdr.Get(HeaderSetsBehind), ","); got != tt.sets {
				t.Errorf("sets behind %q, want %q", got, tt.sets)
			}
		})
	}
}

// TestLocalBackend: the local backend cannot mirror: FailedPrecondition
// saying so (a real local backend).
func TestLocalBackend(t *testing.T) {
	b, err := storage.OpenLocal(storage.LocalOptions{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, c := serve(t, b, nil)
	ctx := context.Background()
	if _, err := b.EnsurePool(ctx, "rbd"); err != nil {
		t.Fatal(err)
	}
	id := volume.VolumeID{Backend: storage.BackendLocal, Cluster: "default", Pool: "rbd", Image: "csi-vol-x"}.String()
	for _, cl := range []call{enable(id, nil), promote(id, true), demote(id), resync(id, false, false), info(id), disable(id, nil)} {
		wantCode(t, "local", cl(ctx, c), codes.FailedPrecondition, "mirroring needs the Ceph backend")
	}
}
