package clsrbd

import (
	"context"
	"fmt"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
)

// MirroringOID is a pool's mirroring object (RBD_MIRRORING): its mode,
// mirror uuid, site name and peers.
const MirroringOID = "rbd_mirroring"

// MirrorPeer is one mirror peer of a pool (cls::rbd::MirrorPeer): the
// other site. MirrorUUID is the mirror uuid of the peer's pool — what the
// journal tags of an image replicated from that site carry as their owner
// — once the peer's rbd-mirror has reported it (empty before, and in
// version 1 records).
type MirrorPeer struct {
	UUID       string
	SiteName   string
	ClientName string
	Direction  uint8 // 0 rx, 1 tx, 2 rx-tx
	MirrorUUID string
}

// Decode reads a record of any version (ENCODE_START(2, 1)).
func (p *MirrorPeer) Decode(d *cephenc.Decoder) error {
	s := d.Start(2)
	*p = MirrorPeer{UUID: d.Str(), SiteName: d.Str(), ClientName: d.Str()}
	d.S64() // pool id, unused
	if s.Version >= 2 {
		p.Direction = d.U8()
		p.MirrorUUID = d.Str()
		d.U32() // last_seen (utime_t)
		d.U32()
	}
	d.Finish(s)
	return d.Err()
}

// MirrorPeerList returns the mirror peers of the pool whose mirroring
// object r reads (cls rbd mirror_peer_list).
func MirrorPeerList(ctx context.Context, r Reader) ([]MirrorPeer, error) {
	var peers []MirrorPeer
	err := call(ctx, r, MirroringOID, "mirror_peer_list", nil, func(d *cephenc.Decoder) {
		n := d.Count(6)
		for range n {
			var p MirrorPeer
			if p.Decode(d) != nil {
				return
			}
			peers = append(peers, p)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("list mirror peers: %w", err)
	}
	return peers, nil
}
