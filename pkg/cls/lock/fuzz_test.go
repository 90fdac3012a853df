package clslock

import (
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/classtest"
)

// seedRecorded adds every input, output and xattr of the recorded OSD
// session to f's corpus.
func seedRecorded(f *testing.F) {
	for _, st := range loadSession(f).Steps {
		for _, b := range [][]byte{st.Input, st.Output} {
			if len(b) > 0 {
				f.Add([]byte(b))
			}
		}
		for _, k := range slices.Sorted(maps.Keys(st.Xattrs)) {
			f.Add([]byte(st.Xattrs[k]))
		}
	}
	f.Add(legacyAddr(7, afInet, []byte{0, 1, 127, 0, 0, 1}))
}

// fuzzCodec checks that decoding arbitrary input does not panic and that
// whatever decodes re-encodes to bytes that decode to the same value and
// encode to the same bytes again.
func fuzzCodec[T any, P interface {
	*T
	codec
}](f *testing.F, equal func(a, b *T) bool) {
	seedRecorded(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		v := P(new(T))
		if err := cephenc.Unmarshal(in, v); err != nil {
			if !errors.Is(err, cephenc.ErrMalformed) {
				t.Fatalf("decoding error %v does not match ErrMalformed", err)
			}
			return
		}
		enc := cephenc.Marshal(v)
		again := P(new(T))
		if err := cephenc.Unmarshal(enc, again); err != nil {
			t.Fatalf("re-encoded value does not decode: %v", err)
		}
		if !equal((*T)(v), (*T)(again)) {
			t.Fatalf("round trip changed %+v into %+v", v, again)
		}
		if enc2 := cephenc.Marshal(again); string(enc2) != string(enc) {
			t.Fatalf("encoding is not stable:\n%x\n%x", enc, enc2)
		}
	})
}

func eq[T comparable](a, b *T) bool { return *a == *b }

func FuzzLockInfo(f *testing.F) {
	fuzzCodec(f, func(a, b *LockInfo) bool { return a.Equal(*b) })
}

func FuzzLockerID(f *testing.F)   { fuzzCodec(f, eq[LockerID]) }
func FuzzLockerInfo(f *testing.F) { fuzzCodec(f, eq[LockerInfo]) }
func FuzzEntityAddr(f *testing.F) { fuzzCodec(f, eq[EntityAddr]) }
func FuzzLockOp(f *testing.F)     { fuzzCodec(f, eq[LockOp]) }
func FuzzUnlockOp(f *testing.F)   { fuzzCodec(f, eq[UnlockOp]) }
func FuzzBreakOp(f *testing.F)    { fuzzCodec(f, eq[BreakOp]) }
func FuzzGetInfoOp(f *testing.F)  { fuzzCodec(f, eq[GetInfoOp]) }
func FuzzAssertOp(f *testing.F)   { fuzzCodec(f, eq[AssertOp]) }
func FuzzSetCookieOp(f *testing.F) {
	fuzzCodec(f, eq[SetCookieOp])
}

func FuzzListLocksReply(f *testing.F) {
	fuzzCodec(f, func(a, b *ListLocksReply) bool { return slices.Equal(a.Locks, b.Locks) })
}

// fuzzParse fuzzes a text parser from seeds: a failure must match
// ErrSyntax; check tests what parses.
func fuzzParse[T any](f *testing.F, seeds []string, parse func(string) (T, error), check func(t *testing.T, s string, v T)) {
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := parse(s)
		if err != nil {
			if !errors.Is(err, ErrSyntax) {
				t.Fatalf("error %v does not match ErrSyntax", err)
			}
			return
		}
		check(t, s, v)
	})
}

// FuzzParseEntityAddr checks that whatever parses prints as text that
// parses to the same address, and that the client form keeps all but the
// type.
func FuzzParseEntityAddr(f *testing.F) {
	seeds := []string{"127.0.0.1:0/3141592653", "v1:127.0.0.1:6789/0", "v2:[::1]:3300/12", "-",
		"local:0/77", "v1:local:0/1", "any:[::ffff:1.2.3.4]:5/6", "fe80::1", "1.2.3.4/9"}
	fuzzParse(f, seeds, ParseEntityAddr, func(t *testing.T, s string, a EntityAddr) {
		again, err := ParseEntityAddr(a.String())
		if err != nil || again != a {
			t.Fatalf("%q parses to %v, which parses to %v, %v", s, a, again, err)
		}
		if a.Type == AddrNone {
			return
		}
		client, err := ParseEntityAddr(a.ClientAddr())
		client.Type = a.Type
		if err != nil || client != a {
			t.Fatalf("%q: client form %q parses to %v, %v", s, a.ClientAddr(), client, err)
		}
	})
}

