package clslock

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc/cephenctest"
)

type codec interface {
	cephenc.Encodable
	cephenc.Decodable
}

// TestGoldenEncodings checks encodings field by field. The first case is
// the xattr a Ceph 16.2.15 OSD wrote for rados_lock_exclusive (read back
// with rados getxattr); the others follow Ceph's encoders (cls_lock_types.h,
// cls_lock_ops.h, msg_types.h entity_addr_t::encode with MSG_ADDR2 and
// SERVER_NAUTILUS, utime.h) one field at a time as annotated, and the whole
// session in testdata/ceph-pacific-lock.json confirms them against an OSD
// (TestCephGolden).
func TestGoldenEncodings(t *testing.T) {
	tests := []struct {
		name  string
		hex   string
		want  codec
		fresh func() codec
		equal func(a, b codec) bool
	}{
		{
			name: "lock_info_t written by an OSD for client.4113",
			hex: `01 01 5c000000          lock_info_t v1 compat 1, 92 bytes
			      01000000                1 locker
			      01 01 14000000          locker_id_t v1, 20 bytes
			        08 1110000000000000     entity_name_t client.4113
			        07000000 636f6f6b696531 cookie "cookie1"
			      01 01 33000000          locker_info_t v1, 51 bytes
			        00000000 00000000       expiration 0: never
			        01                      entity_addr_t marker: new encoding
			        01 01 1c000000          v1 compat 1, 28 bytes
			        01000000                type 1 (legacy)
			        1a253854                nonce 1412965658
			        10000000                sockaddr_in: 16 bytes
			        0200 0000 7f000001      AF_INET (little-endian), port 0, 127.0.0.1
			        0000000000000000        sin_zero
			        04000000 64657363       description "desc"
			      01                      exclusive
			      00000000                tag ""`,
			want: &LockInfo{Type: LockExclusive, Lockers: map[LockerID]LockerInfo{
				{ClientName(4113), "cookie1"}: {
					Addr:        NewEntityAddr(AddrLegacy, netip.MustParseAddrPort("127.0.0.1:0"), 1412965658),
					Description: "desc",
				},
			}},
			fresh: func() codec { return new(LockInfo) },
			equal: func(a, b codec) bool { return a.(*LockInfo).Equal(*b.(*LockInfo)) },
		},
		{
			name: "two lockers in locker_id_t order, expiration, local address",
			hex: `01 01 ba000000
			      02000000
			      01 01 12000000 08 0410000000000000 05000000 6175746f31     client.4100 "auto1"
			      01 01 3b000000 40e2fd6a 15cd5b07                          expiration {1795023424, 123456789}
			        01 01 01 28000000 01000000 4d000000                     v1, nonce 77
			        1c000000 0000 0000000000000000000000000000000000000000000000000000
			                                                                AF_UNSPEC: sizeof(u) = 28 bytes
			        00000000
			      01 01 12000000 08 0410000000000000 05000000 6175746f32     client.4100 "auto2": after "auto1"
			      01 01 32000000 0000000000000000
			        01 01 01 1c000000 01000000 02000000 10000000 0200 1a85 0a000001 0000000000000000
			                                                                v1:10.0.0.1:6789/2
			        03000000 616263
			      02 08000000 696e7465726e616c                              shared, tag "internal"`,
			want: &LockInfo{Type: LockShared, Tag: "internal", Lockers: map[LockerID]LockerInfo{
				{ClientName(4100), "auto2"}: {
					Addr:        NewEntityAddr(AddrLegacy, netip.MustParseAddrPort("10.0.0.1:6789"), 2),
					Description: "abc",
				},
				{ClientName(4100), "auto1"}: {
					Expiration: UTime{Sec: 1795023424, Nsec: 123456789},
					Addr:       EntityAddr{Type: AddrLegacy, Nonce: 77},
				},
			}},
			fresh: func() codec { return new(LockInfo) },
			equal: func(a, b codec) bool { return a.(*LockInfo).Equal(*b.(*LockInfo)) },
		},
		{
			name: "entity_addr_t v2 IPv6",
			hex: `01 01 01 28000000 02000000 0c000000 1c000000
			      0a00 0ce4 00000000                      AF_INET6, port 3300, flowinfo 0
			      00000000000000000000000000000001        ::1
			      00000000                                scope id`,
			want:  ptr(NewEntityAddr(AddrMsgr2, netip.MustParseAddrPort("[::1]:3300"), 12)),
			fresh: func() codec { return new(EntityAddr) },
			equal: func(a, b codec) bool { return *a.(*EntityAddr) == *b.(*EntityAddr) },
		},
		{
			name: "cls_lock_lock_op",
			hex: `01 01 33000000
			      08000000 7262645f6c6f636b         name "rbd_lock"
			      01                                exclusive
			      09000000 6175746f2031323334       cookie "auto 1234"
			      08000000 696e7465726e616c         tag "internal"
			      00000000                          description ""
			      1e000000 00000000                 duration 30 s
			      01`,
			want: &LockOp{Name: "rbd_lock", Type: LockExclusive, Cookie: "auto 1234", Tag: "internal",
				Duration: UTime{Sec: 30, Nsec: 0}, Flags: FlagMayRenew},
			fresh: func() codec { return new(LockOp) },
			equal: func(a, b codec) bool { return *a.(*LockOp) == *b.(*LockOp) },
		},
		{
			name:  "cls_lock_unlock_op",
			hex:   `01 01 0e000000 01000000 4c 05000000 6175746f31`,
			want:  &UnlockOp{Name: "L", Cookie: "auto1"},
			fresh: func() codec { return new(UnlockOp) },
			equal: func(a, b codec) bool { return *a.(*UnlockOp) == *b.(*UnlockOp) },
		},
		{
			name:  "cls_lock_break_op",
			hex:   `01 01 17000000 01000000 4c 08 0410000000000000 05000000 6175746f31`,
			want:  &BreakOp{Name: "L", Locker: ClientName(4100), Cookie: "auto1"},
			fresh: func() codec { return new(BreakOp) },
			equal: func(a, b codec) bool { return *a.(*BreakOp) == *b.(*BreakOp) },
		},
		{
			name:  "cls_lock_get_info_op",
			hex:   `01 01 05000000 01000000 4c`,
			want:  &GetInfoOp{Name: "L"},
			fresh: func() codec { return new(GetInfoOp) },
			equal: func(a, b codec) bool { return *a.(*GetInfoOp) == *b.(*GetInfoOp) },
		},
		{
			name:  "cls_lock_list_locks_reply",
			hex:   `01 01 0e000000 02000000 01000000 4c 01000000 4d`,
			want:  &ListLocksReply{Locks: []string{"L", "M"}},
			fresh: func() codec { return new(ListLocksReply) },
			equal: func(a, b codec) bool {
				return strings.Join(a.(*ListLocksReply).Locks, "\x00") == strings.Join(b.(*ListLocksReply).Locks, "\x00")
			},
		},
		{
			name:  "cls_lock_assert_op",
			hex:   `01 01 10000000 01000000 4c 02 01000000 63 01000000 74`,
			want:  &AssertOp{Name: "L", Type: LockShared, Cookie: "c", Tag: "t"},
			fresh: func() codec { return new(AssertOp) },
			equal: func(a, b codec) bool { return *a.(*AssertOp) == *b.(*AssertOp) },
		},
		{
			name:  "cls_lock_set_cookie_op",
			hex:   `01 01 15000000 01000000 4c 03 01000000 63 01000000 74 01000000 64`,
			want:  &SetCookieOp{Name: "L", Type: LockExclusiveEphemeral, Cookie: "c", Tag: "t", NewCookie: "d"},
			fresh: func() codec { return new(SetCookieOp) },
			equal: func(a, b codec) bool { return *a.(*SetCookieOp) == *b.(*SetCookieOp) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			golden := unhexAnnotated(t, tt.hex)
			if got := cephenc.Marshal(tt.want); !bytes.Equal(got, golden) {
				t.Errorf("encoded\n%x\nwant\n%x", got, golden)
			}
			got := tt.fresh()
			if err := cephenc.Unmarshal(golden, got); err != nil {
				t.Fatal(err)
			}
			if !tt.equal(got, tt.want) {
				t.Errorf("decoded %+v, want %+v", got, tt.want)
			}
		})
	}
}

