package nodeserver

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
	testingexec "k8s.io/utils/exec/testing"
)

// fakeGate is a formatGate with a fixed marker.
type fakeGate struct {
	mark    storage.FormatBlank
	err     error
	cleared int
}

func (g *fakeGate) Get(context.Context) (storage.FormatBlank, error) { return g.mark, g.err }
func (g *fakeGate) Clear(context.Context) error {
	g.cleared++
	g.mark = storage.FormatBlankUnset
	return nil
}
func (g *fakeGate) Image() (string, string) { return "rbd", "csi-vol-x" }

// fakeDisk answers blkid, mkfs and fsck like a device that holds fsType
// ("" blank) and records what ran.
type fakeDisk struct {
	fsType string
	ran    []string
}

func (d *fakeDisk) exec() *testingexec.FakeExec {
	fe := &testingexec.FakeExec{}
	action := func(cmd string, args ...string) utilexec.Cmd {
		fc := &testingexec.FakeCmd{}
		fc.CombinedOutputScript = []testingexec.FakeAction{func() ([]byte, []byte, error) {
			d.ran = append(d.ran, cmd)
			switch {
			case cmd == "blkid" && d.fsType == "":
				return nil, nil, &testingexec.FakeExitError{Status: 2}
			case cmd == "blkid":
				return []byte("DEVNAME=/dev/loop9\nTYPE=" + d.fsType + "\n"), nil, nil
			case strings.HasPrefix(cmd, "mkfs."):
				d.fsType = strings.TrimPrefix(cmd, "mkfs.")
			}
			return nil, nil, nil
		}}
		return testingexec.InitFakeCmd(fc, cmd, args...)
	}
	for range 8 {
		fe.CommandScript = append(fe.CommandScript, action)
	}
	return fe
}

func (d *fakeDisk) formatted() bool {
	for _, c := range d.ran {
		if strings.HasPrefix(c, "mkfs.") {
			return true
		}
	}
	return false
}

// TestMountStagingFormatGate checks that a blank device is formatted only
// when its image is marked new (or overridden), that the marker is cleared
// once the device holds a filesystem (also after a crash between mkfs and
// the clearing), and that a blank device of a volume not known to be new
// is refused with FailedPrecondition and left untouched.
func TestMountStagingFormatGate(t *testing.T) {
	tests := []struct {
		name        string
		fsType      string // on the device before
		mark        storage.FormatBlank
		gateErr     error
		wantCode    codes.Code
		wantFormat  bool
		wantCleared int
		wantMsg     []string
	}{
		{name: "new volume is formatted", mark: storage.FormatBlankNew, wantFormat: true, wantCleared: 1},
		{name: "override formats", mark: storage.FormatBlankOverridden, wantFormat: true, wantCleared: 1},
		{name: "blank without marker is refused", mark: storage.FormatBlankUnset, wantCode: codes.FailedPrecondition,
			wantMsg: []string{"reads as blank", "not set", "rbd image-meta set rbd/csi-vol-x csi-rbdj.format-blank true"}},
		{name: "marker copied from another image is refused", mark: storage.FormatBlankForeign, wantCode: codes.FailedPrecondition,
			wantMsg: []string{"another image"}},
		{name: "marker unreadable on a blank device", gateErr: errors.New("osd down"), wantCode: codes.Unavailable},
		{name: "filesystem and marker: crash after mkfs", fsType: "ext4", mark: storage.FormatBlankNew, wantCleared: 1},
		{name: "filesystem without marker", fsType: "ext4"},
		{name: "filesystem, marker unreadable", fsType: "ext4", gateErr: errors.New("osd down")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			disk := &fakeDisk{fsType: tt.fsType}
			fm := mount.NewFakeMounter(nil)
			s := &Server{mounter: &mount.SafeFormatAndMount{Interface: fm, Exec: disk.exec()}}
			gate := &fakeGate{mark: tt.mark, err: tt.gateErr}
			r := &record{VolumeID: testVolID, Device: "/dev/loop9", StagingPath: filepath.Join(t.TempDir(), "staging"), FsType: "ext4"}
			err := s.mountStaging(context.Background(), r, gate)
			if status.Code(err) != tt.wantCode {
				t.Fatalf("mountStaging: %v, want code %v", err, tt.wantCode)
			}
			for _, m := range tt.wantMsg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not say %q", err, m)
				}
			}
			if disk.formatted() != tt.wantFormat {
				t.Errorf("formatted = %v, want %v (ran %v)", disk.formatted(), tt.wantFormat, disk.ran)
			}
			if gate.cleared != tt.wantCleared {
				t.Errorf("marker cleared %d times, want %d", gate.cleared, tt.wantCleared)
			}
			mps, _ := fm.List()
			if mounted := len(mps) == 1; mounted != (tt.wantCode == codes.OK) {
				t.Errorf("mounted = %v, want %v", mounted, tt.wantCode == codes.OK)
			}
		})
	}
}
