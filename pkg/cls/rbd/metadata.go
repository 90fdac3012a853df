package clsrbd

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/cls/clsenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Image metadata (`rbd image-meta`): cls_rbd keeps each key as the header
// omap key "metadata_<key>" holding the raw value bytes.
const metadataKeyPrefix = "metadata_"

// MetadataSet adds rbd.metadata_set to op (cls_client::metadata_set): it
// sets the image metadata keys of kv on the image header.
func MetadataSet(op *objstore.WriteOp, kv map[string]string) {
	exec(op, "metadata_set", func(e *cephenc.Encoder) {
		// A std::map: u32 count, then the pairs in key order.
		keys := slices.Sorted(maps.Keys(kv))
		e.U32(uint32(len(keys)))
		for _, k := range keys {
			e.String(k)
			e.Bytes([]byte(kv[k]))
		}
	})
}

// MetadataRemove adds rbd.metadata_remove to op (cls_client::metadata_remove):
// a missing key is no error.
func MetadataRemove(op *objstore.WriteOp, key string) {
	exec(op, "metadata_remove", func(e *cephenc.Encoder) { e.String(key) })
}

// MetadataGet returns the value of image metadata key on the header oid;
// objstore.ErrNotFound if the key (or the header) does not exist.
func MetadataGet(ctx context.Context, r Reader, oid, key string) (string, error) {
	var v []byte
	err := call(ctx, r, oid, "metadata_get", encString(key), func(d *cephenc.Decoder) { v = d.Bytes() })
	if err != nil {
		return "", fmt.Errorf("get image metadata %q: %w", key, err)
	}
	return string(v), nil
}

// metadataSet stores image metadata. Input: map<string, bufferlist>.
// Like cls_rbd it does not check that the header exists.
func metadataSet(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	d := cephenc.NewDecoder(in)
	n := d.U32()
	kv := map[string][]byte{}
	for i := uint32(0); i < n && d.Err() == nil; i++ {
		k := d.Str()
		v := d.Bytes()
		kv[metadataKeyPrefix+k] = append([]byte{}, v...)
	}
	if err := clsenc.BadInput(d.Err()); err != nil {
		return nil, err
	}
	return nil, ctx.OmapSet(kv)
}

// metadataRemove removes one image metadata key. Input: string key.
func metadataRemove(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	k, err := clsenc.Input(in, clsenc.String)
	if err != nil {
		return nil, err
	}
	// The OSD's omap key removal fails with ENOENT on a missing object.
	if err := checkExists(ctx); err != nil {
		return nil, err
	}
	return nil, ctx.OmapRemove(metadataKeyPrefix + k)
}

// metadataGet returns one image metadata value as a bufferlist; ENOENT if
// the key is not set. Input: string key.
func metadataGet(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	k, err := clsenc.Input(in, clsenc.String)
	if err != nil {
		return nil, err
	}
	v, err := ctx.OmapGet(metadataKeyPrefix + k)
	if err != nil {
		return nil, err
	}
	return cephenc.MarshalFunc(func(e *cephenc.Encoder) { e.Bytes(v) }), nil
}
