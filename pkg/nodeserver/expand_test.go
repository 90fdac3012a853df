package nodeserver

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	utilexec "k8s.io/utils/exec"
	testingexec "k8s.io/utils/exec/testing"
)

// TestNodeExpandArguments: NodeExpandVolume's checks before it touches a
// device (the growth itself is tested on real devices in pkg/driver,
// TestExpandOnline).
func TestNodeExpandArguments(t *testing.T) {
	ts := newTestServer(t, nil, "")
	staging, target := t.TempDir(), "/pods/p1/vol"
	ts.stage(t, &record{VolumeID: testVolID, StagingPath: staging, FsType: "xfs", Device: "/dev/loop42",
		Publish: map[string]publication{target: {}}}, true)
	const unserved = "rbdj1/local/default/rbd/csi-vol-000000000000000000000002"
	ts.stage(t, &record{VolumeID: unserved, StagingPath: t.TempDir(), FsType: "ext4"}, false)
	cr := &csi.CapacityRange{RequiredBytes: 1 << 30}
	for _, tc := range []struct {
		name string
		req  *csi.NodeExpandVolumeRequest
		code codes.Code
		want string
	}{
		{"no volume id", &csi.NodeExpandVolumeRequest{VolumePath: target}, codes.InvalidArgument, "volume_id is missing"},
		{"no volume path", &csi.NodeExpandVolumeRequest{VolumeId: testVolID}, codes.InvalidArgument, "volume_path is missing"},
		{"negative capacity", &csi.NodeExpandVolumeRequest{VolumeId: testVolID, VolumePath: target, CapacityRange: &csi.CapacityRange{RequiredBytes: -1}},
			codes.InvalidArgument, "capacity_range"},
		{"required above limit", &csi.NodeExpandVolumeRequest{VolumeId: testVolID, VolumePath: target, CapacityRange: &csi.CapacityRange{RequiredBytes: 2, LimitBytes: 1}},
			codes.InvalidArgument, "capacity_range"},
		{"not staged here", &csi.NodeExpandVolumeRequest{VolumeId: "rbdj1/local/default/rbd/csi-vol-000000000000000000000009", VolumePath: target, CapacityRange: cr},
			codes.NotFound, "not staged on this node"},
		{"another path", &csi.NodeExpandVolumeRequest{VolumeId: testVolID, VolumePath: "/pods/p2/vol", CapacityRange: cr},
			codes.NotFound, "not staged or published at /pods/p2/vol"},
		{"another staging path", &csi.NodeExpandVolumeRequest{VolumeId: testVolID, VolumePath: target, StagingTargetPath: "/elsewhere", CapacityRange: cr},
			codes.InvalidArgument, "not at staging_target_path /elsewhere"},
		{"block capability on a filesystem", &csi.NodeExpandVolumeRequest{VolumeId: testVolID, VolumePath: target, CapacityRange: cr, VolumeCapability: blockCap(rwo)},
			codes.InvalidArgument, "block=true"},
		{"staged, not served (no loop device)", &csi.NodeExpandVolumeRequest{VolumeId: testVolID, VolumePath: staging, CapacityRange: cr, VolumeCapability: mountCap(rwo, "xfs")},
			codes.FailedPrecondition, "not served"},
		{"recovery failed", &csi.NodeExpandVolumeRequest{VolumeId: unserved, VolumePath: ts.get(unserved).rec.StagingPath, CapacityRange: cr},
			codes.FailedPrecondition, "stage it again"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := ts.NodeExpandVolume(ctx, tc.req)
			wantCode(t, err, tc.code, tc.want)
		})
	}
}

// TestGrowFilesystem: the command each filesystem grows with, and what a
// failure says (ext4 without CAP_SYS_RESOURCE: FailedPrecondition naming
// it).
func TestGrowFilesystem(t *testing.T) {
	capSysResource := hasCapability(unix.CAP_SYS_RESOURCE)
	for _, tc := range []struct {
		fs       string
		fail     bool
		wantCmd  []string
		wantCode codes.Code
		want     string
	}{
		{"ext4", false, []string{"resize2fs", "/dev/loop7"}, codes.OK, ""},
		{"xfs", false, []string{"xfs_growfs", "-d", "/staging"}, codes.OK, ""},
		{"xfs", true, []string{"xfs_growfs", "-d", "/staging"}, codes.Internal, "xfs_growfs -d /staging: exit 1: out of luck"},
		{"ext4", true, []string{"resize2fs", "/dev/loop7"},
			map[bool]codes.Code{false: codes.FailedPrecondition, true: codes.Internal}[capSysResource],
			map[bool]string{false: "needs the capability CAP_SYS_RESOURCE", true: "resize2fs /dev/loop7: exit 1: out of luck"}[capSysResource]},
		{"btrfs", false, nil, codes.InvalidArgument, "growing a btrfs filesystem is not supported"},
	} {
		t.Run(tc.fs, func(t *testing.T) {
			ts := newTestServer(t, nil, "")
			var ran []string
			ts.exec.CommandScript = append(ts.exec.CommandScript, func(cmd string, args ...string) utilexec.Cmd {
				ran = append([]string{cmd}, args...)
				return testingexec.InitFakeCmd(&testingexec.FakeCmd{CombinedOutputScript: []testingexec.FakeAction{
					func() ([]byte, []byte, error) {
						if tc.fail {
							return []byte("out of luck"), nil, errors.New("exit 1")
						}
						return []byte("grown"), nil, nil
					}}}, cmd, args...)
			})
			err := ts.growFilesystem(context.Background(), tc.fs, "/dev/loop7", "/staging")
			if tc.wantCode == codes.OK {
				if err != nil {
					t.Fatal(err)
				}
			} else {
				wantCode(t, err, tc.wantCode, tc.want)
			}
			if !slices.Equal(ran, tc.wantCmd) {
				t.Errorf("ran %v, want %v", ran, tc.wantCmd)
			}
		})
	}
}
