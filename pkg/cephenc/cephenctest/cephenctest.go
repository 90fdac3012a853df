// Package cephenctest helps the tests of Ceph encodings (cephenc, the
// object classes, librbd's journal and notification payloads) write their
// expected bytes as hex with white space between fields, read the omaps
// Ceph wrote (golden files) and compare omaps with them.
package cephenctest

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// Hex decodes s, hex with spaces and line breaks between fields for
// readability; bad hex fails t.
func Hex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := decode(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// MustHex is Hex for package-level values: bad hex panics.
func MustHex(s string) []byte {
	b, err := decode(s)
	if err != nil {
		panic(err)
	}
	return b
}

// decode decodes s as Hex does.
func decode(s string) ([]byte, error) {
	return hex.DecodeString(strings.Join(strings.Fields(s), ""))
}

// ReadHexMap reads a golden omap file: a JSON object whose values are the
// hex of the omap values (as `rados getomapval` dumps were converted). An
// unreadable file or bad hex fails t.
func ReadHexMap(t testing.TB, path string) map[string][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var hexes map[string]string
	if err := json.Unmarshal(b, &hexes); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	m := make(map[string][]byte, len(hexes))
	for k, v := range hexes {
		if m[k], err = hex.DecodeString(v); err != nil {
			t.Fatalf("%s: key %q: %v", path, k, err)
		}
	}
	return m
}

// CompareOmap reports on t every key of want whose value in got differs or
// is missing, and every key of got that want does not have; what names the
// omap in the messages.
func CompareOmap(t testing.TB, what string, got, want map[string][]byte) {
	t.Helper()
	for k, v := range want {
		if !bytes.Equal(got[k], v) {
			t.Errorf("%s %q:\n got %x\nwant %x", what, k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s has extra key %q", what, k)
		}
	}
}
