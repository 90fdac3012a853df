package nodeserver

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/atomicfile"
)

// recordVersion is the format of the staging records.
const recordVersion = 1

// record is what the node plugin persists about one staged volume, so that a
// restarted plugin can serve it again and repair the mounts kubelet made:
// <state dir>/volumes/<key>.json, written atomically (temp file, fsync,
// rename, fsync of the directory).
type record struct {
	Version  int    `json:"version"`
	VolumeID string `json:"volumeID"`
	// Key names the volume's files: the record, and the fuseloop device
	// (<state dir>/fuse/<key>/fuse).
	Key         string `json:"key"`
	StagingPath string `json:"stagingPath"`
	// Block volumes expose the loop device; others are mounted at
	// StagingPath.
	Block      bool     `json:"block"`
	FsType     string   `json:"fsType,omitempty"`
	MountFlags []string `json:"mountFlags,omitempty"`
	// AccessMode is the CSI access mode name it was staged with.
	AccessMode string `json:"accessMode"`
	ReadOnly   bool   `json:"readOnly"`
	AckPolicy  string `json:"ackPolicy"`
	// JournalMode is the volume's journal mode ("" in records written
	// before journal modes: full).
	JournalMode string `json:"journalMode,omitempty"`
	// JournalMaxObjectSets is the StorageClass's laggy-client bound
	// (journal.Settings.MaxConcurrentObjectSets; 0: unbounded).
	JournalMaxObjectSets int `json:"journalMaxConcurrentObjectSets,omitempty"`
	// PVName is the volume's PersistentVolume (volume.CtxPVName), named by
	// the node's Kubernetes events; "" if the volume context lacks it.
	PVName string `json:"pvName,omitempty"`
	// Unowned: the volume is served read-only without owning its image (a
	// non-primary mirror image, mirror.go): no lock, no journal, mounted
	// without filesystem journal recovery. Kept for the life of the
	// staging, also across restarts.
	Unowned bool `json:"unowned,omitempty"`
	// Device is the loop device serving the volume (changes on restart).
	Device string `json:"device"`
	// Owner is the address under which this plugin holds the image's lock:
	// after a crash it is known dead, so a restarted plugin breaks that
	// lock (fencing the address first) without waiting for a watch timeout.
	Owner string `json:"owner,omitempty"`
	// Publish are the NodePublish targets (bind mounts of StagingPath or,
	// for block volumes, of Device).
	Publish  map[string]publication `json:"publish,omitempty"`
	StagedAt time.Time              `json:"stagedAt"`
}

// publication is one NodePublish target.
type publication struct {
	ReadOnly bool `json:"readOnly"`
}

// volumeKey derives the file name of a volume's state from its id.
func volumeKey(volumeID string) string {
	sum := sha256.Sum256([]byte(volumeID))
	return "v" + hex.EncodeToString(sum[:16])
}

func (r *record) clone() *record {
	c := *r
	c.MountFlags = append([]string(nil), r.MountFlags...)
	c.Publish = make(map[string]publication, len(r.Publish))
	for k, v := range r.Publish {
		c.Publish[k] = v
	}
	return &c
}

// targets returns the publish targets in a stable order.
func (r *record) targets() []string {
	ts := make([]string, 0, len(r.Publish))
	for t := range r.Publish {
		ts = append(ts, t)
	}
	sort.Strings(ts)
	return ts
}

// store keeps the records in a directory.
type store struct{ dir string }

func (s store) path(key string) string { return filepath.Join(s.dir, key+".json") }

// save replaces the record durably; on any error the previous record (if
// any) is left intact and the error is returned.
func (s store) save(r *record) error {
	r.Version = recordVersion
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("save state of %s: %w", r.VolumeID, err)
	}
	if err := atomicfile.Write(s.path(r.Key), b, atomicfile.Options{Perm: 0o600}); err != nil {
		return fmt.Errorf("save state of %s: %w", r.VolumeID, err)
	}
	return nil
}

func (s store) remove(key string) error {
	if err := os.Remove(s.path(key)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove state %s: %w", key, err)
	}
	return atomicfile.SyncDir(s.dir)
}

// load returns every record; unreadable ones are reported, not fatal.
func (s store) load() ([]*record, []error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, []error{err}
	}
	var recs []*record
	var errs []error
	for _, e := range ents {
		name := e.Name()
		if strings.HasSuffix(name, atomicfile.TempSuffix) {
			_ = os.Remove(filepath.Join(s.dir, name)) // a save interrupted by a crash
			continue
		}
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.dir, name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var r record
		if err := json.Unmarshal(b, &r); err != nil {
			errs = append(errs, fmt.Errorf("state file %s: %w", name, err))
			continue
		}
		if r.Version != recordVersion || r.Key != strings.TrimSuffix(name, ".json") || r.Key != volumeKey(r.VolumeID) {
			errs = append(errs, fmt.Errorf("state file %s: version %d / key %q does not match", name, r.Version, r.Key))
			continue
		}
		if r.Publish == nil {
			r.Publish = map[string]publication{}
		}
		recs = append(recs, &r)
	}
	return recs, errs
}
