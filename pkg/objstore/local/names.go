package local

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// maxEscaped is the longest escaped object name used directly as a file
// name; longer names are stored under a hash (see escapeName).
const maxEscaped = 200

func safeByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.'
}

// escapeName maps an object name to a file name: bytes outside
// [A-Za-z0-9_.-] (and a leading '.') become %XX. An escaped name longer than
// maxEscaped becomes "~" followed by the hex SHA-256 of the name, with the
// name itself kept in the pool's names/ directory. hashed reports the latter.
func escapeName(oid string) (name string, hashed bool) {
	var b strings.Builder
	b.Grow(len(oid))
	for i := 0; i < len(oid); i++ {
		c := oid[i]
		if safeByte(c) && !(i == 0 && c == '.') {
			b.WriteByte(c)
			continue
		}
		const hexd = "0123456789ABCDEF"
		b.WriteByte('%')
		b.WriteByte(hexd[c>>4])
		b.WriteByte(hexd[c&15])
	}
	if b.Len() > maxEscaped {
		sum := sha256.Sum256([]byte(oid))
		return "~" + hex.EncodeToString(sum[:]), true
	}
	return b.String(), false
}

// unescapeName reverses escapeName for names that are not hashed.
func unescapeName(name string) (string, bool) {
	if !strings.Contains(name, "%") {
		return name, true
	}
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c != '%' {
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(name) {
			return "", false
		}
		v, err := strconv.ParseUint(name[i+1:i+3], 16, 8)
		if err != nil {
			return "", false
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), true
}

// objPaths are the files of one object.
type objPaths struct {
	data string // object data; exists iff the object exists
	meta string // omap and xattrs (absent: none)
	name string // the full object name, for hashed names only
}

func (p *pool) paths(oid string) objPaths { return objPathsIn(p.dir, oid) }

func objPathsIn(poolDir, oid string) objPaths {
	esc, hashed := escapeName(oid)
	op := objPaths{
		data: filepath.Join(poolDir, "data", esc),
		meta: filepath.Join(poolDir, "meta", esc),
	}
	if hashed {
		op.name = filepath.Join(poolDir, "names", esc)
	}
	return op
}

// readLongName returns the object name stored for a hashed file name.
func readLongName(poolDir, file string) (string, error) {
	b, err := os.ReadFile(filepath.Join(poolDir, "names", file))
	return string(b), err
}
