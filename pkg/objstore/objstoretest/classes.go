package objstoretest

import (
	"bytes"
	"encoding/binary"
	"strconv"
	"strings"
	"syscall"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Classes returns Go implementations of the Ceph object classes the suite
// calls, "hello" (src/cls/hello) and "numops" (src/cls/numops), which a Ceph
// OSD loads by default. A backend that runs object classes written in Go
// registers them so that the suite runs unchanged on it and on Ceph.
func Classes() map[string]objstore.Class {
	return map[string]objstore.Class{"hello": HelloClass(), "numops": NumopsClass()}
}

// HelloClass is Ceph's cls_hello.
func HelloClass() objstore.Class {
	return objstore.Class{
		"say_hello": {Call: func(ctx objstore.MethodContext, in []byte) ([]byte, error) {
			if len(in) > 100 {
				return nil, syscall.EINVAL
			}
			return helloText(in), nil
		}},
		"record_hello": {Write: true, Call: func(ctx objstore.MethodContext, in []byte) ([]byte, error) {
			if len(in) > 100 {
				return nil, syscall.EINVAL
			}
			if _, err := ctx.Stat(); err == nil {
				return nil, syscall.EEXIST
			}
			if err := ctx.WriteFull(helloText(in)); err != nil {
				return nil, err
			}
			c := ctx.Caller()
			return nil, ctx.SetXattr("said_by", []byte(c.Name()+" "+c.Addr))
		}},
		"replay": {Call: func(ctx objstore.MethodContext, in []byte) ([]byte, error) {
			return ctx.Read(0, 1100)
		}},
		"turn_it_to_11": {Write: true, Call: func(ctx objstore.MethodContext, in []byte) ([]byte, error) {
			b, err := ctx.Read(0, 0)
			if err != nil {
				return nil, err
			}
			return nil, ctx.WriteFull(bytes.ToUpper(b))
		}},
		"write_return_data": {Write: true, Call: func(ctx objstore.MethodContext, in []byte) ([]byte, error) {
			if err := ctx.SetXattr("foo", []byte("bar")); err != nil {
				return nil, err
			}
			if len(in) > 0 {
				return []byte("too much input data!"), syscall.EINVAL
			}
			return []byte("you might see this"), nil
		}},
		// bad_writer is declared read-only but writes: the call must fail.
		"bad_writer": {Call: func(ctx objstore.MethodContext, in []byte) ([]byte, error) {
			return nil, ctx.WriteFull(in)
		}},
	}
}

func helloText(in []byte) []byte {
	name := "world"
	if len(in) > 0 {
		name = string(in)
	}
	return []byte("Hello, " + name + "!")
}

// NumopsClass is Ceph's cls_numops: add and mul on decimal values kept in omap.
func NumopsClass() objstore.Class {
	op := func(apply func(a, b float64) float64) objstore.Method {
		return objstore.Method{Write: true, Call: func(ctx objstore.MethodContext, in []byte) ([]byte, error) {
			key, arg, ok := decodeTwoStrings(in)
			if !ok {
				return nil, syscall.EINVAL
			}
			d, err := strconv.ParseFloat(arg, 64)
			if err != nil {
				return nil, syscall.EINVAL
			}
			var v float64
			cur, err := ctx.OmapGet(key)
			switch {
			case err == nil && len(cur) > 0:
				if v, err = strconv.ParseFloat(string(cur), 64); err != nil {
					return nil, syscall.EBADMSG
				}
			case err != nil && objstore.Errno(err) != syscall.ENOENT && objstore.Errno(err) != syscall.ENODATA:
				return nil, err
			}
			v = apply(v, d)
			return nil, ctx.OmapSet(map[string][]byte{key: []byte(strconv.FormatFloat(v, 'g', 10, 64))})
		}}
	}
	return objstore.Class{
		"add": op(func(a, b float64) float64 { return a + b }),
		"mul": op(func(a, b float64) float64 { return a * b }),
	}
}

// NumopsArgs encodes the input of numops.add/mul: Ceph strings key and value.
func NumopsArgs(key string, value float64) []byte {
	var b []byte
	for _, s := range []string{key, strconv.FormatFloat(value, 'g', -1, 64)} {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	return b
}

func decodeTwoStrings(b []byte) (string, string, bool) {
	var out [2]string
	for i := range out {
		if len(b) < 4 {
			return "", "", false
		}
		n := binary.LittleEndian.Uint32(b)
		b = b[4:]
		if uint64(len(b)) < uint64(n) {
			return "", "", false
		}
		out[i] = string(b[:n])
		b = b[n:]
	}
	return out[0], strings.TrimSpace(out[1]), true
}
