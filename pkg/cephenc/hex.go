package cephenc

import (
	"fmt"
	"math"
)

// HexKey is an omap key as Ceph's classes write one for a number: prefix,
// then v in 16 zero-padded lower-case hex digits (cls_journal's to_hex,
// cls_rbd's key_from_snap_id), so that the keys sort in numeric order.
func HexKey(prefix string, v uint64) string { return fmt.Sprintf("%s%016x", prefix, v) }

// ParseHexKey parses the number of a key HexKey writes as the classes do:
// ParseHex of what follows the prefix (which is not checked).
func ParseHexKey(prefix, key string) uint64 {
	return ParseHex(key[min(len(prefix), len(key)):])
}

// ParseHex parses the leading hex digits of s as a uint64, as Ceph's
// classes parse the hex part of an omap key (`istringstream(s) >> std::hex
// >> v`, e.g. cls_rbd's snap_id_from_key and cls_journal's tag keys):
// digits of either case up to the first other byte, 0 if s does not start
// with one, and the largest value on overflow (the C++11 stream's result).
//
// Unlike the stream it does not skip leading white space or take a sign or
// a 0x prefix; the keys the classes write (16 zero-padded lower-case
// digits) have none.
func ParseHex(s string) uint64 {
	var v uint64
	for _, c := range []byte(s) {
		var digit uint64
		switch {
		case '0' <= c && c <= '9':
			digit = uint64(c - '0')
		case 'a' <= c && c <= 'f':
			digit = uint64(c-'a') + 10
		case 'A' <= c && c <= 'F':
			digit = uint64(c-'A') + 10
		default:
			return v
		}
		if v > (math.MaxUint64-digit)/16 {
			return math.MaxUint64
		}
		v = v*16 + digit
	}
	return v
}
