package clslock

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"maps"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/classtest"
)

// cephSession is a session recorded against a Ceph 16.2.15 OSD by
// testdata/capture_golden.py (see testdata/README.md).
type cephSession struct {
	Ceph    string
	Clients map[string]recordedClient
	Steps   []cephStep
}

type recordedClient struct {
	ID   uint64
	Addr string
}

type cephStep struct {
	Note   string
	Client string
	Object string
	Method string
	Write  bool
	Input  hexBytes
	RC     int
	Output hexBytes
	NowNs  int64 `json:"now_ns"`

	// The object after the step.
	Exists bool
	Size   int
	Xattrs map[string]hexBytes

	// A change made outside the class.
	Setup     bool
	SetData   *hexBytes           `json:"set_data"`
	SetXattrs map[string]hexBytes `json:"set_xattrs"`
}

type hexBytes []byte

func (h *hexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := hex.DecodeString(s)
	*h = v
	return err
}

func loadSession(t testing.TB) cephSession {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "ceph-pacific-lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s cephSession
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	if len(s.Steps) == 0 || len(s.Clients) != 2 {
		t.Fatalf("session has %d steps, %d clients", len(s.Steps), len(s.Clients))
	}
	return s
}

// stepClock is the OSD's time during a step. It is the time recorded just
// after the step, except for a lock with a duration, where the expiration
// the OSD wrote gives it exactly: expiration - duration, or, if the
// expiration was capped at the u32 maximum, the recorded second with the
// expiration's nanoseconds less the duration's.
func stepClock(t *testing.T, client recordedClient, st cephStep) time.Time {
	t.Helper()
	after := time.Unix(0, st.NowNs)
	var op LockOp
	if st.Method != "lock" || st.RC != 0 || cephenc.Unmarshal(st.Input, &op) != nil || op.Duration.IsZero() {
		return after
	}
	var li LockInfo
	if err := cephenc.Unmarshal(st.Xattrs[XattrName(op.Name)], &li); err != nil {
		t.Fatalf("%s: expected state: %v", st.Note, err)
	}
	exp, ok := li.Lockers[LockerID{Locker: ClientName(client.ID), Cookie: op.Cookie}]
	if !ok {
		t.Fatalf("%s: the OSD recorded no hold", st.Note)
	}
	var now time.Time
	if e := exp.Expiration; e.Sec == math.MaxUint32 {
		now = time.Unix(after.Unix(), int64(e.Nsec)-int64(op.Duration.Nsec))
	} else {
		total := func(u UTime) int64 { return int64(u.Sec)*1e9 + int64(u.Nsec) }
		now = time.Unix(0, total(e)-total(op.Duration))
	}
	if d := after.Sub(now); d < 0 || d > 2*time.Second {
		t.Fatalf("%s: derived OSD time %v is %v before the time recorded after the step", st.Note, now, d)
	}
	return now
}

// TestCephGolden replays a session recorded against a real OSD on the Go
// class and checks every return code, every output and the object's xattrs
// after every step, byte for byte.
func TestCephGolden(t *testing.T) {
	s := loadSession(t)
	c := newMemCluster()
	clients := map[string]*classtest.Pool{}
	for name, ci := range s.Clients {
		clients[name] = c.client(ci.ID, ci.Addr)
	}
	ctx := context.Background()
	for i, st := range s.Steps {
		oid := st.Object
		if st.Setup {
			o := c.Object(oid)
			o.Exists = true
			if st.SetData != nil {
				o.Data = bytes.Clone(*st.SetData)
			}
			for k, v := range st.SetXattrs {
				o.Xattrs[k] = bytes.Clone(v)
			}
			c.Objects[oid] = o
		} else {
			cl := clients[st.Client]
			c.now = stepClock(t, s.Clients[st.Client], st)
			var err error
			var out []byte
			if st.Write {
				var op objstore.WriteOp
				op.Exec(className, st.Method, st.Input)
				err = cl.Operate(ctx, oid, &op)
			} else {
				var op objstore.ReadOp
				res := op.Exec(className, st.Method, st.Input)
				if err = cl.Read(ctx, oid, &op); err == nil {
					out = res.Out()
				}
			}
			rc := -int(objstore.Errno(err))
			if err != nil && rc == 0 {
				t.Fatalf("step %d (%s): error without an errno: %v", i, st.Note, err)
			}
			if rc != st.RC {
				t.Errorf("step %d (%s): rc %d (%v), Ceph returned %d", i, st.Note, rc, err, st.RC)
			}
			if !bytes.Equal(out, st.Output) {
				t.Errorf("step %d (%s): output\n%x\nCeph returned\n%x", i, st.Note, out, []byte(st.Output))
			}
		}
		got := c.Object(oid)
		if got.Exists != st.Exists || len(got.Data) != st.Size {
			t.Errorf("step %d (%s): exists %v size %d, Ceph: exists %v size %d", i, st.Note, got.Exists, len(got.Data), st.Exists, st.Size)
		}
		want := map[string][]byte{}
		for k, v := range st.Xattrs {
			want[k] = v
		}
		if !maps.EqualFunc(got.Xattrs, want, bytes.Equal) {
			t.Errorf("step %d (%s): xattrs\n%x\nCeph has\n%x", i, st.Note, got.Xattrs, want)
		}
	}
}

