// Package clsrbd is the part of Ceph's cls_rbd that an RBD format-2 image
// needs: the object names and omap keys of an image's header, id and
// directory objects, their value encodings, the client-side calls librbd
// makes (cls_rbd_client.cc), and the server side of the "rbd" object class
// (cls_rbd.cc) implemented in Go for backends without Ceph.
//
// The client calls are byte-compatible with Ceph 16 (Pacific), so they work
// against a real OSD's cls_rbd as well as against Class on the local
// backend; the server writes the same omap keys and values and returns the
// same error codes as cls_rbd for the methods it implements.
package clsrbd

import (
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
)

// Object names (include/rbd_types.h, librbd/Utils.cc).
const (
	// DirectoryOID is the pool's image directory (RBD_DIRECTORY).
	DirectoryOID = "rbd_directory"
	// HeaderPrefix begins an image's header object name (RBD_HEADER_PREFIX).
	HeaderPrefix = "rbd_header."
	// IDPrefix begins an image's id object name (RBD_ID_PREFIX).
	IDPrefix = "rbd_id."
	// DataPrefix begins an image's data object names (RBD_DATA_PREFIX).
	DataPrefix = "rbd_data."
)

// HeaderOID returns the name of image id's header object.
func HeaderOID(id string) string { return HeaderPrefix + id }

// IDOID returns the name of the object holding the id of image name.
func IDOID(name string) string { return IDPrefix + name }

// Snapshot ids (include/rados.h).
const (
	// NoSnap names the image head rather than a snapshot (CEPH_NOSNAP).
	NoSnap uint64 = math.MaxUint64 - 1
	// MaxSnap is the largest valid snapshot id (CEPH_MAXSNAP).
	MaxSnap uint64 = math.MaxUint64 - 2
)

// Image feature bits (include/rbd/features.h).
const (
	FeatureLayering      uint64 = 1 << 0
	FeatureStripingV2    uint64 = 1 << 1
	FeatureExclusiveLock uint64 = 1 << 2
	FeatureObjectMap     uint64 = 1 << 3
	FeatureFastDiff      uint64 = 1 << 4
	FeatureDeepFlatten   uint64 = 1 << 5
	FeatureJournaling    uint64 = 1 << 6
	FeatureDataPool      uint64 = 1 << 7
	FeatureOperations    uint64 = 1 << 8
	FeatureMigrating     uint64 = 1 << 9
	FeatureNonPrimary    uint64 = 1 << 10
	FeatureDirtyCache    uint64 = 1 << 11

	// FeaturesAll is every feature a Pacific cls_rbd accepts
	// (RBD_FEATURES_ALL); create fails with ENOSYS for others.
	FeaturesAll = FeatureLayering | FeatureStripingV2 | FeatureExclusiveLock |
		FeatureObjectMap | FeatureFastDiff | FeatureDeepFlatten |
		FeatureJournaling | FeatureDataPool | FeatureOperations |
		FeatureMigrating | FeatureNonPrimary | FeatureDirtyCache

	// FeaturesIncompatible make an image unreadable by clients that do not
	// understand them (RBD_FEATURES_INCOMPATIBLE).
	FeaturesIncompatible = FeatureLayering | FeatureStripingV2 |
		FeatureDataPool | FeatureDirtyCache

	// FeaturesRWIncompatible make an image unwritable by clients that do
	// not understand them (RBD_FEATURES_RW_INCOMPATIBLE).
	FeaturesRWIncompatible = FeaturesIncompatible | FeatureExclusiveLock |
		FeatureObjectMap | FeatureFastDiff | FeatureDeepFlatten |
		FeatureJournaling | FeatureOperations | FeatureMigrating |
		FeatureNonPrimary

	// FeaturesMutable may be enabled or disabled on an existing image
	// (RBD_FEATURES_MUTABLE).
	FeaturesMutable = FeatureExclusiveLock | FeatureObjectMap |
		FeatureFastDiff | FeatureJournaling | FeatureNonPrimary |
		FeatureDirtyCache

	// FeaturesDisableOnly may only be disabled (RBD_FEATURES_DISABLE_ONLY).
	FeaturesDisableOnly = FeatureDeepFlatten

	// FeaturesInternal cannot be set by clients (RBD_FEATURES_INTERNAL).
	FeaturesInternal = FeatureOperations | FeatureMigrating
)

// featureNames are librbd's names, in bit order (RBD_FEATURE_NAME_*).
var featureNames = [...]string{
	"layering", "striping", "exclusive-lock", "object-map", "fast-diff",
	"deep-flatten", "journaling", "data-pool", "operations", "migrating",
	"non-primary", "dirty-cache",
}

