package volume

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
)

// StorageClass parameters (CreateVolumeRequest.parameters). README.md lists
// them with their defaults.
const (
	ParamClusterID         = "clusterID"
	ParamPool              = "pool"
	ParamImageFeatures     = "imageFeatures"
	ParamObjectOrder       = "objectOrder"
	ParamJournalOrder      = "journalOrder"
	ParamJournalSplayWidth = "journalSplayWidth"
	ParamFsType            = "fsType"
	ParamAckPolicy         = "ackPolicy"
	// ParamJournaling may only say "true": journaling is always on.
	ParamJournaling = "journaling"
	// ParamMirroring "journal" enables journal-based rbd-mirror mirroring
	// of the image at CreateVolume (Ceph only; the pool must have
	// mirroring enabled).
	ParamMirroring = "mirroring"
	// ParamJournalMaxConcurrentObjectSets bounds how far a registered
	// journal client (rbd-mirror) may fall behind, in journal object sets,
	// before it is disconnected (librbd's
	// rbd_journal_max_concurrent_object_sets; 0: unbounded).
	ParamJournalMaxConcurrentObjectSets = "journalMaxConcurrentObjectSets"
	// ParamJournalMode is "full" (every write's data journaled in the
	// image's librbd journal) or "metadata" (data written in place, only
	// its extent and checksum journaled in csi-rbdj's own extent log; the
	// image has no librbd journaling feature and cannot be mirrored).
	// Fixed for the life of the volume.
	ParamJournalMode = "journalMode"
	// ParamCloneDepthSoftLimit and ParamCloneDepthHardLimit bound the
	// parent chains of restores and clones (RBD layering): a new volume
	// more than the soft limit of images away from its oldest ancestor is
	// flattened in the background; one that would be more than the hard
	// limit away is made as a full copy instead (ceph-csi's soft and hard
	// clone depth limits).
	ParamCloneDepthSoftLimit = "cloneDepthSoftLimit"
	ParamCloneDepthHardLimit = "cloneDepthHardLimit"
)

// Clone depth limits: ceph-csi's defaults. The hard limit stays below the
// chain the node follows (16 images).
const (
	DefaultCloneDepthSoftLimit = 4
	DefaultCloneDepthHardLimit = 8
	maxCloneDepth              = 14
)

// Journal modes (the names of blockdev.JournalMode; a test checks that
// both agree).
const (
	JournalModeFull     = "full"
	JournalModeMetadata = "metadata"
)

// JournalModes are the values of ParamJournalMode.
var JournalModes = []string{JournalModeFull, JournalModeMetadata}

// CtxJournalMode carries ParamJournalMode to the node (absent: full).
const CtxJournalMode = "csi-rbdj.dev/journalMode"

// ValidateJournalMode checks a journalMode value.
func ValidateJournalMode(s string) error {
	for _, m := range JournalModes {
		if s == m {
			return nil
		}
	}
	return fmt.Errorf("unknown journal mode %q (want %s)", s, strings.Join(JournalModes, " or "))
}

// CtxJournalMaxObjectSets carries ParamJournalMaxConcurrentObjectSets to
// the node.
const CtxJournalMaxObjectSets = "csi-rbdj.dev/journalMaxConcurrentObjectSets"

// Volume context keys: what CreateVolume hands to the node through the PV.
const (
	CtxFsType    = "csi-rbdj.dev/fsType"
	CtxAckPolicy = "csi-rbdj.dev/ackPolicy"
)

// Defaults.
const (
	DefaultPool         = "rbd"
	DefaultObjectOrder  = 22 // 4 MiB objects
	DefaultJournalOrder = 24 // 16 MiB journal objects
	// DefaultJournalSplayWidth is 1, not librbd's 4: the node plugin
	// gathers every write that arrives while an append is in flight into
	// the next one (group commit), so each splay object costs one OSD
	// operation per round; with one object a round is one operation
	// (measured: about 1.7× the 4K QD16 write IOPS of width 4 on one OSD).
	// Wider splays spread a busy journal over more OSDs.
	DefaultJournalSplayWidth = 1
	DefaultFsType            = "ext4"
	DefaultAckPolicy         = "writeback"
	maxJournalSplayWidth     = 64
	maxJournalObjectSets     = 1 << 20
)

// allowedFeatures are the image features a volume may have: the ones the
// journaled data path serves. exclusive-lock and journaling are always on.
const (
	requiredFeatures = clsrbd.FeatureExclusiveLock | clsrbd.FeatureJournaling
	allowedFeatures  = requiredFeatures | clsrbd.FeatureLayering | clsrbd.FeatureDeepFlatten
)

