package nodeserver

import (
	"os"
	"path/filepath"
	"testing"
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
