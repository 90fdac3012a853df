package objstore

import "fmt"

// StepKind names one step of a compound operation.
type StepKind uint8

const (
	StepCreate StepKind = iota + 1
	StepRemove
	StepWrite
	StepWriteFull
	StepAppend
	StepTruncate
	StepZero
	StepSetOmap
	StepRmOmapKeys
	StepClearOmap
	StepSetXattr
	StepRmXattr
	StepAssertExists
	StepExec
	StepRead
	StepStat
	StepGetOmapVals
	StepGetOmapValsByKeys
	StepGetXattr
	StepGetXattrs
	StepCmpExt
	StepWritev
	StepAppendv
)

// Step is one step of a WriteOp or ReadOp, exported for backends.
type Step struct {
	Kind      StepKind
	Exclusive bool     // StepCreate
	Off, Len  uint64   // StepWrite, StepZero, StepRead; Off is the size for StepTruncate
	Data      []byte   // StepWrite, StepWriteFull, StepAppend, StepSetXattr value, StepExec input
	Bufs      [][]byte // StepWritev, StepAppendv: the data, in pieces
	Name      string   // xattr name
	Omap      map[string][]byte
	Keys      []string
	Class     string // StepExec
	Method    string // StepExec

	// Omap listing (StepGetOmapVals).
	StartAfter string
	Prefix     string
	MaxReturn  int

	// Results of read steps, filled by the backend.
	Result any
}

var stepNames = map[StepKind]string{
	StepCreate: "create", StepRemove: "remove", StepWrite: "write",
	StepWriteFull: "writefull", StepAppend: "append", StepTruncate: "truncate",
	StepZero: "zero", StepSetOmap: "omap-set", StepRmOmapKeys: "omap-rm-keys",
	StepClearOmap: "omap-clear", StepSetXattr: "setxattr", StepRmXattr: "rmxattr",
	StepAssertExists: "assert-exists", StepExec: "exec", StepRead: "read",
	StepStat: "stat", StepGetOmapVals: "omap-get-vals",
	StepGetOmapValsByKeys: "omap-get-vals-by-keys", StepGetXattr: "getxattr",
	StepGetXattrs: "getxattrs", StepCmpExt: "cmpext",
	// A vectored step is the same operation to the store.
	StepWritev: "write", StepAppendv: "append",
}

// OpName names the step in errors (OpError.Op), the same for every backend:
// "exec <class>.<method>" for a class method, the operation's name otherwise.
func (s *Step) OpName() string {
	if s.Kind == StepExec {
		return "exec " + s.Class + "." + s.Method
	}
	if n, ok := stepNames[s.Kind]; ok {
		return n
	}
	return fmt.Sprintf("step %d", s.Kind)
}

// WriteOp is a compound write. Steps apply in order, atomically.
// The zero value is an empty operation.
type WriteOp struct {
	steps []Step
	lazy  bool
	snapc SnapContext // see snap.go
}

// SetLazy lets the backend complete the operation before it is durable: it
// becomes durable no later than the next non-lazy operation issued by the
// same client completes. A journaled device uses it for image writes, whose
// durability the journal already guarantees until a later (synced) commit
// position update. Backends where every operation is durable (Ceph) ignore it.
func (op *WriteOp) SetLazy() { op.lazy = true }

// Lazy reports whether SetLazy was called.
func (op *WriteOp) Lazy() bool { return op.lazy }

// Steps returns the steps for a backend to execute.
func (op *WriteOp) Steps() []Step { return op.steps }

// Empty reports whether op has no steps.
func (op *WriteOp) Empty() bool { return len(op.steps) == 0 }

// Create creates the object; with exclusive it fails with ErrExists if the
// object exists.
func (op *WriteOp) Create(exclusive bool) {
	op.steps = append(op.steps, Step{Kind: StepCreate, Exclusive: exclusive})
}

// Remove deletes the object (ErrNotFound if it does not exist).
func (op *WriteOp) Remove() { op.steps = append(op.steps, Step{Kind: StepRemove}) }

// Write writes data at off, creating the object and extending it as needed.
func (op *WriteOp) Write(off uint64, data []byte) {
	op.steps = append(op.steps, Step{Kind: StepWrite, Off: off, Data: data})
}

// Writev is Write of the concatenation of bufs, which the backend gathers
// as it encodes the operation: a caller combining several writes into one
// saves building (and zeroing) a buffer of their bytes.
func (op *WriteOp) Writev(off uint64, bufs [][]byte) {
	op.steps = append(op.steps, Step{Kind: StepWritev, Off: off, Bufs: bufs})
}

// WriteFull replaces the object's data with data.
func (op *WriteOp) WriteFull(data []byte) {
	op.steps = append(op.steps, Step{Kind: StepWriteFull, Data: data})
}

// Append writes data at the object's current end.
func (op *WriteOp) Append(data []byte) {
	op.steps = append(op.steps, Step{Kind: StepAppend, Data: data})
}

// Appendv is Append of the concatenation of bufs (see Writev).
func (op *WriteOp) Appendv(bufs [][]byte) {
	op.steps = append(op.steps, Step{Kind: StepAppendv, Bufs: bufs})
}

// Truncate sets the object's size.
func (op *WriteOp) Truncate(size uint64) {
	op.steps = append(op.steps, Step{Kind: StepTruncate, Off: size})
}

// Zero zeroes length bytes at off (never extends the object).
func (op *WriteOp) Zero(off, length uint64) {
	op.steps = append(op.steps, Step{Kind: StepZero, Off: off, Len: length})
}

// SetOmap sets omap keys, creating the object if needed.
func (op *WriteOp) SetOmap(kv map[string][]byte) {
	op.steps = append(op.steps, Step{Kind: StepSetOmap, Omap: kv})
}