// AckPolicies are the values of ParamAckPolicy: the names of
// blockdev.AckPolicy (kept here so that the controller, which only checks
// the name, does not link the data path; a test checks that both agree).
var AckPolicies = []string{"applied", "journaled", "writeback"}

// ValidateAckPolicy checks an ackPolicy value.
func ValidateAckPolicy(s string) error {
	for _, p := range AckPolicies {
		if s == p {
			return nil
		}
	}
	return fmt.Errorf("unknown ack policy %q (want %s or %s)", s, strings.Join(AckPolicies[:len(AckPolicies)-1], ", "), AckPolicies[len(AckPolicies)-1])
}

// SupportedFsTypes are the filesystems NodeStage formats and mounts.
var SupportedFsTypes = []string{"ext4", "xfs"}

// ignoredParamPrefix marks parameters the external-provisioner adds
// (csi.storage.k8s.io/pvc/name with --extra-create-metadata); they carry no
// configuration.
const ignoredParamPrefix = "csi.storage.k8s.io/"

// VolumeParams are the validated parameters of a volume.
type VolumeParams struct {
	// ClusterID is the cluster the volume lives in (CreateVolume fills in
	// the default one when the StorageClass names none).
	ClusterID         string `json:"clusterID,omitempty"`
	Pool              string `json:"pool"`
	Features          uint64 `json:"features"`
	ObjectOrder       uint8  `json:"objectOrder"`
	JournalOrder      uint8  `json:"journalOrder"`
	JournalSplayWidth uint8  `json:"journalSplayWidth"`
	FsType            string `json:"fsType"`
	AckPolicy         string `json:"ackPolicy"`
	// Mirroring is "" or storage.MirrorModeJournal.
	Mirroring string `json:"mirroring,omitempty"`
	// JournalMaxObjectSets is ParamJournalMaxConcurrentObjectSets.
	JournalMaxObjectSets int `json:"journalMaxConcurrentObjectSets,omitempty"`
	// JournalMode is ParamJournalMode ("" in records written before it
	// existed: full).
	JournalMode string `json:"journalMode,omitempty"`
	// CloneDepthSoftLimit and CloneDepthHardLimit are
	// ParamCloneDepthSoftLimit and ParamCloneDepthHardLimit (0 in records
	// written before them: the defaults; WithCloneDefaults).
	CloneDepthSoftLimit int `json:"cloneDepthSoftLimit,omitempty"`
	CloneDepthHardLimit int `json:"cloneDepthHardLimit,omitempty"`
}

// WithCloneDefaults fills in the clone depth limits of a record written
// before they existed (a hard limit is never 0).
func (p VolumeParams) WithCloneDefaults() VolumeParams {
	if p.CloneDepthHardLimit == 0 {
		p.CloneDepthSoftLimit, p.CloneDepthHardLimit = DefaultCloneDepthSoftLimit, DefaultCloneDepthHardLimit
	}
	return p
}

// Metadata reports whether the volume uses journalMode metadata.
func (p VolumeParams) Metadata() bool { return p.JournalMode == JournalModeMetadata }

// ParamError is a parameter that cannot be accepted; its message names the
// parameter and says what would be accepted.
type ParamError struct {
	Param string
	Msg   string
}

func (e *ParamError) Error() string { return fmt.Sprintf("parameter %q: %s", e.Param, e.Msg) }

