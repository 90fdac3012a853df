package nodeserver

// Unit tests of the Node service's argument checks and state handling. They
// need no root, no kernel devices and no cluster: the backend is a fake, the
// staging filesystem is mounted by a fake mounter, and a served volume is
// stood in for by records and a placeholder device (never used for I/O).
// The real-kernel paths are tested in pkg/driver (csi-sanity, takeover)
// and cmd/csi-rbdj (restarts).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
	testingexec "k8s.io/utils/exec/testing"
)

const (
	testVolID  = "rbdj1/local/default/rbd/csi-vol-0123456789abcdef01234567"
	otherVolID = "rbdj1/local/default/rbd/csi-vol-76543210fedcba9876543210"
	cephVolID  = "rbdj1/ceph/ceph-a/rbd/csi-vol-0123456789abcdef01234567"
)

// fakeBackend hands out st, or fails with err.
type fakeBackend struct {
	kind string
	st   storage.Storage
	err  error

	secrets []map[string]string // of every Storage call
}

func (b *fakeBackend) Kind() string                { return b.kind }
func (b *fakeBackend) Clusters() ([]string, error) { return []string{"default"}, nil }
func (b *fakeBackend) Close() error                { return nil }

func (b *fakeBackend) Storage(_ context.Context, _ string, secrets map[string]string) (storage.Storage, error) {
	b.secrets = append(b.secrets, secrets)
	if b.err != nil {
		return nil, b.err
	}
	return b.st, nil
}

// fakeStorage has no pools. The embedded nil interface makes any other
// call panic: these tests must not reach it.
type fakeStorage struct{ storage.Storage }

func (fakeStorage) Backend() string   { return storage.BackendLocal }
func (fakeStorage) ClusterID() string { return "default" }
func (fakeStorage) Pool(_ context.Context, name string) (objstore.Pool, error) {
	return nil, fmt.Errorf("pool %q: %w", name, storage.ErrPoolNotFound)
}

// testServer is a started Server on a fake backend and a fake mounter.
type testServer struct {
	*Server
	backend *fakeBackend
	mounter *mount.FakeMounter
	exec    *testingexec.FakeExec
}

// newTestServer starts a server on stateDir ("": a new one), re-serving
// the records already there, and waits until it is ready.
func newTestServer(t *testing.T, b *fakeBackend, stateDir string) *testServer {
	t.Helper()
	if b == nil {
		b = &fakeBackend{kind: storage.BackendLocal, st: fakeStorage{}}
	}
	if stateDir == "" {
		stateDir = t.TempDir()
	}
	fm := mount.NewFakeMounter(nil)
	fe := &testingexec.FakeExec{}
	s, err := New(Options{NodeID: "node-1", StateDir: stateDir, Backend: b,
		Mounter: &mount.SafeFormatAndMount{Interface: fm, Exec: fe}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.Start(ctx)
	if err := s.waitReady(ctx); err != nil {
		t.Fatalf("server not ready: %v", err)
	}
	t.Cleanup(func() {
		// Placeholder devices cannot be closed: forget them first.
		s.mu.Lock()
		for _, v := range s.vols {
			v.dev = nil
		}
		s.mu.Unlock()
		s.Stop(context.Background())
	})
	return &testServer{Server: s, backend: b, mounter: fm, exec: fe}
}

// stage records a volume as staged (and, with served, as served by a
// placeholder device) without touching the kernel.
func (ts *testServer) stage(t *testing.T, r *record, served bool) *stagedVolume {
	t.Helper()
	if r.Key == "" {
		r.Key = volumeKey(r.VolumeID)
	}
	if r.Publish == nil {
		r.Publish = map[string]publication{}
	}
	if r.AckPolicy == "" {
		r.AckPolicy = volume.DefaultAckPolicy
	}
	if err := ts.store.save(r); err != nil {
		t.Fatal(err)
	}
	v := &stagedVolume{rec: r, err: errors.New("not served (test)")}
	if served {
		v.dev, v.err = &blockdev.Device{}, nil
	}
	ts.set(r.VolumeID, v)
	return v
}

// saved returns the record of id on disk (nil if there is none).
func (ts *testServer) saved(t *testing.T, id string) *record {
	t.Helper()
	recs, _ := ts.store.load() // unreadable records are some tests' subject
	for _, r := range recs {
		if r.VolumeID == id {
			return r
		}
	}
	return nil
}

func mountCap(mode csi.VolumeCapability_AccessMode_Mode, fs string, flags ...string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs, MountFlags: flags}},
	}
}

func blockCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	}
}

const (
	rwo  = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	rop  = csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
	rwop = csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
	rwx  = csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
)

// wantCode checks err's code and that its message contains want.
func wantCode(t *testing.T, err error, code codes.Code, want string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code || !strings.Contains(st.Message(), want) {
		t.Errorf("got %v %q, want %v with %q", st.Code(), st.Message(), code, want)
	}
}

// rpc is a table entry's call: method m of the server with req; only the
// error counts.
func rpc[Req, Resp any](m func(*Server, context.Context, Req) (Resp, error), req Req) func(context.Context, *Server) error {
	return func(ctx context.Context, s *Server) error {
		_, err := m(s, ctx, req)
		return err
	}
}

func TestArgumentChecks(t *testing.T) {
	dir := t.TempDir()
	staging := filepath.Join(dir, "staging")
	if err := os.Mkdir(staging, 0o755); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "target")
	stageReq := func(f func(*csi.NodeStageVolumeRequest)) func(context.Context, *Server) error {
		req := &csi.NodeStageVolumeRequest{VolumeId: testVolID, StagingTargetPath: staging, VolumeCapability: mountCap(rwo, "ext4")}
		f(req)
		return rpc((*Server).NodeStageVolume, req)
	}
	publishReq := func(f func(*csi.NodePublishVolumeRequest)) func(context.Context, *Server) error {
		req := &csi.NodePublishVolumeRequest{VolumeId: testVolID, StagingTargetPath: staging, TargetPath: target, VolumeCapability: mountCap(rwo, "ext4")}
		f(req)
		return rpc((*Server).NodePublishVolume, req)
	}
	ceph := func(err error) *fakeBackend { return &fakeBackend{kind: storage.BackendCeph, err: err} }
	for _, tc := range []struct {
		name    string
		backend *fakeBackend // nil: local, with a storage without pools
		call    func(context.Context, *Server) error
		code    codes.Code
		msg     string
	}{
		// NodeStageVolume: the request itself.
		{name: "stage/no volume id", call: stageReq(func(r *csi.NodeStageVolumeRequest) { r.VolumeId = "" }), code: codes.InvalidArgument, msg: "volume_id is missing"},
		{name: "stage/no staging path", call: stageReq(func(r *csi.NodeStageVolumeRequest) { r.StagingTargetPath = "" }), code: codes.InvalidArgument, msg: "staging_target_path is missing"},
		{name: "stage/no capability", call: stageReq(func(r *csi.NodeStageVolumeRequest) { r.VolumeCapability = nil }), code: codes.InvalidArgument, msg: "volume_capability is missing"},
		{name: "stage/multi-node mode", call: stageReq(func(r *csi.NodeStageVolumeRequest) { r.VolumeCapability = mountCap(rwx, "") }), code: codes.InvalidArgument, msg: "MULTI_NODE_MULTI_WRITER is not supported"},
		{name: "stage/no access mode", call: stageReq(func(r *csi.NodeStageVolumeRequest) { r.VolumeCapability.AccessMode = nil }), code: codes.InvalidArgument, msg: "no access mode"},
		{name: "stage/no access type", call: stageReq(func(r *csi.NodeStageVolumeRequest) { r.VolumeCapability.AccessType = nil }), code: codes.InvalidArgument, msg: "no access type"},
		{name: "stage/unsupported fs", call: stageReq(func(r *csi.NodeStageVolumeRequest) { r.VolumeCapability = mountCap(rwo, "btrfs") }), code: codes.InvalidArgument, msg: `filesystem "btrfs" is not supported`},
		{name: "stage/mount group", call: stageReq(func(r *csi.NodeStageVolumeRequest) { r.VolumeCapability.GetMount().VolumeMountGroup = "1000" }), code: codes.InvalidArgument, msg: "volume_mount_group"},
		{name: "stage/unsupported fs in context", call: stageReq(func(r *csi.NodeStageVolumeRequest) {
			r.VolumeCapability = mountCap(rwo, "")
			r.VolumeContext = map[string]string{volume.CtxFsType: "zfs"}
		}), code: codes.InvalidArgument, msg: `filesystem "zfs" is not supported`},
		{name: "stage/unknown ack policy", call: stageReq(func(r *csi.NodeStageVolumeRequest) { r.VolumeContext = map[string]string{volume.CtxAckPolicy: "async"} }), code: codes.InvalidArgument, msg: `volume_context csi-rbdj.dev/ackPolicy: unknown ack policy "async"`},
		{name: "stage/foreign volume id", call: stageReq(func(r *csi.NodeStageVolumeRequest) { r.VolumeId = "pvc-1234" }), code: codes.NotFound, msg: "does not exist"},
		{name: "stage/damaged volume id", call: stageReq(func(r *csi.NodeStageVolumeRequest) { r.VolumeId = "rbdj1/local/default/rbd" }), code: codes.InvalidArgument, msg: "malformed csi-rbdj volume id"},
		{name: "stage/volume of another backend", call: stageReq(func(r *csi.NodeStageVolumeRequest) { r.VolumeId = cephVolID }), code: codes.FailedPrecondition, msg: `this plugin serves backend "local"`},
		{name: "stage/staging path missing", call: stageReq(func(r *csi.NodeStageVolumeRequest) { r.StagingTargetPath = filepath.Join(dir, "nope") }), code: codes.InvalidArgument, msg: "must be an existing directory"},
		// NodeStageVolume: what the backend says.
		{name: "stage/no pool", call: stageReq(func(*csi.NodeStageVolumeRequest) {}), code: codes.NotFound, msg: `pool "rbd": pool not found`},
		{name: "stage/no credentials", backend: ceph(storage.ErrNoCredentials), call: stageReq(func(r *csi.NodeStageVolumeRequest) { r.VolumeId = cephVolID }),
			code: codes.InvalidArgument, msg: "csi.storage.k8s.io/node-stage-secret-name"},
		{name: "stage/unknown cluster", backend: ceph(fmt.Errorf("%w %q", storage.ErrUnknownCluster, "ceph-a")), call: stageReq(func(r *csi.NodeStageVolumeRequest) { r.VolumeId = cephVolID }),
			code: codes.FailedPrecondition, msg: `unknown cluster id "ceph-a"`},
		{name: "stage/cluster unreachable", backend: ceph(fmt.Errorf("monitors 10.0.0.1:6789: %w", storage.ErrUnreachable)), call: stageReq(func(r *csi.NodeStageVolumeRequest) { r.VolumeId = cephVolID }),
			code: codes.Unavailable, msg: "10.0.0.1:6789"},
		{name: "stage/credentials rejected", backend: ceph(fmt.Errorf("client.csi: %w", storage.ErrBadCredentials)), call: stageReq(func(r *csi.NodeStageVolumeRequest) { r.VolumeId = cephVolID }),
			code: codes.Unauthenticated, msg: "client.csi"},

		// NodeUnstageVolume.
		{name: "unstage/no volume id", call: rpc((*Server).NodeUnstageVolume, &csi.NodeUnstageVolumeRequest{StagingTargetPath: staging}), code: codes.InvalidArgument, msg: "volume_id is missing"},
		{name: "unstage/no staging path", call: rpc((*Server).NodeUnstageVolume, &csi.NodeUnstageVolumeRequest{VolumeId: testVolID}), code: codes.InvalidArgument, msg: "staging_target_path is missing"},
		{name: "unstage/not staged", call: rpc((*Server).NodeUnstageVolume, &csi.NodeUnstageVolumeRequest{VolumeId: testVolID, StagingTargetPath: staging}), code: codes.OK},

		// NodePublishVolume.
		{name: "publish/no volume id", call: publishReq(func(r *csi.NodePublishVolumeRequest) { r.VolumeId = "" }), code: codes.InvalidArgument, msg: "volume_id is missing"},
		{name: "publish/no target", call: publishReq(func(r *csi.NodePublishVolumeRequest) { r.TargetPath = "" }), code: codes.InvalidArgument, msg: "target_path is missing"},
		{name: "publish/no capability", call: publishReq(func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability = nil }), code: codes.InvalidArgument, msg: "volume_capability is missing"},
		{name: "publish/no staging path", call: publishReq(func(r *csi.NodePublishVolumeRequest) { r.StagingTargetPath = "" }), code: codes.InvalidArgument, msg: "call NodeStageVolume first"},
		{name: "publish/multi-node mode", call: publishReq(func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability = blockCap(rwx) }), code: codes.InvalidArgument, msg: "MULTI_NODE_MULTI_WRITER is not supported"},
		{name: "publish/foreign volume id", call: publishReq(func(r *csi.NodePublishVolumeRequest) { r.VolumeId = "fake-vol" }), code: codes.NotFound, msg: "does not exist"},
		{name: "publish/volume of another backend", call: publishReq(func(r *csi.NodePublishVolumeRequest) { r.VolumeId = cephVolID }), code: codes.FailedPrecondition, msg: `backend "ceph"`},
		{name: "publish/not staged", call: publishReq(func(*csi.NodePublishVolumeRequest) {}), code: codes.FailedPrecondition, msg: "is not staged at " + staging},

		// NodeUnpublishVolume.
		{name: "unpublish/no volume id", call: rpc((*Server).NodeUnpublishVolume, &csi.NodeUnpublishVolumeRequest{TargetPath: target}), code: codes.InvalidArgument, msg: "volume_id is missing"},
		{name: "unpublish/no target", call: rpc((*Server).NodeUnpublishVolume, &csi.NodeUnpublishVolumeRequest{VolumeId: testVolID}), code: codes.InvalidArgument, msg: "target_path is missing"},
		{name: "unpublish/not published", call: rpc((*Server).NodeUnpublishVolume, &csi.NodeUnpublishVolumeRequest{VolumeId: testVolID, TargetPath: target}), code: codes.OK},

		// NodeGetVolumeStats.
		{name: "stats/no volume id", call: rpc((*Server).NodeGetVolumeStats, &csi.NodeGetVolumeStatsRequest{VolumePath: staging}), code: codes.InvalidArgument, msg: "volume_id is missing"},
		{name: "stats/no path", call: rpc((*Server).NodeGetVolumeStats, &csi.NodeGetVolumeStatsRequest{VolumeId: testVolID}), code: codes.InvalidArgument, msg: "volume_path is missing"},
		{name: "stats/not staged", call: rpc((*Server).NodeGetVolumeStats, &csi.NodeGetVolumeStatsRequest{VolumeId: testVolID, VolumePath: staging}), code: codes.NotFound, msg: "is not staged on this node"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestServer(t, tc.backend, "")
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			wantCode(t, tc.call(ctx, ts.Server), tc.code, tc.msg)
			if recs, _ := ts.store.load(); len(recs) != 0 {
				t.Errorf("a failed or empty call left %d staging records", len(recs))
			}
			if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a failed call created the target: %v", err)
			}
		})
	}
}

