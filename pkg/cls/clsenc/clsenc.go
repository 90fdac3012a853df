// Package clsenc is what the Go object classes (cls/journal, cls/rbd,
// cls/lock) share to read their inputs and to read and write their omap
// values in Ceph's encoding through an objstore.MethodContext, with the
// return codes Ceph's classes give when something does not decode; and, on
// the client side, how they call a class method that returns a result.
package clsenc

import (
	"context"
	"fmt"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// BadInput is the -EINVAL every method returns for an input it cannot
// decode, wrapping the decoding error err; nil if err is nil. Pass it a
// Decoder's Err after reading the input.
func BadInput(err error) error {
	if err != nil {
		return fmt.Errorf("decode input: %w: %w", objstore.ErrInvalid, err)
	}
	return nil
}

// Input decodes a method's input, a single value, with dec (U64, String,
// ...); a failure is BadInput's -EINVAL.
func Input[T any](in []byte, dec func(*cephenc.Decoder) (T, error)) (T, error) {
	v, err := dec(cephenc.NewDecoder(in))
	return v, BadInput(err)
}

// DecodeInput decodes a method's input into v; a failure is BadInput's
// -EINVAL.
func DecodeInput(in []byte, v cephenc.Decodable) error {
	return BadInput(cephenc.Unmarshal(in, v))
}

// ReadKey reads omap value key and decodes it with dec, as the read_key
// helpers of Ceph's classes do: a missing key is the MethodContext's error
// (objstore.ErrNotFound), an undecodable value is undecodable (cls_journal
// returns -EINVAL, cls_rbd -EIO) wrapping the decoding error.
func ReadKey[T any](ctx objstore.MethodContext, key string, dec func(*cephenc.Decoder) (T, error), undecodable error) (T, error) {
	var zero T
	b, err := ctx.OmapGet(key)
	if err != nil {
		return zero, err
	}
	v, err := dec(cephenc.NewDecoder(b))
	if err != nil {
		return zero, fmt.Errorf("omap key %q: %w: %w", key, undecodable, err)
	}
	return v, nil
}

// Decoders of single values for ReadKey.
func U8(d *cephenc.Decoder) (uint8, error)      { v := d.U8(); return v, d.Err() }
func U64(d *cephenc.Decoder) (uint64, error)    { v := d.U64(); return v, d.Err() }
func S64(d *cephenc.Decoder) (int64, error)     { v := d.S64(); return v, d.Err() }
func String(d *cephenc.Decoder) (string, error) { v := d.Str(); return v, d.Err() }

// WriteKey sets omap key to what enc encodes.
func WriteKey(ctx objstore.MethodContext, key string, enc func(e *cephenc.Encoder)) error {
	return ctx.OmapSet(map[string][]byte{key: cephenc.MarshalFunc(enc)})
}

// WriteU64 sets omap key to the encoding of v.
func WriteU64(ctx objstore.MethodContext, key string, v uint64) error {
	return WriteKey(ctx, key, func(e *cephenc.Encoder) { e.U64(v) })
}

// Reader runs a compound read on one object; objstore.Pool is one.
type Reader interface {
	Read(ctx context.Context, oid string, op *objstore.ReadOp) error
}

// Call runs class.method on object oid with input in, as the only step of a
// read, and returns a Decoder of the method's output.
func Call(ctx context.Context, r Reader, oid, class, method string, in []byte) (*cephenc.Decoder, error) {
	var op objstore.ReadOp
	res := op.Exec(class, method, in)
	if err := r.Read(ctx, oid, &op); err != nil {
		return nil, err
	}
	return cephenc.NewDecoder(res.Out()), nil
}

// CallDecode runs class.method as Call does and decodes its output as a T.
func CallDecode[T any, P interface {
	*T
	cephenc.Decodable
}](ctx context.Context, r Reader, oid, class, method string, in []byte) (T, error) {
	var v T
	d, err := Call(ctx, r, oid, class, method, in)
	if err == nil {
		err = P(&v).Decode(d)
	}
	if err != nil {
		var zero T
		return zero, err
	}
	return v, nil
}
