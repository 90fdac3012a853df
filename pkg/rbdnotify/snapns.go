package rbdnotify

import (
	"bytes"
	"fmt"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
)

// Snapshot namespace types (cls::rbd::SnapshotNamespaceType).
const (
	SnapNamespaceUser   uint32 = 0
	SnapNamespaceGroup  uint32 = 1
	SnapNamespaceTrash  uint32 = 2
	SnapNamespaceMirror uint32 = 3
)

// SnapshotNamespace is cls::rbd::SnapshotNamespace: ENCODE_START(1, 1)
// { u32 type, the namespace's fields }. The group and trash namespaces are
// decoded into their fields; any other (mirror, unknown) keeps its fields
// undecoded in Raw, which Encode writes back as they were.
type SnapshotNamespace struct {
	Type uint32

	// Group (type 1).
	GroupPool       int64
	GroupID         string
	GroupSnapshotID string

	// Trash (type 2).
	OriginalName string
	OriginalType uint32

	// Raw holds the fields of a mirror or unknown namespace.
	Raw []byte
}

func (ns SnapshotNamespace) String() string {
	switch ns.Type {
	case SnapNamespaceUser:
		return "user"
	case SnapNamespaceGroup:
		return fmt.Sprintf("group(pool %d, group %s, snapshot %s)", ns.GroupPool, ns.GroupID, ns.GroupSnapshotID)
	case SnapNamespaceTrash:
		return fmt.Sprintf("trash(%s, type %d)", ns.OriginalName, ns.OriginalType)
	case SnapNamespaceMirror:
		return "mirror"
	}
	return fmt.Sprintf("unknown(%d)", ns.Type)
}

// Encode writes ns.
func (ns SnapshotNamespace) Encode(e *cephenc.Encoder) {
	s := e.Start(1, 1)
	e.U32(ns.Type)
	switch ns.Type {
	case SnapNamespaceUser:
	case SnapNamespaceGroup:
		e.S64(ns.GroupPool)
		e.String(ns.GroupID)
		e.String(ns.GroupSnapshotID)
	case SnapNamespaceTrash:
		e.String(ns.OriginalName)
		e.U32(ns.OriginalType)
	default:
		e.Raw(ns.Raw)
	}
	e.Finish(s)
}

// Decode reads ns.
func (ns *SnapshotNamespace) Decode(d *cephenc.Decoder) error {
	s := d.Start(1)
	*ns = SnapshotNamespace{Type: d.U32()}
	switch ns.Type {
	case SnapNamespaceUser:
	case SnapNamespaceGroup:
		ns.GroupPool = d.S64()
		ns.GroupID = d.Str()
		ns.GroupSnapshotID = d.Str()
	case SnapNamespaceTrash:
		ns.OriginalName = d.Str()
		ns.OriginalType = d.U32()
	default:
		if raw := d.Rest(); raw != nil {
			ns.Raw = bytes.Clone(raw)
		}
	}
	d.Finish(s)
	return d.Err()
}