// ParseParams validates CreateVolume parameters and fills in defaults.
func ParseParams(in map[string]string) (VolumeParams, error) {
	p := VolumeParams{
		Pool:              DefaultPool,
		Features:          image.DefaultFeatures,
		ObjectOrder:       DefaultObjectOrder,
		JournalOrder:      DefaultJournalOrder,
		JournalSplayWidth: DefaultJournalSplayWidth,
		FsType:            DefaultFsType,
		AckPolicy:         DefaultAckPolicy,
		JournalMode:       JournalModeFull,

		CloneDepthSoftLimit: DefaultCloneDepthSoftLimit,
		CloneDepthHardLimit: DefaultCloneDepthHardLimit,
	}
	// The mode decides which features are required: read it first.
	if v, ok := in[ParamJournalMode]; ok {
		if err := ValidateJournalMode(v); err != nil {
			return p, &ParamError{ParamJournalMode, err.Error()}
		}
		p.JournalMode = v
	}
	if p.Metadata() {
		// No librbd journaling: csi-rbdj's extent log is not a journal
		// librbd or rbd-mirror may read (README "Journal modes").
		p.Features &^= clsrbd.FeatureJournaling
	}
	keys := make([]string, 0, len(in))
	for k := range in {
		keys = append(keys, k)
	}
	sort.Strings(keys) // report the first bad parameter deterministically
	for _, k := range keys {
		v := in[k]
		switch k {
		case ParamClusterID:
			if err := storage.ValidateName("cluster id", v); err != nil {
				return p, &ParamError{k, err.Error()}
			}
			p.ClusterID = v
		case ParamJournaling:
			switch strings.ToLower(v) {
			case "true", "yes", "on", "1":
			default:
				return p, &ParamError{k, fmt.Sprintf("%q asks to turn journaling off, but journaling is always on: csi-rbdj journals every write in the node plugin (that is what it is for); remove the parameter (journalMode: metadata journals only where writes went, not their data), or use another RBD driver for unjournaled volumes", v)}
			}
		case ParamPool:
			if err := storage.ValidateName("pool", v); err != nil {
				return p, &ParamError{k, err.Error()}
			}
			p.Pool = v
		case ParamImageFeatures:
			f, err := clsrbd.ParseFeatures(v)
			if err != nil {
				return p, &ParamError{k, fmt.Sprintf("%v (want a comma-separated list of layering, exclusive-lock, journaling, deep-flatten)", err)}
			}
			if bad := f &^ allowedFeatures; bad != 0 {
				return p, &ParamError{k, fmt.Sprintf("features %v are not supported by the journaled data path (allowed: layering, exclusive-lock, journaling, deep-flatten)", clsrbd.FeatureNames(bad))}
			}
			if p.Metadata() {
				if f&clsrbd.FeatureJournaling != 0 {
					return p, &ParamError{k, fmt.Sprintf("%q includes journaling, but journalMode metadata images must not carry librbd's journaling feature (their journal is csi-rbdj's extent log, which librbd and rbd-mirror must never replay); leave journaling out", v)}
				}
				p.Features = f | clsrbd.FeatureExclusiveLock
				continue
			}
			if f&clsrbd.FeatureJournaling == 0 {
				return p, &ParamError{k, fmt.Sprintf("%q leaves out journaling, but journaling is always on: csi-rbdj journals every write in the node plugin; add it (imageFeatures: layering,exclusive-lock,journaling) or omit imageFeatures", v)}
			}
			// journaling needs exclusive-lock (librbd's rule): added.
			p.Features = f | requiredFeatures
		case ParamObjectOrder:
			n, err := parseUint8(v, image.MinOrder, image.MaxOrder)
			if err != nil {
				return p, &ParamError{k, err.Error() + " (log2 of the object size: 22 = 4 MiB)"}
			}
			p.ObjectOrder = n
		case ParamJournalOrder:
			n, err := parseUint8(v, journal.MinOrder, journal.MaxOrder)
			if err != nil {
				return p, &ParamError{k, err.Error() + " (log2 of the journal object size: 24 = 16 MiB)"}
			}
			p.JournalOrder = n
		case ParamJournalSplayWidth:
			n, err := parseUint8(v, 1, maxJournalSplayWidth)
			if err != nil {
				return p, &ParamError{k, err.Error() + " (journal objects written in parallel)"}
			}
			p.JournalSplayWidth = n
		case ParamFsType:
			if !isSupportedFs(v) {
				return p, &ParamError{k, fmt.Sprintf("filesystem %q is not supported (want one of %s)", v, strings.Join(SupportedFsTypes, ", "))}
			}
			p.FsType = v
		case ParamAckPolicy:
			if err := ValidateAckPolicy(v); err != nil {
				return p, &ParamError{k, err.Error()}
			}
			p.AckPolicy = v
		case ParamMirroring:
			if v != storage.MirrorModeJournal {
				return p, &ParamError{k, fmt.Sprintf("%q is not a mirroring mode csi-rbdj enables (want %q: rbd-mirror replays the image's journal on the peer cluster)", v, storage.MirrorModeJournal)}
			}
			p.Mirroring = v
		case ParamJournalMaxConcurrentObjectSets:
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > maxJournalObjectSets {
				return p, &ParamError{k, fmt.Sprintf("%q is not an integer in [0, %d] (journal object sets a registered client such as rbd-mirror may fall behind before it is disconnected; 0: unbounded)", v, maxJournalObjectSets)}
			}
			p.JournalMaxObjectSets = n
		case ParamCloneDepthSoftLimit, ParamCloneDepthHardLimit:
			n, err := strconv.Atoi(v)
			lo := 0
			if k == ParamCloneDepthHardLimit {
				lo = 1
			}
			if err != nil || n < lo || n > maxCloneDepth {
				return p, &ParamError{k, fmt.Sprintf("%q is not an integer in [%d, %d] (images between a restored or cloned volume and its oldest ancestor)", v, lo, maxCloneDepth)}
			}
			if k == ParamCloneDepthSoftLimit {
				p.CloneDepthSoftLimit = n
			} else {
				p.CloneDepthHardLimit = n
			}
		case ParamJournalMode: // read above
		default:
			if strings.HasPrefix(k, ignoredParamPrefix) {
				continue
			}
			return p, &ParamError{k, fmt.Sprintf("unknown parameter (known: %s)", strings.Join([]string{
				ParamClusterID, ParamPool, ParamImageFeatures, ParamObjectOrder, ParamJournalOrder, ParamJournalSplayWidth, ParamFsType, ParamAckPolicy, ParamJournaling, ParamMirroring, ParamJournalMaxConcurrentObjectSets, ParamJournalMode, ParamCloneDepthSoftLimit, ParamCloneDepthHardLimit}, ", "))}
		}
	}
	if _, ok := in[ParamCloneDepthSoftLimit]; !ok && p.CloneDepthSoftLimit > p.CloneDepthHardLimit {
		p.CloneDepthSoftLimit = p.CloneDepthHardLimit
	}
	if p.CloneDepthSoftLimit > p.CloneDepthHardLimit {
		return p, &ParamError{ParamCloneDepthSoftLimit, fmt.Sprintf("%d exceeds %s %d (clones beyond the soft limit are flattened in the background, beyond the hard limit made as full copies)", p.CloneDepthSoftLimit, ParamCloneDepthHardLimit, p.CloneDepthHardLimit)}
	}
	if p.Metadata() && p.Mirroring != "" {
		return p, &ParamError{ParamMirroring, fmt.Sprintf("%q cannot be combined with journalMode %q: rbd-mirror replays data from the image's librbd journal, and a metadata-mode volume journals no data (use journalMode %q to mirror)", p.Mirroring, JournalModeMetadata, JournalModeFull)}
	}
	return p, nil
}