func TestNewChecksOptions(t *testing.T) {
	b := &fakeBackend{kind: storage.BackendLocal}
	for _, tc := range []struct {
		name string
		o    Options
		msg  string
	}{
		{"no node id", Options{StateDir: t.TempDir(), Backend: b}, "node id is empty"},
		{"no state dir", Options{NodeID: "n", Backend: b}, "state directory is empty"},
		{"no backend", Options{NodeID: "n", StateDir: t.TempDir()}, "no storage backend"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.o); err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("New = %v, want an error with %q", err, tc.msg)
			}
		})
	}
}

// TestStageAgain covers NodeStageVolume on a volume this node has staged.
func TestStageAgain(t *testing.T) {
	dir := t.TempDir()
	staging := filepath.Join(dir, "staging")
	for _, tc := range []struct {
		name   string
		staged record // what is staged (VolumeID, StagingPath filled in)
		served bool
		req    *csi.NodeStageVolumeRequest // VolumeId, StagingTargetPath filled in unless set
		code   codes.Code
		msg    string
	}{
		{name: "other staging path", staged: record{StagingPath: filepath.Join(dir, "elsewhere"), FsType: "ext4"}, served: true,
			req: &csi.NodeStageVolumeRequest{VolumeCapability: mountCap(rwo, "ext4")}, code: codes.FailedPrecondition, msg: "already staged at " + filepath.Join(dir, "elsewhere")},
		{name: "block vs filesystem", staged: record{Block: true}, served: true,
			req: &csi.NodeStageVolumeRequest{VolumeCapability: mountCap(rwo, "ext4")}, code: codes.AlreadyExists, msg: "block true vs false"},
		{name: "other fs", staged: record{FsType: "xfs"}, served: true,
			req: &csi.NodeStageVolumeRequest{VolumeCapability: mountCap(rwo, "ext4")}, code: codes.AlreadyExists, msg: "fsType xfs vs ext4"},
		{name: "other mount flags", staged: record{FsType: "ext4", MountFlags: []string{"noatime"}}, served: true,
			req: &csi.NodeStageVolumeRequest{VolumeCapability: mountCap(rwo, "ext4")}, code: codes.AlreadyExists, msg: "mount flags [noatime] vs []"},
		{name: "read-only vs read-write", staged: record{Block: true, ReadOnly: true}, served: true,
			req: &csi.NodeStageVolumeRequest{VolumeCapability: blockCap(rwo)}, code: codes.AlreadyExists, msg: "read-only true vs false"},
		{name: "same block volume", staged: record{Block: true}, served: true,
			req: &csi.NodeStageVolumeRequest{VolumeCapability: blockCap(rwop)}, code: codes.OK},
		{name: "not served: retried with the request's secrets", staged: record{Block: true},
			req:  &csi.NodeStageVolumeRequest{VolumeCapability: blockCap(rwo), Secrets: map[string]string{storage.SecretUserID: "csi"}},
			code: codes.Unavailable, msg: "cluster unreachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &fakeBackend{kind: storage.BackendLocal, err: storage.ErrUnreachable}
			ts := newTestServer(t, b, "")
			r := tc.staged
			r.VolumeID = testVolID
			if r.StagingPath == "" {
				r.StagingPath = staging
			}
			v := ts.stage(t, &r, tc.served)
			req := tc.req
			req.VolumeId, req.StagingTargetPath = testVolID, staging
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := ts.NodeStageVolume(ctx, req)
			wantCode(t, err, tc.code, tc.msg)
			if tc.served && len(b.secrets) != 0 {
				t.Errorf("a staged, served volume was opened again")
			}
			if !tc.served {
				if len(b.secrets) != 1 || b.secrets[0][storage.SecretUserID] != "csi" {
					t.Errorf("storage opened with %v, want once with the request's secrets", b.secrets)
				}
				if v.err == nil || !strings.Contains(v.err.Error(), "cluster unreachable") {
					t.Errorf("volume error %v, want the new failure", v.err)
				}
			}
			if ts.get(testVolID) != v || ts.saved(t, testVolID) == nil {
				t.Error("a repeated stage changed what is staged")
			}
		})
	}
}

