package cephenc

import (
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
)

func TestParseHex(t *testing.T) {
	for s, want := range map[string]uint64{
		"":                          0,
		"0":                         0,
		"z":                         0,
		"1z":                        1,
		"000000000000000a":          10,
		"FF":                        255,
		"fF":                        255,
		"0x10":                      0, // no 0x prefix, unlike the stream
		" 1":                        0, // no white space either
		"ffffffffffffffff":          math.MaxUint64,
		"fffffffffffffffff":         math.MaxUint64,
		"10000000000000000":         math.MaxUint64,
		"0000000000000000000000001": 1,
	} {
		if got := ParseHex(s); got != want {
			t.Errorf("ParseHex(%q) = %d, want %d", s, got, want)
		}
	}
}

// FuzzParseHex compares ParseHex with strconv.ParseUint of the leading hex
// digits, saturated on overflow.
func FuzzParseHex(f *testing.F) {
	for _, s := range []string{"", "0", "1z", "FF", "ffffffffffffffff", "10000000000000000", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		digits := s
		if i := strings.IndexFunc(s, func(r rune) bool { return !strings.ContainsRune("0123456789abcdefABCDEF", r) }); i >= 0 {
			digits = s[:i]
		}
		var want uint64
		if digits != "" {
			var err error
			want, err = strconv.ParseUint(digits, 16, 64)
			if errors.Is(err, strconv.ErrRange) {
				want = math.MaxUint64
			} else if err != nil {
				t.Fatal(err)
			}
		}
		if got := ParseHex(s); got != want {
			t.Fatalf("ParseHex(%q) = %d, want %d", s, got, want)
		}
	})
}

// TestHexKey: the keys of cls_journal's tags (the same scheme as cls_rbd's
// snapshots) and how the class parses them back.
func TestHexKey(t *testing.T) {
	tests := []struct {
		tid uint64
		key string
	}{
		{0, "tag_0000000000000000"},
		{1, "tag_0000000000000001"},
		{10, "tag_000000000000000a"},
		{255, "tag_00000000000000ff"},
		{1<<64 - 1, "tag_ffffffffffffffff"},
	}
	for _, tt := range tests {
		if got := HexKey("tag_", tt.tid); got != tt.key {
			t.Errorf("HexKey(%d) = %s, want %s", tt.tid, got, tt.key)
		}
		if got := ParseHexKey("tag_", tt.key); got != tt.tid {
			t.Errorf("ParseHexKey(%s) = %d", tt.key, got)
		}
	}
	for key, want := range map[string]uint64{"tag_": 0, "tag_1z": 1, "tag_FF": 255, "tag_fffffffffffffffff": 1<<64 - 1, "ta": 0} {
		if got := ParseHexKey("tag_", key); got != want {
			t.Errorf("ParseHexKey(%q) = %d, want %d", key, got, want)
		}
	}
}
