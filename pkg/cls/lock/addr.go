package clslock

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
)

// AddrType is the protocol an entity_addr_t is for.
type AddrType uint32

// Address types (entity_addr_t::type_t).
const (
	AddrNone   AddrType = 0 // no address; printed "-"
	AddrLegacy AddrType = 1 // msgr v1, printed with the prefix "v1:"
	AddrMsgr2  AddrType = 2 // msgr v2, "v2:"
	AddrAny    AddrType = 3 // either; printed without a prefix
)

func (t AddrType) name() string {
	switch t {
	case AddrNone:
		return "none"
	case AddrLegacy:
		return "v1"
	case AddrMsgr2:
		return "v2"
	case AddrAny:
		return "any"
	case 4:
		return "cidr"
	}
	return "???"
}

// Address families as Linux numbers them; Ceph's encodings use these values
// whatever the platform.
const (
	afUnspec = 0
	afInet   = 2
	afInet6  = 10
)

// sockaddrUnionSize is sizeof(entity_addr_t::u), the union of sockaddr,
// sockaddr_in and sockaddr_in6: the size of sockaddr_in6.
const sockaddrUnionSize = 28

// legacySockaddrSize is sizeof(sockaddr_storage) in the legacy encoding.
const legacySockaddrSize = 128

// EntityAddr is Ceph's entity_addr_t: an address type, a nonce that tells
// the instances of a client apart, and a socket address. The socket address
// is kept as Ceph keeps it, the bytes after sa_family in network byte order,
// so that decoding and re-encoding is exact.
//
// The local backend's client addresses, "local:0/<nonce>", have no socket
// address: they are represented with the AF_UNSPEC family, which Ceph never
// records for a client, and this package prints that family as "local:0"
// where Ceph would print "(unrecognized address family 0)".
type EntityAddr struct {
	Type  AddrType
	Nonce uint32

	family uint16
	data   [sockaddrUnionSize - 2]byte // sa_data of the union
}

// NewEntityAddr returns an address of type t for ap and nonce.
func NewEntityAddr(t AddrType, ap netip.AddrPort, nonce uint32) EntityAddr {
	a := EntityAddr{Type: t, Nonce: nonce}
	ip := ap.Addr()
	switch {
	case ip.Is4():
		a.family = afInet
		ip4 := ip.As4()
		copy(a.data[2:6], ip4[:])
	case ip.Is6():
		a.family = afInet6
		ip16 := ip.As16()
		copy(a.data[6:22], ip16[:])
	default:
		return a
	}
	binary.BigEndian.PutUint16(a.data[0:2], ap.Port())
	return a
}

// AddrPort returns the IP address and port, and whether a has one.
func (a EntityAddr) AddrPort() (netip.AddrPort, bool) {
	port := binary.BigEndian.Uint16(a.data[0:2])
	switch a.family {
	case afInet:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(a.data[2:6])), port), true
	case afInet6:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(a.data[6:22])), port), true
	}
	return netip.AddrPort{}, false
}

// String formats a as Ceph does (operator<< of entity_addr_t): "-" for no
// address, else the type prefix ("v1:", "v2:", none for "any"), the socket
// address and the nonce: "v1:127.0.0.1:0/3141592653",
// "v2:[::1]:6800/12", "v1:local:0/77".
func (a EntityAddr) String() string {
	if a.Type == AddrNone {
		return "-"
	}
	s := a.sockaddrString() + "/" + strconv.FormatUint(uint64(a.Nonce), 10)
	if a.Type == AddrAny {
		return s
	}
	return a.Type.name() + ":" + s
}

// ClientAddr returns the address without its type prefix, as Ceph's
// get_legacy_str formats it ("127.0.0.1:0/3141592653", "local:0/77"): the
// form of objstore.ClientInfo.Addr, and what a blocklist entry names. It is
// "" for an address of type none.
func (a EntityAddr) ClientAddr() string {
	if a.Type == AddrNone {
		return ""
	}
	return a.sockaddrString() + "/" + strconv.FormatUint(uint64(a.Nonce), 10)
}

func (a EntityAddr) sockaddrString() string {
	switch a.family {
	case afInet, afInet6:
		ap, _ := a.AddrPort()
		return ap.String()
	case afUnspec:
		return "local:0"
	}
	return fmt.Sprintf("(unrecognized address family %d)", a.family)
}

// ParseEntityAddr parses an address in the forms String and ClientAddr
// produce. As entity_addr_t::parse it accepts an optional "v1:", "v2:" or
// "any:" prefix, "-", an IPv4 address or an IPv6 address (bracketed if a
// port follows), an optional ":port" and an optional "/nonce"; it also
// accepts the local backend's "local:0/nonce". Without a prefix the type is
// AddrAny (Ceph's parse would assume v2, but prints an "any" address without
// a prefix: AddrAny makes the text round-trip). Unlike Ceph, it rejects a
// nonce beyond 32 bits instead of wrapping it.
func ParseEntityAddr(s string) (EntityAddr, error) {
	bad := func() (EntityAddr, error) {
		return EntityAddr{}, fmt.Errorf("entity address %q: %w", s, ErrSyntax)
	}
	a := EntityAddr{Type: AddrAny}
	rest := s
	switch {
	case strings.HasPrefix(rest, "v1:"):
		a.Type, rest = AddrLegacy, rest[3:]
	case strings.HasPrefix(rest, "v2:"):
		a.Type, rest = AddrMsgr2, rest[3:]
	case strings.HasPrefix(rest, "any:"):
		a.Type, rest = AddrAny, rest[4:]
	case rest == "-":
		return EntityAddr{}, nil
	}
	if local, ok := strings.CutPrefix(rest, "local:0"); ok {
		a.family = afUnspec
		rest = local
	} else {
		var ok bool
		if a, rest, ok = parseIP(a, rest); !ok {
			return bad()
		}
	}
	if nonce, ok := strings.CutPrefix(rest, "/"); ok {
		n, err := strconv.ParseUint(nonce, 10, 32)
		if err != nil {
			return bad()
		}
		a.Nonce, rest = uint32(n), ""
	}
	if rest != "" {
		return bad()
	}
	return a, nil
}