// RmOmapKeys removes omap keys (missing keys are ignored).
func (op *WriteOp) RmOmapKeys(keys ...string) {
	op.steps = append(op.steps, Step{Kind: StepRmOmapKeys, Keys: keys})
}

// ClearOmap removes every omap key.
func (op *WriteOp) ClearOmap() { op.steps = append(op.steps, Step{Kind: StepClearOmap}) }

// SetXattr sets an xattr, creating the object if needed.
func (op *WriteOp) SetXattr(name string, value []byte) {
	op.steps = append(op.steps, Step{Kind: StepSetXattr, Name: name, Data: value})
}

// RmXattr removes an xattr.
func (op *WriteOp) RmXattr(name string) {
	op.steps = append(op.steps, Step{Kind: StepRmXattr, Name: name})
}

// CmpExt makes the operation fail with ErrMismatch, changing nothing, unless
// the object's bytes at off equal data (bytes past the end of the object
// compare as zeroes; a missing object fails with ErrNotFound). RADOS'
// cmpext.
func (op *WriteOp) CmpExt(off uint64, data []byte) {
	op.steps = append(op.steps, Step{Kind: StepCmpExt, Off: off, Data: data})
}

// AssertExists fails the operation with ErrNotFound if the object does not exist.
func (op *WriteOp) AssertExists() { op.steps = append(op.steps, Step{Kind: StepAssertExists}) }

// Exec calls object-class method class.method with input in. Output of a
// method called from a write is discarded, as in librados.
func (op *WriteOp) Exec(class, method string, in []byte) {
	op.steps = append(op.steps, Step{Kind: StepExec, Class: class, Method: method, Data: in})
}

// ReadOp is a compound read. Each method returns a result that is filled in
// when Pool.Read returns nil.
type ReadOp struct {
	steps []*Step
	snap  uint64 // 0: the head; see snap.go
}

// Steps returns the steps for a backend to execute; the backend sets Result.
func (op *ReadOp) Steps() []*Step { return op.steps }

func (op *ReadOp) add(s Step) *Step {
	p := &s
	op.steps = append(op.steps, p)
	return p
}

// ReadResult is the outcome of ReadOp.Read.
type ReadResult struct{ s *Step }

// Data is the bytes read (short at the end of the object).
func (r ReadResult) Data() []byte { b, _ := r.s.Result.([]byte); return b }

// Read reads up to length bytes at off (length 0 reads to the end).
func (op *ReadOp) Read(off, length uint64) ReadResult {
	return ReadResult{op.add(Step{Kind: StepRead, Off: off, Len: length})}
}

// Stat describes an object.
type Stat struct {
	Size  uint64
	MTime int64 // unix nanoseconds
}

// StatResult is the outcome of ReadOp.Stat.
type StatResult struct{ s *Step }

// Stat returns the object's size and modification time.
func (r StatResult) Stat() Stat { st, _ := r.s.Result.(Stat); return st }

// Stat asks for the object's size (ErrNotFound if it does not exist).
func (op *ReadOp) Stat() StatResult { return StatResult{op.add(Step{Kind: StepStat})} }

// KV is one omap entry.
type KV struct {
	Key   string
	Value []byte
}

// OmapPage is a page of omap entries in key order.
type OmapPage struct {
	Entries []KV
	More    bool // more keys follow the page
}

// OmapResult is the outcome of an omap read.
type OmapResult struct{ s *Step }

// Page returns the entries read.
func (r OmapResult) Page() OmapPage { p, _ := r.s.Result.(OmapPage); return p }

// GetOmapVals lists up to max entries with keys after startAfter that begin
// with prefix, in key order.
func (op *ReadOp) GetOmapVals(startAfter, prefix string, max int) OmapResult {
	return OmapResult{op.add(Step{Kind: StepGetOmapVals, StartAfter: startAfter, Prefix: prefix, MaxReturn: max})}
}

// GetOmapValsByKeys returns the entries for keys that exist.
func (op *ReadOp) GetOmapValsByKeys(keys ...string) OmapResult {
	return OmapResult{op.add(Step{Kind: StepGetOmapValsByKeys, Keys: keys})}
}

// XattrResult is the outcome of ReadOp.GetXattr.
type XattrResult struct{ s *Step }

// Value is the xattr's value.
func (r XattrResult) Value() []byte { b, _ := r.s.Result.([]byte); return b }

// GetXattr reads one xattr (ErrNotFound... in Ceph ENODATA; backends return ErrNotFound).
func (op *ReadOp) GetXattr(name string) XattrResult {
	return XattrResult{op.add(Step{Kind: StepGetXattr, Name: name})}
}

// XattrsResult is the outcome of ReadOp.GetXattrs.
type XattrsResult struct{ s *Step }

// Values returns every xattr.
func (r XattrsResult) Values() map[string][]byte { m, _ := r.s.Result.(map[string][]byte); return m }

// GetXattrs reads every xattr.
func (op *ReadOp) GetXattrs() XattrsResult { return XattrsResult{op.add(Step{Kind: StepGetXattrs})} }

// AssertExists fails the read with ErrNotFound if the object does not exist.
func (op *ReadOp) AssertExists() { op.add(Step{Kind: StepAssertExists}) }

// ExecResult is the outcome of ReadOp.Exec.
type ExecResult struct{ s *Step }

// Out is the method's output.
func (r ExecResult) Out() []byte { b, _ := r.s.Result.([]byte); return b }

// Exec calls a read-only object-class method.
func (op *ReadOp) Exec(class, method string, in []byte) ExecResult {
	return ExecResult{op.add(Step{Kind: StepExec, Class: class, Method: method, Data: in})}
}