// TestStageAgainRemounts stages a served filesystem volume whose staging
// mount is gone: the device is mounted again with the recorded options.
func TestStageAgainRemounts(t *testing.T) {
	for _, tc := range []struct {
		name     string
		rec      record
		cap      *csi.VolumeCapability
		commands []string // run by the fake exec
		opts     []string // of the mount
	}{
		{name: "ext4", rec: record{FsType: "ext4", MountFlags: []string{"noatime"}}, cap: mountCap(rwo, "ext4", "noatime"),
			commands: []string{"blkid", "blkid", "fsck"}, opts: []string{"noatime", "defaults"}}, // blkid twice: the format gate's, FormatAndMount's
		{name: "xfs read-only", rec: record{FsType: "xfs", ReadOnly: true}, cap: mountCap(rop, "xfs"),
			commands: []string{"blkid", "blkid"}, opts: []string{"ro", "nouuid", "defaults"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestServer(t, nil, "")
			staging := t.TempDir()
			r := tc.rec
			r.VolumeID, r.StagingPath, r.Device = testVolID, staging, "/dev/loop42"
			ts.stage(t, &r, true)
			var ran []string
			for range tc.commands {
				ts.exec.CommandScript = append(ts.exec.CommandScript, func(cmd string, args ...string) utilexec.Cmd {
					ran = append(ran, cmd)
					out := ""
					if cmd == "blkid" {
						out = "TYPE=" + tc.rec.FsType + "\n"
					}
					return testingexec.InitFakeCmd(&testingexec.FakeCmd{CombinedOutputScript: []testingexec.FakeAction{
						func() ([]byte, []byte, error) { return []byte(out), nil, nil }}}, cmd, args...)
				})
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := ts.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: testVolID, StagingTargetPath: staging, VolumeCapability: tc.cap}); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ran, tc.commands) {
				t.Errorf("ran %v, want %v", ran, tc.commands)
			}
			mps, _ := ts.mounter.List()
			if len(mps) != 1 || mps[0].Device != "/dev/loop42" || mps[0].Path != staging || mps[0].Type != tc.rec.FsType || !slices.Equal(mps[0].Opts, tc.opts) {
				t.Errorf("mounts %+v, want /dev/loop42 at %s (%s, %v)", mps, staging, tc.rec.FsType, tc.opts)
			}
		})
	}
}