// FeatureNames returns the names of the features in f, in bit order, as
// `rbd info` prints them. Unknown bits are named by their value.
func FeatureNames(f uint64) []string {
	var names []string
	for f != 0 {
		b := bits.TrailingZeros64(f)
		f &^= 1 << b
		if b < len(featureNames) {
			names = append(names, featureNames[b])
		} else {
			names = append(names, fmt.Sprintf("0x%x", uint64(1)<<b))
		}
	}
	return names
}

// ParseFeatures parses a comma-separated list of feature names (as
// rbd_default_features and the rbd CLI accept them) or a decimal bit mask.
func ParseFeatures(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	if f, err := strconv.ParseUint(s, 10, 64); err == nil {
		return f, nil
	}
	var f uint64
	for _, name := range strings.Split(s, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		found := false
		for b, n := range featureNames {
			if n == name {
				f |= 1 << b
				found = true
				break
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown rbd image feature %q", name)
		}
	}
	return f, nil
}

// UTime is Ceph's utime_t, as cls_rbd encodes it (snapshot timestamps,
// access and modify times).
type UTime = cephenc.UTime

// UTimeOf converts t (cephenc.UTimeOf).
func UTimeOf(t time.Time) UTime { return cephenc.UTimeOf(t) }

// SnapContext is what a writer sends with every data write so that the OSD
// preserves snapshots (common/snap_types.h): the newest snapshot id ever
// allocated and the existing snapshot ids, newest first.
type SnapContext struct {
	Seq   uint64
	Snaps []uint64
}

// Valid reports whether c is well formed (SnapContext::is_valid): seq is a
// valid snapshot id no older than any snapshot, and the snapshots are
// strictly descending and non-zero.
func (c SnapContext) Valid() bool {
	if c.Seq > MaxSnap {
		return false
	}
	if len(c.Snaps) == 0 {
		return true
	}
	if c.Snaps[0] > c.Seq {
		return false
	}
	t := c.Snaps[0]
	for _, s := range c.Snaps[1:] {
		if s >= t || t == 0 {
			return false
		}
		t = s
	}
	return true
}

// Encode appends c's encoding: u64 seq, then a vector of u64 ids.
func (c SnapContext) Encode(e *cephenc.Encoder) {
	e.U64(c.Seq)
	e.U32(uint32(len(c.Snaps)))
	for _, s := range c.Snaps {
		e.U64(s)
	}
}

// Decode decodes c.
func (c *SnapContext) Decode(d *cephenc.Decoder) error {
	c.Seq = d.U64()
	n := d.Count(8)
	c.Snaps = nil
	if n > 0 {
		c.Snaps = make([]uint64, n)
		for i := range c.Snaps {
			c.Snaps[i] = d.U64()
		}
	}
	if err := d.Err(); err != nil {
		return fmt.Errorf("decode snap context: %w", err)
	}
	return nil
}

// ParentInfo is an image's parent as get_parent reports it: PoolID is -1
// when the image is not a clone.
type ParentInfo struct {
	PoolID  int64
	ImageID string
	SnapID  uint64
	Overlap uint64 // bytes of the image that map onto the parent
}

// HasParent reports whether reads of unwritten parts of the image must be
// served from a parent image.
func (p ParentInfo) HasParent() bool { return p.PoolID >= 0 && p.Overlap > 0 }

// parentRecord is the "parent" omap value (cls_rbd_parent in cls_rbd.h):
// version 1 has no namespace and a plain overlap, version 2 (Nautilus and
// later) a namespace and an optional overlap.
type parentRecord struct {
	poolID        int64
	poolNamespace string
	imageID       string
	snapID        uint64
	headOverlap   *uint64
}

func (p parentRecord) encode(e *cephenc.Encoder) {
	m := e.Start(2, 2)
	e.S64(p.poolID)
	e.String(p.poolNamespace)
	e.String(p.imageID)
	e.U64(p.snapID)
	e.Bool(p.headOverlap != nil)
	if p.headOverlap != nil {
		e.U64(*p.headOverlap)
	}
	e.Finish(m)
}

func (p *parentRecord) decode(d *cephenc.Decoder) error {
	s := d.Start(2)
	p.poolID = d.S64()
	if s.Version >= 2 {
		p.poolNamespace = d.Str()
	}
	p.imageID = d.Str()
	p.snapID = d.U64()
	if s.Version == 1 {
		v := d.U64()
		p.headOverlap = &v
	} else if d.Bool() {
		v := d.U64()
		p.headOverlap = &v
	}
	d.Finish(s)
	if err := d.Err(); err != nil {
		return fmt.Errorf("decode parent: %w", err)
	}
	return nil
}