func parseUint8(s string, lo, hi int) (uint8, error) {
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not an integer", s)
	}
	if n < lo || n > hi {
		return 0, fmt.Errorf("%d is out of range [%d, %d]", n, lo, hi)
	}
	return uint8(n), nil
}

func isSupportedFs(s string) bool {
	for _, f := range SupportedFsTypes {
		if s == f {
			return true
		}
	}
	return false
}

// IsSupportedFsType reports whether NodeStage can format and mount fs.
func IsSupportedFsType(fs string) bool { return isSupportedFs(fs) }

// CreateOptions are the image options the parameters ask for.
func (p VolumeParams) CreateOptions() image.CreateOptions {
	return image.CreateOptions{Order: p.ObjectOrder, Features: p.Features, JournalOrder: p.JournalOrder, JournalSplayWidth: p.JournalSplayWidth}
}

// VolumeContext is what the node needs beyond the volume id.
func (p VolumeParams) VolumeContext() map[string]string {
	ctx := map[string]string{CtxFsType: p.FsType, CtxAckPolicy: p.AckPolicy}
	if p.JournalMaxObjectSets > 0 {
		ctx[CtxJournalMaxObjectSets] = strconv.Itoa(p.JournalMaxObjectSets)
	}
	if p.Metadata() {
		ctx[CtxJournalMode] = p.JournalMode
	}
	return ctx
}

// Matches reports how an existing image differs from the parameters ("" if
// it does not).
func (p VolumeParams) Matches(info storage.ImageInfo) string {
	var diffs []string
	if info.Order != p.ObjectOrder {
		diffs = append(diffs, fmt.Sprintf("objectOrder %d (requested %d)", info.Order, p.ObjectOrder))
	}
	if info.Features != p.Features {
		diffs = append(diffs, fmt.Sprintf("features %v (requested %v)", clsrbd.FeatureNames(info.Features), clsrbd.FeatureNames(p.Features)))
	}
	if p.Metadata() {
		// The extent log is not librbd's journal: no layout to compare.
		return strings.Join(diffs, ", ")
	}
	if info.JournalOrder != p.JournalOrder {
		diffs = append(diffs, fmt.Sprintf("journalOrder %d (requested %d)", info.JournalOrder, p.JournalOrder))
	}
	if info.JournalSplayWidth != p.JournalSplayWidth {
		diffs = append(diffs, fmt.Sprintf("journalSplayWidth %d (requested %d)", info.JournalSplayWidth, p.JournalSplayWidth))
	}
	return strings.Join(diffs, ", ")
}