func TestUnstage(t *testing.T) {
	dir := t.TempDir()
	staging := filepath.Join(dir, "staging")
	for _, tc := range []struct {
		name      string
		staged    record
		path      string
		code      codes.Code
		msg       string
		wantGone  bool // the volume and its record are forgotten
		wantOther bool // another volume's record stays
	}{
		{name: "other staging path", staged: record{StagingPath: filepath.Join(dir, "elsewhere"), Block: true}, path: staging,
			code: codes.FailedPrecondition, msg: "is staged at " + filepath.Join(dir, "elsewhere")},
		{name: "still published", staged: record{StagingPath: staging, Block: true, Publish: map[string]publication{"/t/1": {}}}, path: staging,
			code: codes.FailedPrecondition, msg: "still published at [/t/1]"},
		{name: "unserved block volume", staged: record{StagingPath: staging, Block: true}, path: staging + "/",
			code: codes.OK, wantGone: true},
		{name: "unserved filesystem volume, nothing mounted", staged: record{StagingPath: staging, FsType: "ext4"}, path: staging,
			code: codes.OK, wantGone: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestServer(t, nil, "")
			r := tc.staged
			r.VolumeID = testVolID
			ts.stage(t, &r, false)
			ts.stage(t, &record{VolumeID: otherVolID, StagingPath: filepath.Join(dir, "other"), Block: true}, false)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := ts.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: testVolID, StagingTargetPath: tc.path})
			wantCode(t, err, tc.code, tc.msg)
			gone := ts.get(testVolID) == nil
			if gone != tc.wantGone || (ts.saved(t, testVolID) == nil) != tc.wantGone {
				t.Errorf("volume forgotten %v, record gone %v; want %v", gone, ts.saved(t, testVolID) == nil, tc.wantGone)
			}
			if ts.get(otherVolID) == nil || ts.saved(t, otherVolID) == nil {
				t.Error("another volume was touched")
			}
		})
	}
}

