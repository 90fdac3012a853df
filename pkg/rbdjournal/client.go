package rbdjournal

import (
	"fmt"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
)

// Mirror uuids of tag owners (librbd::Journal).
const (
	// LocalMirrorUUID owns the tags of a journal written by its own image.
	LocalMirrorUUID = ""
	// OrphanMirrorUUID owns the tag written when a primary image is demoted.
	OrphanMirrorUUID = "<orphan>"
)

// ClientMetaType is the kind of a journal client's metadata.
type ClientMetaType uint32

// Client metadata types (librbd::journal::ClientMetaType).
const (
	ImageClientMetaType      ClientMetaType = 0 // the image itself (client id "")
	MirrorPeerClientMetaType ClientMetaType = 1 // an rbd-mirror peer
	CLIClientMetaType        ClientMetaType = 2 // the rbd CLI
)

// ClientMeta is ImageClientMeta or UnknownClientMeta.
type ClientMeta interface {
	// MetaType is the metadata's type.
	MetaType() ClientMetaType
	encode(e *cephenc.Encoder)
}

// ImageClientMeta is the metadata of the image's own journal client.
type ImageClientMeta struct {
	// TagClass is the class of the image's tags.
	TagClass uint64
	// ResyncRequested asks the mirroring daemon to resync the image.
	ResyncRequested bool
}

// UnknownClientMeta is client metadata this package does not decode field
// by field (mirror peers, the CLI, future types). Raw holds its encoded
// fields, so it re-encodes to the same bytes.
type UnknownClientMeta struct {
	Type ClientMetaType
	Raw  []byte
}

func (ImageClientMeta) MetaType() ClientMetaType     { return ImageClientMetaType }
func (m UnknownClientMeta) MetaType() ClientMetaType { return m.Type }

func (m ImageClientMeta) encode(e *cephenc.Encoder) {
	e.U64(m.TagClass)
	e.Bool(m.ResyncRequested)
}

func (m UnknownClientMeta) encode(e *cephenc.Encoder) { e.Raw(m.Raw) }

// ClientData is what librbd stores as a journal client's data.
type ClientData struct {
	Meta ClientMeta
}

// Encode appends ENCODE_START(2, 1){u32 meta type, meta fields}. It panics
// if Meta is nil.
func (c ClientData) Encode(e *cephenc.Encoder) {
	if c.Meta == nil {
		panic("rbdjournal: encoding ClientData without Meta")
	}
	m := e.Start(2, 1)
	e.U32(uint32(c.Meta.MetaType()))
	c.Meta.encode(e)
	e.Finish(m)
}

// Decode decodes client data; metadata of types other than the image's
// decodes as UnknownClientMeta.
func (c *ClientData) Decode(d *cephenc.Decoder) error {
	s := d.Start(1)
	t := ClientMetaType(d.U32())
	switch t {
	case ImageClientMetaType:
		var m ImageClientMeta
		m.TagClass = d.U64()
		m.ResyncRequested = d.Bool()
		c.Meta = m
	default:
		c.Meta = UnknownClientMeta{Type: t, Raw: d.Rest()}
	}
	d.Finish(s)
	if err := d.Err(); err != nil {
		c.Meta = nil
		return fmt.Errorf("decode client data: %w", err)
	}
	return nil
}

// TagPredecessor points at the last entry committed under the previous tag.
type TagPredecessor struct {
	MirrorUUID  string
	CommitValid bool
	TagTid      uint64
	EntryTid    uint64
}

// TagData is what librbd stores as a tag's data: who owns the epoch, and
// where the previous one ended. It has no struct envelope.
type TagData struct {
	MirrorUUID  string // LocalMirrorUUID for tags of the image itself
	Predecessor TagPredecessor
}

// Encode appends the tag data.
func (t TagData) Encode(e *cephenc.Encoder) {
	e.String(t.MirrorUUID)
	e.String(t.Predecessor.MirrorUUID)
	e.Bool(t.Predecessor.CommitValid)
	e.U64(t.Predecessor.TagTid)
	e.U64(t.Predecessor.EntryTid)
}

// Decode decodes tag data.
func (t *TagData) Decode(d *cephenc.Decoder) error {
	t.MirrorUUID = d.Str()
	t.Predecessor.MirrorUUID = d.Str()
	t.Predecessor.CommitValid = d.Bool()
	t.Predecessor.TagTid = d.U64()
	t.Predecessor.EntryTid = d.U64()
	if err := d.Err(); err != nil {
		return fmt.Errorf("decode tag data: %w", err)
	}
	return nil
}