// unhexAnnotated decodes hex in which every line may end with a comment:
// the words after the first one that is not hex.
func unhexAnnotated(t testing.TB, s string) []byte {
	t.Helper()
	var b strings.Builder
	for line := range strings.Lines(s) {
		for _, w := range strings.Fields(line) {
			if _, err := hex.DecodeString(w); err != nil {
				break
			}
			b.WriteString(w)
		}
	}
	return cephenctest.Hex(t, b.String())
}

func ptr[T any](v T) *T { return &v }

// legacyAddr is the legacy entity_addr_t encoding: u32 0, u32 nonce, a
// sockaddr_storage of 128 bytes with the family big-endian.
func legacyAddr(nonce uint32, family uint16, rest []byte) []byte {
	var e cephenc.Encoder
	e.U32(0)
	e.U32(nonce)
	ss := make([]byte, legacySockaddrSize)
	ss[0], ss[1] = byte(family>>8), byte(family)
	copy(ss[2:], rest)
	e.Raw(ss)
	return e.Data()
}

func TestEntityAddrDecode(t *testing.T) {
	v4 := NewEntityAddr(AddrLegacy, netip.MustParseAddrPort("192.168.0.7:6800"), 99)
	v6 := NewEntityAddr(AddrLegacy, netip.MustParseAddrPort("[fe80::1]:6800"), 99)
	tests := []struct {
		name string
		in   []byte
		want EntityAddr
	}{
		{"legacy AF_INET", legacyAddr(99, afInet, []byte{0x1a, 0x90, 192, 168, 0, 7}), v4},
		{"legacy AF_INET6", legacyAddr(99, afInet6, append([]byte{0x1a, 0x90, 0, 0, 0, 0}, netip.MustParseAddr("fe80::1").AsSlice()...)), v6},
		{"legacy AF_UNSPEC is none, nonce kept", legacyAddr(5, afUnspec, nil), EntityAddr{Nonce: 5}},
		{"legacy other family is none", legacyAddr(5, 1, []byte("/run/sock")), EntityAddr{Nonce: 5}},
		{"legacy ignores the rest of its type", append([]byte{0, 7, 7, 7}, legacyAddr(99, afInet, []byte{0x1a, 0x90, 192, 168, 0, 7})[4:]...), v4},
		{"short sockaddr", cephenctest.Hex(t, "01 0101 12000000 01000000 05000000 06000000 0200 1a90 c0a8"), EntityAddr{Type: AddrLegacy, Nonce: 5, family: afInet, data: [26]byte{0x1a, 0x90, 0xc0, 0xa8}}},
		{"no sockaddr", cephenctest.Hex(t, "01 0101 0c000000 03000000 05000000 00000000"), EntityAddr{Type: AddrAny, Nonce: 5}},
		{"unknown family kept", cephenctest.Hex(t, "01 0101 10000000 01000000 05000000 04000000 0100 6162"), EntityAddr{Type: AddrLegacy, Nonce: 5, family: 1, data: [26]byte{'a', 'b'}}},
		{"newer struct version, longer", cephenctest.Hex(t, "01 0201 0d000000 01000000 05000000 00000000 ff"), EntityAddr{Type: AddrLegacy, Nonce: 5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := cephenc.NewDecoder(tt.in)
			var a EntityAddr
			if err := a.Decode(d); err != nil {
				t.Fatal(err)
			}
			if a != tt.want || d.Remaining() != 0 {
				t.Errorf("got %v (%+v), %d bytes left; want %v (%+v)", a, a, d.Remaining(), tt.want, tt.want)
			}
		})
	}

	bad := []struct{ name, hex string }{
		{"marker 2", "02 0101 0c000000 01000000 05000000 00000000"},
		{"sockaddr length 1", "01 0101 0d000000 01000000 05000000 01000000 02"},
		{"AF_INET longer than sockaddr_in", "01 0101 1d000000 01000000 05000000 11000000 0200 000000000000000000000000000000"},
		{"AF_INET6 longer than the union", "01 0101 29000000 01000000 05000000 1d000000 0a00 " + strings.Repeat("00", 27)},
		{"compat 2", "01 0102 0c000000 01000000 05000000 00000000"},
		{"legacy truncated", "00000000 05000000 0002"},
		{"empty", ""},
	}
	for _, tt := range bad {
		var a EntityAddr
		if err := cephenc.Unmarshal(cephenctest.Hex(t, tt.hex), &a); !errors.Is(err, cephenc.ErrMalformed) || a != (EntityAddr{}) {
			t.Errorf("%s: %v, %+v; want ErrMalformed and a zero address", tt.name, err, a)
		}
	}
}