// TestPublishBookkeeping covers the checks of NodePublishVolume on a staged
// volume and what its record says afterwards.
func TestPublishBookkeeping(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name        string
		staged      record // StagingPath filled in
		served      bool
		cap         *csi.VolumeCapability
		readOnly    bool
		target      string // "": a new path
		code        codes.Code
		msg         string
		wantTargets []string // in the record afterwards ("new": the new target)
	}{
		{name: "block published as filesystem", staged: record{Block: true}, served: true, cap: mountCap(rwo, "ext4"),
			code: codes.InvalidArgument, msg: "staged as a Block volume"},
		{name: "filesystem published as block", staged: record{FsType: "ext4"}, served: true, cap: blockCap(rwo),
			code: codes.InvalidArgument, msg: "staged as a Filesystem volume"},
		{name: "not served", staged: record{FsType: "ext4"}, cap: mountCap(rwo, "ext4"),
			code: codes.Unavailable, msg: "is not served on this node"},
		{name: "same target, other read-only flag", staged: record{FsType: "ext4", Publish: map[string]publication{"/t/a": {}}}, served: true,
			cap: mountCap(rwo, "ext4"), readOnly: true, target: "/t/a", code: codes.AlreadyExists, msg: "already published at /t/a with read-only false",
			wantTargets: []string{"/t/a"}},
		{name: "second writer of a single-writer volume", staged: record{FsType: "ext4", Publish: map[string]publication{"/t/a": {}}}, served: true,
			cap: mountCap(rwop, "ext4"), code: codes.FailedPrecondition, msg: "already published for writing at /t/a",
			wantTargets: []string{"/t/a"}},
		{name: "bind mount fails: target not recorded", staged: record{FsType: "ext4", Publish: map[string]publication{"/t/a": {ReadOnly: true}}}, served: true,
			cap: mountCap(rwop, "ext4"), code: codes.Internal, msg: "bind mount", wantTargets: []string{"/t/a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestServer(t, nil, "")
			// The staging path does not exist: a bind mount of it fails
			// (as root too) without touching the host's mounts.
			staging := filepath.Join(dir, "staging-missing")
			r := tc.staged
			r.VolumeID, r.StagingPath = testVolID, staging
			ts.stage(t, &r, tc.served)
			target := tc.target
			if target == "" {
				target = filepath.Join(t.TempDir(), "target")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := ts.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: testVolID, StagingTargetPath: staging,
				TargetPath: target, VolumeCapability: tc.cap, Readonly: tc.readOnly})
			wantCode(t, err, tc.code, tc.msg)
			for what, rec := range map[string]*record{"in memory": ts.get(testVolID).rec, "on disk": ts.saved(t, testVolID)} {
				if got := rec.targets(); !slices.Equal(got, tc.wantTargets) && !(len(got) == 0 && len(tc.wantTargets) == 0) {
					t.Errorf("publish targets %s: %v, want %v", what, got, tc.wantTargets)
				}
			}
			if tc.target == "" {
				if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("target left behind: %v", err)
				}
			}
		})
	}
}