// parseIP parses an IP address and optional port at the start of s as
// entity_addr_t::parse does: without brackets, the longest run of IPv4
// characters if it is an IPv4 address, else the longest run of IPv6
// characters. Between brackets it takes any IP address netip parses without
// a zone, so that every address String prints (IPv4-mapped IPv6 ones
// included) parses back.
func parseIP(a EntityAddr, s string) (EntityAddr, string, bool) {
	var ip netip.Addr
	if inner, ok := strings.CutPrefix(s, "["); ok {
		end := strings.IndexByte(inner, ']')
		if end < 0 {
			return a, s, false
		}
		p, err := netip.ParseAddr(inner[:end])
		if err != nil || p.Zone() != "" {
			return a, s, false
		}
		ip, s = p, inner[end+1:]
	} else {
		run := func(ok func(c byte) bool) string {
			i := 0
			for i < len(s) && ok(s[i]) {
				i++
			}
			return s[:i]
		}
		v4 := run(func(c byte) bool { return c == '.' || '0' <= c && c <= '9' })
		v6 := run(func(c byte) bool {
			return c == ':' || '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
		})
		if p, err := netip.ParseAddr(v4); err == nil && p.Is4() {
			ip, s = p, s[len(v4):]
		} else if p, err := netip.ParseAddr(v6); err == nil && p.Is6() {
			ip, s = p, s[len(v6):]
		} else {
			return a, s, false
		}
	}
	var port uint64
	if p, ok := strings.CutPrefix(s, ":"); ok {
		digits := 0
		for digits < len(p) && '0' <= p[digits] && p[digits] <= '9' {
			digits++
		}
		var err error
		if port, err = strconv.ParseUint(p[:digits], 10, 16); err != nil {
			return a, s, false
		}
		s = p[digits:]
	}
	return NewEntityAddr(a.Type, netip.AddrPortFrom(ip, uint16(port)), a.Nonce), s, true
}

// sockaddrLen is get_sockaddr_len: the size of the family's sockaddr, or of
// the whole union for any other family.
func sockaddrLen(family uint16) int {
	if family == afInet {
		return 16
	}
	return sockaddrUnionSize
}

// Encode writes a in the form an OSD writes for a client with the
// MSG_ADDR2 and SERVER_NAUTILUS features (every Nautilus or later client):
// u8 marker 1, then ENCODE_START(1, 1){u32 type, u32 nonce, u32 sockaddr
// length, u16 family (little-endian), the rest of the sockaddr}.
func (a EntityAddr) Encode(e *cephenc.Encoder) {
	e.U8(1)
	m := e.Start(1, 1)
	e.U32(uint32(a.Type))
	e.U32(a.Nonce)
	n := sockaddrLen(a.family)
	e.U32(uint32(n))
	e.U16(a.family)
	e.Raw(a.data[:n-2])
	e.Finish(m)
}

// Decode reads an entity_addr_t in either encoding: the one Encode writes,
// or the legacy one written for clients without MSG_ADDR2 (u32 0, u32
// nonce, a 128-byte sockaddr_storage with a big-endian family). Like Ceph,
// it keeps a legacy socket address only for AF_INET and AF_INET6 and types
// it v1, or none if there is none.
func (a *EntityAddr) Decode(d *cephenc.Decoder) error {
	*a = EntityAddr{}
	switch marker := d.U8(); {
	case d.Err() != nil:
	case marker == 0:
		d.Raw(3) // the rest of the legacy u32 type, which Ceph ignores
		a.Nonce = d.U32()
		ss := d.Raw(legacySockaddrSize)
		if ss == nil {
			break
		}
		switch family := binary.BigEndian.Uint16(ss); family {
		case afInet, afInet6:
			a.family = family
			copy(a.data[:sockaddrLen(family)-2], ss[2:])
			a.Type = AddrLegacy
		}
	case marker == 1:
		s := d.Start(1)
		a.Type = AddrType(d.U32())
		a.Nonce = d.U32()
		n := d.U32()
		if n > 0 {
			if n < 2 {
				malformed(d) // Ceph: "elen smaller than family len"
				break
			}
			a.family = d.U16()
			if int(n-2) > sockaddrLen(a.family)-2 {
				malformed(d) // Ceph: "elen exceeds sockaddr len"
				break
			}
			copy(a.data[:], d.Raw(int(n-2)))
		}
		d.Finish(s)
	default:
		malformed(d) // Ceph: "entity_addr_t marker != 1"
	}
	if err := d.Err(); err != nil {
		*a = EntityAddr{}
		return err
	}
	return nil
}

// malformed fails d. A cephenc.Decoder cannot record a failure of its
// caller's choosing; an impossible read fails it with ErrShortBuffer, which
// matches cephenc.ErrMalformed as every decoding failure does.
func malformed(d *cephenc.Decoder) { d.Raw(-1) }