// FuzzParseEntityName checks that whatever parses with a known number
// prints as text that parses to the same name.
func FuzzParseEntityName(f *testing.F) {
	seeds := []string{"client.4123", "osd.0", "mgr.x", "client.-1", "client.+5"}
	fuzzParse(f, seeds, ParseEntityName, func(t *testing.T, s string, n EntityName) {
		if n.Num < 0 {
			return // prints as "client.?"
		}
		if again, err := ParseEntityName(n.String()); err != nil || again != n {
			t.Fatalf("%q parses to %+v, which prints %q and parses to %+v, %v", s, n, n, again, err)
		}
	})
}

// FuzzClassMethods calls every method with fuzzed input on an object whose
// lock state may be fuzzed too, by either caller at a fuzzed time, and checks
// that nothing panics, every failure carries an errno, the output stays in
// proportion to what the method was given, and whatever state a successful
// write leaves decodes.
func FuzzClassMethods(f *testing.F) {
	methods := slices.Sorted(maps.Keys(Class()))
	for i, m := range methods {
		var in []byte
		switch m {
		case "lock":
			in = cephenc.Marshal(LockOp{Name: "L", Type: LockShared, Cookie: "c", Duration: UTime{Sec: 10, Nsec: 0}})
		case "unlock":
			in = cephenc.Marshal(UnlockOp{Name: "L", Cookie: "c"})
		case "break_lock":
			in = cephenc.Marshal(BreakOp{Name: "L", Locker: nameA, Cookie: "c"})
		case "get_info":
			in = cephenc.Marshal(GetInfoOp{Name: "L"})
		case "assert_locked":
			in = cephenc.Marshal(AssertOp{Name: "L", Type: LockShared, Cookie: "c"})
		case "set_cookie":
			in = cephenc.Marshal(SetCookieOp{Name: "L", Type: LockShared, Cookie: "c", NewCookie: "d"})
		}
		f.Add(uint8(i), in, []byte(nil), false, int64(0))
		f.Add(uint8(i), in, []byte(nil), true, int64(20e9))
	}
	state := cephenc.Marshal(LockInfo{Type: LockShared, Lockers: map[LockerID]LockerInfo{
		{nameA, "c"}: {Expiration: UTime{Sec: 1_700_000_010, Nsec: 0}, Addr: mustAddr(f, "v1:127.0.0.1:0/1")},
		{nameB, "c"}: {Addr: mustAddr(f, "v1:local:0/2")},
	}})
	f.Add(uint8(0), cephenc.Marshal(LockOp{Name: "L", Type: LockShared, Cookie: "c"}), state, false, int64(5e9))
	f.Add(uint8(1), []byte{}, []byte{1, 1, 0xff, 0xff, 0xff, 0xff}, true, int64(-1))
	f.Fuzz(func(t *testing.T, method uint8, in, stored []byte, callerB bool, at int64) {
		o := &classtest.Object{Exists: true, Xattrs: map[string][]byte{"other": {1}}}
		if stored != nil {
			o.Xattrs["lock.L"] = stored
		}
		before := maps.Clone(o.Xattrs)
		caller := infoA
		if callerB {
			caller = infoB
		}
		name := methods[int(method)%len(methods)]
		now := time.Unix(1_700_000_000, 0).Add(time.Duration(at))
		out, err := classtest.Call(ClassWithClock(func() time.Time { return now })[name], o, caller, in)
		if err != nil {
			if objstore.Errno(err) == 0 {
				t.Fatalf("%s failed without an errno: %v", name, err)
			}
			return
		}
		if limit := 2*(len(in)+len(stored)) + 256; len(out) > limit {
			t.Fatalf("%s returned %d bytes from %d of input and %d of state", name, len(out), len(in), len(stored))
		}
		for k, v := range o.Xattrs {
			if string(before[k]) == string(v) {
				continue
			}
			var li LockInfo
			if err := cephenc.Unmarshal(v, &li); err != nil {
				t.Fatalf("%s wrote %s that does not decode: %v", name, k, err)
			}
		}
	})
}