// TestUnpublishBookkeeping unpublishes targets that are not mounted (any
// more): the target is removed and the record forgets it.
func TestUnpublishBookkeeping(t *testing.T) {
	ts := newTestServer(t, nil, "")
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, p := range []string{a, b} {
		if err := os.Mkdir(p, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	ts.stage(t, &record{VolumeID: testVolID, StagingPath: filepath.Join(dir, "staging"), FsType: "ext4",
		Publish: map[string]publication{a: {}, b: {ReadOnly: true}}}, true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, step := range []struct {
		target string
		want   []string
	}{
		{a + "/", []string{b}}, // cleaned like kubelet's paths may not be
		{a, []string{b}},       // again: idempotent
		{b, nil},
	} {
		if _, err := ts.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: testVolID, TargetPath: step.target}); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		for what, rec := range map[string]*record{"in memory": ts.get(testVolID).rec, "on disk": ts.saved(t, testVolID)} {
			if got := rec.targets(); len(got) != len(step.want) || (len(got) > 0 && !slices.Equal(got, step.want)) {
				t.Errorf("step %d: targets %s %v, want %v", i, what, got, step.want)
			}
		}
		if _, err := os.Stat(step.target); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("step %d: target %s not removed: %v", i, step.target, err)
		}
	}
	if ts.get(testVolID) == nil || ts.saved(t, testVolID) == nil {
		t.Error("unpublishing unstaged the volume")
	}
}

// TestRecoveryWithoutStorage starts a server on the records of a previous
// instance while the cluster is unreachable: the volumes are known but
// reported abnormal, their records are kept, and an unreadable record is
// skipped.
func TestRecoveryWithoutStorage(t *testing.T) {
	stateDir := t.TempDir()
	staging := t.TempDir()
	prev := store{dir: filepath.Join(stateDir, "volumes")}
	if err := os.MkdirAll(prev.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	r := &record{VolumeID: testVolID, Key: volumeKey(testVolID), StagingPath: staging, Block: true, AckPolicy: "applied",
		Device: "/dev/loop9", Publish: map[string]publication{}}
	if err := prev.save(r); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(prev.dir, "vbroken.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	b := &fakeBackend{kind: storage.BackendLocal, err: fmt.Errorf("monitors down: %w", storage.ErrUnreachable)}
	ts := newTestServer(t, b, stateDir)
	if err := ts.Ready(); err != nil {
		t.Fatalf("Ready after recovery: %v", err)
	}
	if len(b.secrets) != 1 || b.secrets[0] != nil {
		t.Errorf("storage opened with %v, want once without secrets (default credentials)", b.secrets)
	}
	v := ts.get(testVolID)
	if v == nil || v.dev != nil || status.Code(v.err) != codes.Unavailable {
		t.Fatalf("recovered volume %+v, want one not served with an Unavailable error", v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := ts.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: testVolID, VolumePath: staging})
	if err != nil {
		t.Fatal(err)
	}
	if c := resp.GetVolumeCondition(); !c.GetAbnormal() || !strings.Contains(c.GetMessage(), "monitors down") {
		t.Errorf("condition %+v, want abnormal naming the failure", c)
	}
	_, err = ts.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: testVolID, VolumePath: filepath.Join(staging, "x")})
	wantCode(t, err, codes.NotFound, "not staged or published at")
	if got := ts.saved(t, testVolID); got == nil || got.Device != "/dev/loop9" {
		t.Errorf("record after a failed recovery: %+v, want it kept", got)
	}
	if _, err := os.Stat(filepath.Join(prev.dir, "vbroken.json")); err != nil {
		t.Errorf("the unreadable record must be left for a human: %v", err)
	}
}
