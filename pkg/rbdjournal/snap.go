package rbdjournal

import (
	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
)

// SnapCreateEvent creates snapshot Name in Namespace (operation OpTid),
// journaled by the lock owner before it adds the snapshot.
type SnapCreateEvent struct {
	OpTid     uint64
	Namespace rbdnotify.SnapshotNamespace
	Name      string
}

// SnapRemoveEvent removes snapshot Name in Namespace (operation OpTid).
type SnapRemoveEvent struct {
	OpTid     uint64
	Namespace rbdnotify.SnapshotNamespace
	Name      string
}

func (SnapCreateEvent) Type() EventType { return EventTypeSnapCreate }
func (SnapRemoveEvent) Type() EventType { return EventTypeSnapRemove }

// encodeSnapEvent is librbd's SnapEventBase::encode: op tid, name, namespace.
func encodeSnapEvent(e *cephenc.Encoder, opTid uint64, ns rbdnotify.SnapshotNamespace, name string) {
	e.U64(opTid)
	e.String(name)
	ns.Encode(e)
}

// decodeSnapEvent is SnapEventBase::decode: the namespace exists since
// EventEntry version 4 (user before).
func decodeSnapEvent(v uint8, d *cephenc.Decoder, opTid *uint64, ns *rbdnotify.SnapshotNamespace, name *string) {
	*opTid = d.U64()
	*name = d.Str()
	*ns = rbdnotify.SnapshotNamespace{}
	if v >= 4 {
		_ = ns.Decode(d) // the error stays in d
	}
}

func (ev SnapCreateEvent) encode(e *cephenc.Encoder) {
	encodeSnapEvent(e, ev.OpTid, ev.Namespace, ev.Name)
}

// decode follows SnapCreateEvent::decode: version 3 wrote the namespace
// after the base fields.
func (ev *SnapCreateEvent) decode(v uint8, d *cephenc.Decoder) {
	decodeSnapEvent(v, d, &ev.OpTid, &ev.Namespace, &ev.Name)
	if v == 3 {
		_ = ev.Namespace.Decode(d)
	}
}

func (ev SnapRemoveEvent) encode(e *cephenc.Encoder) {
	encodeSnapEvent(e, ev.OpTid, ev.Namespace, ev.Name)
}
func (ev *SnapRemoveEvent) decode(v uint8, d *cephenc.Decoder) {
	decodeSnapEvent(v, d, &ev.OpTid, &ev.Namespace, &ev.Name)
}
