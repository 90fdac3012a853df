package local

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"sort"
	"strings"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

const metaMagic = 0x544d4a52 // "RJMT"

// objMeta is an object's omap (kept sorted by key) and xattrs. It is
// persisted whole in the object's meta file and in every log record that
// changes it, so that applying a record never depends on the previous
// content of the meta file.
type objMeta struct {
	omap   []objstore.KV // sorted by Key
	xattrs map[string][]byte
}

func (m *objMeta) empty() bool { return len(m.omap) == 0 && len(m.xattrs) == 0 }

func (m *objMeta) clone() *objMeta {
	n := &objMeta{omap: make([]objstore.KV, len(m.omap))}
	copy(n.omap, m.omap)
	if len(m.xattrs) > 0 {
		n.xattrs = make(map[string][]byte, len(m.xattrs))
		for k, v := range m.xattrs {
			n.xattrs[k] = v
		}
	}
	return n
}

func (m *objMeta) find(key string) (int, bool) {
	i := sort.Search(len(m.omap), func(i int) bool { return m.omap[i].Key >= key })
	return i, i < len(m.omap) && m.omap[i].Key == key
}

func (m *objMeta) get(key string) ([]byte, bool) {
	i, ok := m.find(key)
	if !ok {
		return nil, false
	}
	return m.omap[i].Value, true
}

// set stores a copy of value under key.
func (m *objMeta) set(key string, value []byte) {
	v := append([]byte{}, value...)
	i, ok := m.find(key)
	if ok {
		m.omap[i].Value = v
		return
	}
	m.omap = append(m.omap, objstore.KV{})
	copy(m.omap[i+1:], m.omap[i:])
	m.omap[i] = objstore.KV{Key: key, Value: v}
}

func (m *objMeta) remove(key string) {
	if i, ok := m.find(key); ok {
		m.omap = append(m.omap[:i], m.omap[i+1:]...)
	}
}

// maxOmapEntries is what a listing returns when the caller asks for max <= 0:
// Ceph's osd_max_omap_entries_per_request.
const maxOmapEntries = 131072

// list returns up to max entries with keys after startAfter that begin with
// prefix, as Ceph's OMAPGETVALS does: More is set if a further matching key exists.
func (m *objMeta) list(startAfter, prefix string, max int) objstore.OmapPage {
	if max <= 0 || max > maxOmapEntries {
		max = maxOmapEntries
	}
	i := sort.Search(len(m.omap), func(i int) bool { return m.omap[i].Key > startAfter })
	if prefix > startAfter {
		i = sort.Search(len(m.omap), func(i int) bool { return m.omap[i].Key >= prefix })
	}
	var page objstore.OmapPage
	for ; i < len(m.omap) && strings.HasPrefix(m.omap[i].Key, prefix); i++ {
		if len(page.Entries) >= max {
			page.More = true
			break
		}
		kv := m.omap[i]
		page.Entries = append(page.Entries, objstore.KV{Key: kv.Key, Value: append([]byte{}, kv.Value...)})
	}
	return page
}

// encode serialises m: magic u32, crc32c u32 (of what follows), omap count,
// entries, xattr count, entries (keys sorted); strings as u32 length + bytes.
func (m *objMeta) encode() []byte {
	n := 16
	for _, kv := range m.omap {
		n += 8 + len(kv.Key) + len(kv.Value)
	}
	names := make([]string, 0, len(m.xattrs))
	for k, v := range m.xattrs {
		names = append(names, k)
		n += 8 + len(k) + len(v)
	}
	sort.Strings(names)
	b := make([]byte, 8, n)
	binary.LittleEndian.PutUint32(b, metaMagic)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(m.omap)))
	for _, kv := range m.omap {
		b = appendBytes(b, []byte(kv.Key))
		b = appendBytes(b, kv.Value)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(names)))
	for _, k := range names {
		b = appendBytes(b, []byte(k))
		b = appendBytes(b, m.xattrs[k])
	}
	binary.LittleEndian.PutUint32(b[4:], crc32.Checksum(b[8:], castagnoli))
	return b
}

var errCorrupt = errors.New("corrupt")

func decodeMeta(b []byte) (*objMeta, error) {
	m := &objMeta{}
	if len(b) == 0 {
		return m, nil
	}
	if len(b) < 16 || binary.LittleEndian.Uint32(b) != metaMagic ||
		binary.LittleEndian.Uint32(b[4:]) != crc32.Checksum(b[8:], castagnoli) {
		return nil, errCorrupt
	}
	d := decoder{b: b[8:]}
	n := d.u32()
	if uint64(n) > uint64(len(b)) {
		return nil, errCorrupt
	}
	m.omap = make([]objstore.KV, 0, n)
	for i := uint32(0); i < n && d.err == nil; i++ {
		k := d.bytes()
		v := d.bytes()
		m.omap = append(m.omap, objstore.KV{Key: string(k), Value: append([]byte{}, v...)})
	}
	nx := d.u32()
	if nx > 0 && d.err == nil {
		m.xattrs = make(map[string][]byte, nx)
	}
	for i := uint32(0); i < nx && d.err == nil; i++ {
		k := d.bytes()
		v := d.bytes()
		m.xattrs[string(k)] = append([]byte{}, v...)
	}
	if d.err != nil || len(d.b) != 0 {
		return nil, errCorrupt
	}
	return m, nil
}

func appendBytes(b, v []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(v)))
	return append(b, v...)
}

// decoder reads little-endian fields; the first short read sets err.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) take(n uint64) []byte {
	if d.err != nil || uint64(len(d.b)) < n {
		d.err = errCorrupt
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8() uint8 {
	if v := d.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if v := d.take(4); v != nil {
		return binary.LittleEndian.Uint32(v)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if v := d.take(8); v != nil {
		return binary.LittleEndian.Uint64(v)
	}
	return 0
}

func (d *decoder) bytes() []byte { return d.take(uint64(d.u32())) }
