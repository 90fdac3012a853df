// Package cephenctest helps the tests of Ceph encodings (cephenc, the
// object classes, librbd's journal and notification payloads) write their
// expected bytes as hex with white space between fields.
package cephenctest

import (
	"encoding/hex"
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