func TestEntityAddrText(t *testing.T) {
	tests := []struct {
		in, str, client string
		typ             AddrType
	}{
		// Ceph's forms: a client's address as rados_getaddrs and the
		// blocklist print it, and typed ones as operator<< prints them.
		{"127.0.0.1:0/3141592653", "127.0.0.1:0/3141592653", "127.0.0.1:0/3141592653", AddrAny},
		{"v1:127.0.0.1:6789/0", "v1:127.0.0.1:6789/0", "127.0.0.1:6789/0", AddrLegacy},
		{"v2:[::1]:3300/12", "v2:[::1]:3300/12", "[::1]:3300/12", AddrMsgr2},
		{"any:10.1.2.3:5/6", "10.1.2.3:5/6", "10.1.2.3:5/6", AddrAny},
		{"-", "-", "", AddrNone},
		{"1.2.3.4", "1.2.3.4:0/0", "1.2.3.4:0/0", AddrAny},
		{"1.2.3.4/9", "1.2.3.4:0/9", "1.2.3.4:0/9", AddrAny},
		{"fe80::1:2", "[fe80::1:2]:0/0", "[fe80::1:2]:0/0", AddrAny},
		{"[1.2.3.4]:5/6", "1.2.3.4:5/6", "1.2.3.4:5/6", AddrAny},
		{"v1:[::ffff:1.2.3.4]:5/6", "v1:[::ffff:1.2.3.4]:5/6", "[::ffff:1.2.3.4]:5/6", AddrLegacy},
		// The local backend's.
		{"local:0/77", "local:0/77", "local:0/77", AddrAny},
		{"v1:local:0/4294967295", "v1:local:0/4294967295", "local:0/4294967295", AddrLegacy},
	}
	for _, tt := range tests {
		a, err := ParseEntityAddr(tt.in)
		if err != nil {
			t.Errorf("ParseEntityAddr(%q): %v", tt.in, err)
			continue
		}
		if a.Type != tt.typ || a.String() != tt.str || a.ClientAddr() != tt.client {
			t.Errorf("ParseEntityAddr(%q) = type %d, %q, client %q; want %d, %q, %q", tt.in, a.Type, a, a.ClientAddr(), tt.typ, tt.str, tt.client)
		}
		if again, err := ParseEntityAddr(a.String()); err != nil || again != a {
			t.Errorf("%q does not round-trip: %v, %v", a, again, err)
		}
	}
	for _, in := range []string{"", "v1:", "v3:1.2.3.4:0/1", "1.2.3.4:65536/1", "1.2.3.4:/1", "1.2.3.4:5/",
		"1.2.3.4/4294967296", "1.2.3.4/-1", "1.2.3.4:5/6x", "01.2.3.4", "1.2.3", "[::1", "[fe80::1%eth0]:1/2",
		"::1:2:3:4:5:6:7:8:9", "local:1/2", "local/2", "v1:-", "- ", "host:1/2", "1.2.3.4 "} {
		if a, err := ParseEntityAddr(in); !errors.Is(err, ErrSyntax) {
			t.Errorf("ParseEntityAddr(%q) = %v, %v; want ErrSyntax", in, a, err)
		}
	}
	if ap, ok := mustAddr(t, "v2:[::1]:3300/12").AddrPort(); !ok || ap != netip.MustParseAddrPort("[::1]:3300") {
		t.Errorf("AddrPort = %v, %v", ap, ok)
	}
	if _, ok := mustAddr(t, "local:0/1").AddrPort(); ok {
		t.Error("a local address has an IP address")
	}
	odd := EntityAddr{Type: AddrLegacy, Nonce: 3, family: 1}
	if s := odd.String(); s != "v1:(unrecognized address family 1)/3" {
		t.Errorf("unknown family prints %q", s)
	}
}

