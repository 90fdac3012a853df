// Package clsjournal is Ceph's cls_journal: the journal header's types and
// their encodings, the client-side calls that librbd's journaler makes
// (cls_journal_client.cc), and the server side of the "journal" object
// class (cls_journal.cc) implemented in Go for backends without Ceph.
//
// Everything here is byte-compatible with Ceph 16 (Pacific): the same omap
// keys, value encodings, method inputs and outputs, and return codes.
package clsjournal

import (
	"bytes"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
)

// TagClassNew asks tag_create to allocate a new tag class (Ceph's
// Tag::TAG_CLASS_NEW).
const TagClassNew = math.MaxUint64

// maxReturn is the page size of client_list and tag_list calls
// (cls::journal::JOURNAL_MAX_RETURN).
const maxReturn = 256

// structHeader is the size of an ENCODE_START envelope, the least an
// encoded struct can take; it bounds container counts while decoding.
const structHeader = 6

// ObjectPosition is the position of one committed entry.
type ObjectPosition struct {
	ObjectNumber uint64
	TagTid       uint64
	EntryTid     uint64
}

// denc codes p as ENCODE_START(1, 1){u64 object_number, u64 tag_tid, u64
// entry_tid}.
func (p *ObjectPosition) denc(c cephenc.Coder) {
	c.Struct(1, 1, func() {
		c.U64(&p.ObjectNumber)
		c.U64(&p.TagTid)
		c.U64(&p.EntryTid)
	})
}

// Encode appends p's encoding.
func (p ObjectPosition) Encode(e *cephenc.Encoder) { p.denc(cephenc.Encoding(e)) }

// Decode decodes p.
func (p *ObjectPosition) Decode(d *cephenc.Decoder) error {
	return cephenc.DecodeAs(d, "object position", p.denc)
}

// String formats p the way Ceph prints it.
func (p ObjectPosition) String() string {
	return fmt.Sprintf("[object_number=%d, tag_tid=%d, entry_tid=%d]", p.ObjectNumber, p.TagTid, p.EntryTid)
}

// ObjectSetPosition is a client's commit position: the newest committed
// entry of each splay object, newest first.
type ObjectSetPosition struct {
	ObjectPositions []ObjectPosition
}

// Encode appends p's encoding, ENCODE_START(1, 1) around a u32 count and
// the positions.
func (p ObjectSetPosition) Encode(e *cephenc.Encoder) {
	m := e.Start(1, 1)
	cephenc.EncodeList(e, p.ObjectPositions)
	e.Finish(m)
}

// Decode decodes p; no positions decode as nil.
func (p *ObjectSetPosition) Decode(d *cephenc.Decoder) error {
	s := d.Start(1)
	l, _ := cephenc.DecodeList[ObjectPosition](d, structHeader)
	p.ObjectPositions = nil
	if len(l) > 0 {
		p.ObjectPositions = l
	}
	d.Finish(s)
	if err := d.Err(); err != nil {
		return fmt.Errorf("decode object set position: %w", err)
	}
	return nil
}

// Equal reports whether p and q hold the same positions in the same order.
func (p ObjectSetPosition) Equal(q ObjectSetPosition) bool {
	return slices.Equal(p.ObjectPositions, q.ObjectPositions)
}

// String formats p the way Ceph prints it.
func (p ObjectSetPosition) String() string {
	var b strings.Builder
	b.WriteString("[positions=[")
	for i, op := range p.ObjectPositions {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(op.String())
	}
	b.WriteString("]]")
	return b.String()
}

// ClientState is whether a registered client still counts for trimming.
type ClientState uint8

// Client states (cls::journal::ClientState).
const (
	ClientStateConnected    ClientState = 0
	ClientStateDisconnected ClientState = 1
)

func (s ClientState) String() string {
	switch s {
	case ClientStateConnected:
		return "connected"
	case ClientStateDisconnected:
		return "disconnected"
	}
	return fmt.Sprintf("unknown (%d)", uint8(s))
}

// Client is a registered journal client (omap key client_<id>).
type Client struct {
	ID             string
	Data           []byte // opaque to the journal; librbd stores a ClientData
	CommitPosition ObjectSetPosition
	State          ClientState
}

// denc codes c as ENCODE_START(1, 1){string id, bufferlist data,
// ObjectSetPosition commit_position, u8 state}.
func (c *Client) denc(cd cephenc.Coder) {
	cd.Struct(1, 1, func() {
		cd.String(&c.ID)
		cd.Bytes(&c.Data)
		cd.Value(&c.CommitPosition)
		cd.U8((*uint8)(&c.State))
	})
}

// Encode appends c's encoding.
func (c Client) Encode(e *cephenc.Encoder) { c.denc(cephenc.Encoding(e)) }

// Decode decodes c. Data is a copy, not an alias of the input.
func (c *Client) Decode(d *cephenc.Decoder) error { return cephenc.DecodeAs(d, "client", c.denc) }

// Equal reports whether c and o are the same client record.
func (c Client) Equal(o Client) bool {
	return c.ID == o.ID && bytes.Equal(c.Data, o.Data) &&
		c.CommitPosition.Equal(o.CommitPosition) && c.State == o.State
}

// Tag is a journal tag (omap key tag_<tid>): an epoch of one writer of a tag
// class. librbd stores a TagData in Data.
type Tag struct {
	Tid      uint64
	TagClass uint64
	Data     []byte
}

// denc codes t as ENCODE_START(1, 1){u64 tid, u64 tag_class, bufferlist
// data}.
func (t *Tag) denc(c cephenc.Coder) {
	c.Struct(1, 1, func() {
		c.U64(&t.Tid)
		c.U64(&t.TagClass)
		c.Bytes(&t.Data)
	})
}

// Encode appends t's encoding.
func (t Tag) Encode(e *cephenc.Encoder) { t.denc(cephenc.Encoding(e)) }

// Decode decodes t. Data is a copy, not an alias of the input.
func (t *Tag) Decode(d *cephenc.Decoder) error { return cephenc.DecodeAs(d, "tag", t.denc) }

// Equal reports whether t and o are the same tag.
func (t Tag) Equal(o Tag) bool {
	return t.Tid == o.Tid && t.TagClass == o.TagClass && bytes.Equal(t.Data, o.Data)
}
