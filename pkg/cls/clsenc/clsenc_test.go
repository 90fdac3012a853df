package clsenc

import (
	"errors"
	"syscall"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/classtest"
)

func TestBadInput(t *testing.T) {
	if err := BadInput(nil); err != nil {
		t.Fatalf("BadInput(nil) = %v", err)
	}
	d := cephenc.NewDecoder([]byte{1})
	d.U64()
	if err := BadInput(d.Err()); !errors.Is(err, objstore.ErrInvalid) || !errors.Is(err, cephenc.ErrShortBuffer) {
		t.Fatalf("BadInput = %v, want EINVAL wrapping the decoding error", err)
	}
	u32 := decodable(func(d *cephenc.Decoder) error { d.U32(); return d.Err() })
	if err := DecodeInput([]byte{1, 2, 3, 4}, u32); err != nil {
		t.Fatal(err)
	}
	if err := DecodeInput([]byte{1}, u32); !errors.Is(err, objstore.ErrInvalid) || !errors.Is(err, cephenc.ErrShortBuffer) {
		t.Fatalf("DecodeInput = %v, want EINVAL wrapping the decoding error", err)
	}
	if v, err := Input([]byte{2, 1, 0, 0, 0, 0, 0, 0}, U64); err != nil || v != 0x0102 {
		t.Fatalf("Input = %d, %v", v, err)
	}
	if v, err := Input([]byte{1}, U64); !errors.Is(err, objstore.ErrInvalid) || !errors.Is(err, cephenc.ErrShortBuffer) || v != 0 {
		t.Fatalf("Input = %d, %v, want 0 and EINVAL wrapping the decoding error", v, err)
	}
}

type decodable func(d *cephenc.Decoder) error

func (f decodable) Decode(d *cephenc.Decoder) error { return f(d) }

func TestReadWriteKey(t *testing.T) {
	o := classtest.NewObject()
	o.Exists = true
	if _, err := ReadKey(o, "n", U64, syscall.EIO); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("missing key: %v", err)
	}
	if err := WriteU64(o, "n", 0x0102); err != nil {
		t.Fatal(err)
	}
	if got := o.Omap["n"]; string(got) != "\x02\x01\x00\x00\x00\x00\x00\x00" {
		t.Fatalf("WriteU64 stored %x", got)
	}
	if v, err := ReadKey(o, "n", U64, syscall.EIO); err != nil || v != 0x0102 {
		t.Fatalf("ReadKey = %d, %v", v, err)
	}
	if err := WriteKey(o, "s", func(e *cephenc.Encoder) { e.String("abc") }); err != nil {
		t.Fatal(err)
	}
	if v, err := ReadKey(o, "s", String, syscall.EIO); err != nil || v != "abc" {
		t.Fatalf("ReadKey = %q, %v", v, err)
	}
	// An undecodable value is the class's errno, wrapping the decoding error.
	o.Omap["short"] = []byte{1}
	for _, errno := range []syscall.Errno{syscall.EIO, syscall.EINVAL} {
		if _, err := ReadKey(o, "short", S64, errno); !errors.Is(err, errno) || !errors.Is(err, cephenc.ErrShortBuffer) {
			t.Errorf("undecodable value: %v, want %v", err, errno)
		}
	}
	if v, err := ReadKey(o, "short", U8, syscall.EIO); err != nil || v != 1 {
		t.Fatalf("ReadKey = %d, %v", v, err)
	}
}