func TestEntityName(t *testing.T) {
	for _, tt := range []struct {
		n    EntityName
		text string
	}{
		{ClientName(4123), "client.4123"},
		{EntityName{EntityTypeOSD, 0}, "osd.0"},
		{EntityName{EntityTypeMon, 2}, "mon.2"},
		{EntityName{EntityTypeMDS, 1}, "mds.1"},
		{EntityName{EntityTypeMgr, 9}, "mgr.9"},
	} {
		if s := tt.n.String(); s != tt.text {
			t.Errorf("%+v prints %q, want %q", tt.n, s, tt.text)
		}
		if n, err := ParseEntityName(tt.text); err != nil || n != tt.n {
			t.Errorf("ParseEntityName(%q) = %+v, %v", tt.text, n, err)
		}
	}
	if s := (EntityName{EntityTypeClient, -1}).String(); s != "client.?" {
		t.Errorf("negative number prints %q", s)
	}
	if s := (EntityName{0x40, 3}).String(); s != "unknown.3" {
		t.Errorf("unknown type prints %q", s)
	}
	if n, err := ParseEntityName("client.-2"); err != nil || n != (EntityName{EntityTypeClient, -2}) {
		t.Errorf("client.-2: %+v, %v (strtoll takes a sign)", n, err)
	}
	for _, in := range []string{"", "client.", "client", "client.x", "client. 1", "auth.1", "client.1x", "CLIENT.1",
		"client.99999999999999999999"} {
		if n, err := ParseEntityName(in); !errors.Is(err, ErrSyntax) {
			t.Errorf("ParseEntityName(%q) = %+v, %v; want ErrSyntax", in, n, err)
		}
	}
}

