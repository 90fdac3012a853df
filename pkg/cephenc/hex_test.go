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

func TestHexKey(t *testing.T) {
	tests := []struct {
		v   uint64
		key string
	}{
		{0, "tag_0000000000000000"},
		{10, "tag_000000000000000a"},
		{math.MaxUint64, "tag_ffffffffffffffff"},
	}
	for _, tt := range tests {
		if got := HexKey("tag_", tt.v); got != tt.key {
			t.Errorf("HexKey(tag_, %d) = %q, want %q", tt.v, got, tt.key)
		}
		if got := ParseHexKey("tag_", tt.key); got != tt.v {
			t.Errorf("ParseHexKey(tag_, %q) = %d, want %d", tt.key, got, tt.v)
		}
	}
	if got := ParseHexKey("snapshot_", "snap"); got != 0 {
		t.Errorf("ParseHexKey of a key shorter than the prefix = %d, want 0", got)
	}
}