// TestCephGoldenInputsFromClientCalls checks that the client calls encode
// each well-formed input of the recorded session as it was sent.
func TestCephGoldenInputsFromClientCalls(t *testing.T) {
	checked := 0
	for _, st := range loadSession(t).Steps {
		if st.Setup {
			continue
		}
		got, ok := clientInput(st.Method, st.Input)
		if !ok {
			continue
		}
		checked++
		if !bytes.Equal(got, st.Input) {
			t.Errorf("%s: client call encodes\n%x\nrecorded input is\n%x", st.Note, got, []byte(st.Input))
		}
	}
	if checked < 50 {
		t.Errorf("only %d inputs checked", checked)
	}
}

// clientInput decodes in as method's input and encodes the same request
// with the client call. ok is false for inputs that do not decode exactly
// or that the client calls cannot express.
func clientInput(method string, in []byte) (_ []byte, ok bool) {
	var wop objstore.WriteOp
	var rop objstore.ReadOp
	decode := func(v cephenc.Decodable) bool {
		d := cephenc.NewDecoder(in)
		return v.Decode(d) == nil && d.Remaining() == 0
	}
	switch method {
	case "lock":
		var op LockOp
		if !decode(&op) {
			return nil, false
		}
		d := time.Duration(op.Duration.Sec)*time.Second + time.Duration(op.Duration.Nsec)
		if DurationUTime(d) != op.Duration {
			return nil, false
		}
		Lock(&wop, op.Name, op.Type, op.Cookie, op.Tag, op.Description, d, op.Flags)
	case "unlock":
		var op UnlockOp
		if !decode(&op) {
			return nil, false
		}
		Unlock(&wop, op.Name, op.Cookie)
	case "break_lock":
		var op BreakOp
		if !decode(&op) {
			return nil, false
		}
		BreakLock(&wop, op.Name, op.Cookie, op.Locker)
	case "assert_locked":
		var op AssertOp
		if !decode(&op) {
			return nil, false
		}
		AssertLocked(&wop, op.Name, op.Type, op.Cookie, op.Tag)
	case "set_cookie":
		var op SetCookieOp
		if !decode(&op) {
			return nil, false
		}
		SetCookie(&wop, op.Name, op.Type, op.Cookie, op.Tag, op.NewCookie)
	case "get_info":
		var op GetInfoOp
		if !decode(&op) {
			return nil, false
		}
		_, _ = GetLockInfo(context.Background(), recorder{&rop}, "o", op.Name)
	case "list_locks":
		if len(in) != 0 {
			return nil, false
		}
		_, _ = ListLocks(context.Background(), recorder{&rop}, "o")
	default:
		return nil, false
	}
	if steps := wop.Steps(); len(steps) == 1 && steps[0].Method == method {
		return steps[0].Data, true
	}
	if steps := rop.Steps(); len(steps) == 1 && steps[0].Method == method {
		return steps[0].Data, true
	}
	return nil, false
}

// recorder is a Reader that keeps the operation it is asked to run and
// fails it.
type recorder struct{ op *objstore.ReadOp }

func (r recorder) Read(_ context.Context, _ string, op *objstore.ReadOp) error {
	*r.op = *op
	return objstore.ErrNotSupp
}

// TestLibradosInputs checks that the client calls send what librados sends
// for the same calls, as captured from a librados 16.2.15 client's socket by
// testdata/capture_librados.py.
func TestLibradosInputs(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "librados-inputs.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Client uint64
		Inputs []struct {
			Call, Method string
			Input        hexBytes
		}
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	calls := []func(*objstore.WriteOp, *objstore.ReadOp){
		func(op *objstore.WriteOp, _ *objstore.ReadOp) {
			Lock(op, "lockx", LockExclusive, "cookie-x", "", "exclusive desc", 0, FlagMayRenew)
		},
		func(op *objstore.WriteOp, _ *objstore.ReadOp) {
			Lock(op, "locks", LockShared, "cookie-s", "tag-s", "shared desc", 0, 0)
		},
		func(op *objstore.WriteOp, _ *objstore.ReadOp) { Unlock(op, "lockx", "cookie-x") },
		func(op *objstore.WriteOp, _ *objstore.ReadOp) {
			Lock(op, "lockd", LockExclusive, "cookie-d", "tag-d", "desc d", 30*time.Second, 0)
		},
		func(_ *objstore.WriteOp, op *objstore.ReadOp) {
			_, _ = GetLockInfo(context.Background(), recorder{op}, "o", "locks")
		},
		func(op *objstore.WriteOp, _ *objstore.ReadOp) {
			BreakLock(op, "locks", "cookie-s", ClientName(rec.Client))
		},
	}
	if len(rec.Inputs) != len(calls) {
		t.Fatalf("%d recorded inputs, %d calls", len(rec.Inputs), len(calls))
	}
	for i, in := range rec.Inputs {
		var wop objstore.WriteOp
		var rop objstore.ReadOp
		calls[i](&wop, &rop)
		var got objstore.Step
		switch {
		case len(wop.Steps()) == 1:
			got = wop.Steps()[0]
		case len(rop.Steps()) == 1:
			got = *rop.Steps()[0]
		default:
			t.Fatalf("%s: no step", in.Call)
		}
		if got.Kind != objstore.StepExec || got.Class != "lock" || got.Method != in.Method || !bytes.Equal(got.Data, in.Input) {
			t.Errorf("%s: got %s.%s\n%x\nlibrados sent %s.%s\n%x", in.Call, got.Class, got.Method, got.Data, "lock", in.Method, []byte(in.Input))
		}
	}
}