func TestLockTypeString(t *testing.T) {
	for typ, want := range map[LockType]string{LockNone: "none", LockExclusive: "exclusive", LockShared: "shared",
		LockExclusiveEphemeral: "exclusive-ephemeral", 9: "<unknown>"} {
		if s := typ.String(); s != want {
			t.Errorf("%d prints %q, want %q", typ, s, want)
		}
	}
}

func TestLockInfoDecodeErrors(t *testing.T) {
	valid := cephenc.Marshal(LockInfo{Type: LockExclusive, Tag: "t", Lockers: map[LockerID]LockerInfo{
		{ClientName(1), "c"}: {Addr: mustAddr(t, "v1:127.0.0.1:0/1")},
	}})
	for n := range len(valid) {
		var li LockInfo
		if err := cephenc.Unmarshal(valid[:n], &li); !errors.Is(err, cephenc.ErrMalformed) {
			t.Fatalf("truncated to %d bytes: %v", n, err)
		}
	}
	// A count the input cannot hold fails before allocating for it.
	huge := cephenctest.Hex(t, "0101 09000000 ffffff7f 00 00000000")
	var li LockInfo
	if err := cephenc.Unmarshal(huge, &li); !errors.Is(err, cephenc.ErrShortBuffer) {
		t.Errorf("huge count: %v", err)
	}
	// A repeated locker keeps the last value, as Ceph's map decoding.
	id := cephenc.Marshal(LockerID{ClientName(1), "c"})
	first := cephenc.Marshal(LockerInfo{Description: "first", Addr: mustAddr(t, "-")})
	second := cephenc.Marshal(LockerInfo{Description: "second", Addr: mustAddr(t, "-")})
	var e cephenc.Encoder
	m := e.Start(1, 1)
	e.U32(2)
	e.Raw(id)
	e.Raw(first)
	e.Raw(id)
	e.Raw(second)
	e.U8(1)
	e.String("")
	e.Finish(m)
	if err := cephenc.Unmarshal(e.Data(), &li); err != nil || len(li.Lockers) != 1 || li.Lockers[LockerID{ClientName(1), "c"}].Description != "second" {
		t.Errorf("repeated locker: %+v, %v", li, err)
	}
}
