package nodeserver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestStoreRoundTrip(t *testing.T) {
	s := store{dir: t.TempDir()}
	id := "rbdj1/local/default/rbd/csi-vol-0123"
	r := &record{VolumeID: id, Key: volumeKey(id), StagingPath: "/s", FsType: "ext4", AckPolicy: "applied",
		Device: "/dev/loop7", Publish: map[string]publication{"/t/b": {ReadOnly: true}, "/t/a": {}}}
	if err := s.save(r); err != nil {
		t.Fatal(err)
	}
	// Leftovers of a save interrupted by a crash, and a foreign file.
	os.WriteFile(filepath.Join(s.dir, r.Key+".123.tmp"), []byte("{"), 0o600)
	os.WriteFile(filepath.Join(s.dir, "vdeadbeef.json"), []byte(`{"version":1,"volumeID":"x","key":"vdeadbeef"}`), 0o600)
	recs, errs := s.load()
	if len(recs) != 1 || len(errs) != 1 {
		t.Fatalf("load: %d records, errors %v", len(recs), errs)
	}
	got := recs[0]
	if got.VolumeID != id || got.Device != "/dev/loop7" || !got.Publish["/t/b"].ReadOnly || len(got.targets()) != 2 || got.targets()[0] != "/t/a" {
		t.Errorf("loaded %+v", got)
	}
	if _, err := os.Stat(filepath.Join(s.dir, r.Key+".123.tmp")); !os.IsNotExist(err) {
		t.Error("temporary file not removed")
	}
	c := got.clone()
	c.Publish["/t/c"] = publication{}
	if len(got.Publish) != 2 {
		t.Error("clone shares the publish map")
	}
	if err := s.remove(r.Key); err != nil {
		t.Fatal(err)
	}
	if err := s.remove(r.Key); err != nil {
		t.Fatalf("second remove: %v", err)
	}
}

// TestStoreSaveFullDisk replaces a record on a full filesystem: the save
// must fail with the filesystem's error and the previous record must stay
// intact (restart recovery reads it). Needs root for the tmpfs mount.
func TestStoreSaveFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=256k,mode=0700"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
			_ = unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	s := store{dir: dir}
	id := "rbdj1/local/default/rbd/csi-vol-full"
	good := &record{VolumeID: id, Key: volumeKey(id), StagingPath: "/s", FsType: "ext4", AckPolicy: "applied",
		Device: "/dev/loop7", Publish: map[string]publication{"/t/a": {}}}
	if err := s.save(good); err != nil {
		t.Fatal(err)
	}

	// Fill the filesystem.
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 4096)
	for {
		if _, err = f.Write(chunk); err != nil {
			break
		}
	}
	f.Close()
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling the tmpfs ended with %v, want ENOSPC", err)
	}

	// A bigger record cannot be written.
	bigger := good.clone()
	bigger.Device = "/dev/loop8"
	for i := 0; i < 1000; i++ {
		bigger.Publish[fmt.Sprintf("/var/lib/kubelet/pods/%04d/volumes/kubernetes.io~csi/pv/mount", i)] = publication{}
	}
	err = s.save(bigger)
	switch {
	case !errors.Is(err, syscall.ENOSPC):
		t.Errorf("save on a full filesystem = %v, want an error wrapping ENOSPC", err)
	case !strings.Contains(err.Error(), id):
		t.Errorf("error %q does not name the volume", err)
	}

	recs, errs := s.load()
	if len(errs) != 0 || len(recs) != 1 {
		t.Fatalf("after the failed save: %d records, errors %v; want the old record", len(recs), errs)
	}
	if got := recs[0]; got.Device != "/dev/loop7" || len(got.Publish) != 1 {
		t.Errorf("after the failed save the record is %+v, want the old one", got)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() != "filler" && e.Name() != good.Key+".json" {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}
