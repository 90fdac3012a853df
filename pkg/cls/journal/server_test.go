package clsjournal

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc/cephenctest"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/classtest"
)

const testOID = "journal.10257c397567"

// newPool is an empty pool with the journal class.
func newPool() *classtest.Pool {
	return classtest.NewPool(map[string]objstore.Class{className: Class()})
}

func operate(p *classtest.Pool, build ...func(op *objstore.WriteOp)) error {
	var op objstore.WriteOp
	for _, b := range build {
		b(&op)
	}
	return p.Operate(context.Background(), testOID, &op)
}

func mustOperate(t testing.TB, p *classtest.Pool, build ...func(op *objstore.WriteOp)) {
	t.Helper()
	if err := operate(p, build...); err != nil {
		t.Fatal(err)
	}
}

// newJournal is a header as librbd creates it: order 24, splay width 4,
// data in the image's pool.
func newJournal(t testing.TB) *classtest.Pool {
	t.Helper()
	p := newPool()
	mustOperate(t, p, func(op *objstore.WriteOp) { Create(op, 24, 4, -1) })
	return p
}

func register(id string) func(*objstore.WriteOp) {
	return func(op *objstore.WriteOp) { ClientRegister(op, id, nil) }
}

func commit(id string, positions ...ObjectPosition) func(*objstore.WriteOp) {
	return func(op *objstore.WriteOp) { ClientCommit(op, id, ObjectSetPosition{ObjectPositions: positions}) }
}

func tagCreateStep(tid, class uint64) func(*objstore.WriteOp) {
	return func(op *objstore.WriteOp) { TagCreate(op, tid, class, nil) }
}

func at(tag, entry uint64) ObjectPosition {
	return ObjectPosition{ObjectNumber: entry % 4, TagTid: tag, EntryTid: entry}
}

// input returns the method name and input a client call encodes.
func input(build func(op *objstore.WriteOp)) (string, []byte) {
	var op objstore.WriteOp
	build(&op)
	s := op.Steps()[0]
	return s.Method, s.Data
}

func TestHeaderMatchesLibrbd(t *testing.T) {
	// The calls librbd made for golden-crash: create the journal, register
	// the image's client, allocate a tag class with tag 0 (journal create)
	// and tag 1 of that class (lock acquisition).
	p := newPool()
	mustOperate(t, p, func(op *objstore.WriteOp) { Create(op, 24, 4, -1) })
	mustOperate(t, p, func(op *objstore.WriteOp) { ClientRegister(op, "", librbdClientData) })
	mustOperate(t, p, func(op *objstore.WriteOp) { TagCreate(op, 0, TagClassNew, librbdTagData) })
	mustOperate(t, p, func(op *objstore.WriteOp) { TagCreate(op, 1, 0, librbdTagData) })
	cephenctest.CompareOmap(t, "omap", p.Objects[testOID].Omap, goldenOmap(t, "crash"))

	// Then the commit position it flushed on close (golden-clean).
	mustOperate(t, p, commit("", cleanCommitPosition.ObjectPositions...))
	cephenctest.CompareOmap(t, "omap", p.Objects[testOID].Omap, goldenOmap(t, "clean"))
}

func TestMethodReturnCodes(t *testing.T) {
	tests := []struct {
		name  string
		setup []func(*objstore.WriteOp) // run first, on a fresh journal
		none  bool                      // no journal header at all
		op    func(*objstore.WriteOp)
		want  syscall.Errno
	}{
		{name: "create", none: true, op: func(op *objstore.WriteOp) { Create(op, 24, 4, -1) }},
		{name: "create twice", op: func(op *objstore.WriteOp) { Create(op, 22, 2, 3) }, want: syscall.EEXIST},

		{name: "set minimum set beyond active", op: func(op *objstore.WriteOp) { SetMinimumSet(op, 1) }, want: syscall.EINVAL},
		{name: "set minimum set without journal", none: true, op: func(op *objstore.WriteOp) { SetMinimumSet(op, 0) }, want: syscall.ENOENT},
		{name: "set minimum set to current", op: func(op *objstore.WriteOp) { SetMinimumSet(op, 0) }},
		{name: "set minimum set forward", setup: sets(3, 0), op: func(op *objstore.WriteOp) { SetMinimumSet(op, 2) }},
		{name: "set minimum set backward", setup: sets(3, 2), op: func(op *objstore.WriteOp) { SetMinimumSet(op, 1) }, want: syscall.ESTALE},
		{name: "set active set forward", op: func(op *objstore.WriteOp) { SetActiveSet(op, 1) }},
		{name: "set active set to current", setup: sets(3, 0), op: func(op *objstore.WriteOp) { SetActiveSet(op, 3) }},
		{name: "set active set backward", setup: sets(3, 0), op: func(op *objstore.WriteOp) { SetActiveSet(op, 2) }, want: syscall.ESTALE},
		{name: "set active set before minimum", setup: sets(3, 3), op: func(op *objstore.WriteOp) { SetActiveSet(op, 2) }, want: syscall.EINVAL},

		{name: "register", op: register("a")},
		{name: "register twice", setup: steps(register("a")), op: register("a"), want: syscall.EEXIST},
		{name: "register without journal", none: true, op: register("a"), want: syscall.ENOENT},
		{name: "update data", setup: steps(register("a")), op: func(op *objstore.WriteOp) { ClientUpdateData(op, "a", []byte{1}) }},
		{name: "update data of unknown client", op: func(op *objstore.WriteOp) { ClientUpdateData(op, "a", nil) }, want: syscall.ENOENT},
		{name: "update state", setup: steps(register("a")), op: func(op *objstore.WriteOp) { ClientUpdateState(op, "a", ClientStateDisconnected) }},
		{name: "update state of unknown client", op: func(op *objstore.WriteOp) { ClientUpdateState(op, "a", 0) }, want: syscall.ENOENT},
		{name: "unregister", setup: steps(register("a")), op: func(op *objstore.WriteOp) { ClientUnregister(op, "a") }},
		{name: "unregister unknown client", op: func(op *objstore.WriteOp) { ClientUnregister(op, "a") }, want: syscall.ENOENT},
		{name: "commit", setup: steps(register("a")), op: commit("a", at(0, 3), at(0, 2), at(0, 1), at(0, 0))},
		{name: "commit beyond splay width", setup: steps(register("a")), op: commit("a", at(0, 4), at(0, 3), at(0, 2), at(0, 1), at(0, 0)), want: syscall.EINVAL},
		{name: "commit beyond splay width of unknown client", op: commit("a", at(0, 4), at(0, 3), at(0, 2), at(0, 1), at(0, 0)), want: syscall.EINVAL},
		{name: "commit unknown client", op: commit("a", at(0, 0)), want: syscall.ENOENT},
		{name: "commit without journal", none: true, op: commit("a"), want: syscall.ENOENT},

		{name: "tag create", op: tagCreateStep(0, TagClassNew)},
		{name: "tag create in allocated class", setup: steps(tagCreateStep(0, TagClassNew)), op: tagCreateStep(1, 0)},
		{name: "tag create out of sequence", op: tagCreateStep(1, TagClassNew), want: syscall.ESTALE},
		{name: "tag create replayed", setup: steps(tagCreateStep(0, TagClassNew)), op: tagCreateStep(0, TagClassNew), want: syscall.EEXIST},
		{name: "tag create stale", setup: steps(tagCreateStep(0, TagClassNew), tagCreateStep(1, 0)), op: tagCreateStep(3, 0), want: syscall.ESTALE},
		{name: "tag create in unallocated class", setup: steps(tagCreateStep(0, TagClassNew)), op: tagCreateStep(1, 1), want: syscall.EINVAL},
		{name: "tag create without journal", none: true, op: tagCreateStep(0, TagClassNew), want: syscall.ENOENT},

		{name: "guard append on missing object", none: true, op: func(op *objstore.WriteOp) { GuardAppend(op, 0) }},
		{name: "append on missing object", none: true, op: func(op *objstore.WriteOp) { Append(op, 1, []byte{1}) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPool()
			if !tt.none {
				p = newJournal(t)
			}
			for _, s := range tt.setup {
				mustOperate(t, p, s)
			}
			err := operate(p, tt.op)
			if got := objstore.Errno(err); got != tt.want {
				t.Fatalf("err = %v (errno %d), want errno %d", err, got, tt.want)
			}
		})
	}
}

func steps(s ...func(*objstore.WriteOp)) []func(*objstore.WriteOp) { return s }

func sets(active, minimum uint64) []func(*objstore.WriteOp) {
	return steps(
		func(op *objstore.WriteOp) { SetActiveSet(op, active) },
		func(op *objstore.WriteOp) { SetMinimumSet(op, minimum) },
	)
}

func TestNoOpsDoNotWrite(t *testing.T) {
	p := newJournal(t)
	mustOperate(t, p, register("a"), commit("a", at(0, 1)))
	o := p.Objects[testOID]
	for _, step := range steps(
		commit("a", at(0, 1)),
		func(op *objstore.WriteOp) { SetMinimumSet(op, 0) },
		func(op *objstore.WriteOp) { SetActiveSet(op, 0) },
	) {
		method, in := input(step)
		before := o.OmapWrites
		if _, err := Class()[method].Call(o, in); err != nil {
			t.Fatal(err)
		}
		if o.OmapWrites != before {
			t.Errorf("%s wrote the header", method)
		}
	}
}

func TestBadInputIsEINVAL(t *testing.T) {
	for name, m := range Class() {
		t.Run(name, func(t *testing.T) {
			p := newJournal(t)
			mustOperate(t, p, register(""))
			o := p.Objects[testOID]
			_, err := m.Call(o, nil)
			switch name {
			case "get_order", "get_splay_width", "get_pool_id", "get_minimum_set", "get_active_set", "get_next_tag_tid":
				if err != nil {
					t.Fatalf("method without input failed: %v", err)
				}
			default:
				if !errors.Is(err, objstore.ErrInvalid) || !errors.Is(err, cephenc.ErrShortBuffer) {
					t.Fatalf("err = %v, want EINVAL from a short input", err)
				}
			}
		})
	}
}

func TestCorruptHeader(t *testing.T) {
	tests := []struct {
		name    string
		key     string
		value   []byte
		op      func(*objstore.WriteOp)
		read    func(p *classtest.Pool) error
		want    syscall.Errno
		wantMsg string
	}{
		{name: "undecodable order", key: keyOrder, value: nil, read: func(p *classtest.Pool) error {
			_, _, _, err := GetImmutableMetadata(context.Background(), p, testOID)
			return err
		}, want: syscall.EINVAL},
		{name: "undecodable active set", key: keyActiveSet, value: []byte{1}, op: func(op *objstore.WriteOp) { SetMinimumSet(op, 0) }, want: syscall.EINVAL},
		{name: "undecodable client read", key: clientKey("a"), value: []byte{1, 1}, read: func(p *classtest.Pool) error {
			_, err := GetClient(context.Background(), p, testOID, "a")
			return err
		}, want: syscall.EINVAL},
		{name: "undecodable client listed", key: clientKey("a"), value: []byte{1, 1}, read: func(p *classtest.Pool) error {
			_, err := ClientList(context.Background(), p, testOID)
			return err
		}, want: syscall.EIO},
		{name: "undecodable client while expiring tags", key: clientKey("a"), value: []byte{9}, op: tagCreateStep(0, TagClassNew), want: syscall.EIO},
		{name: "tag stored under another tid", key: tagKey(7), value: cephenc.Marshal(Tag{Tid: 8}), op: tagCreateStep(0, TagClassNew), want: syscall.EINVAL},
		{name: "undecodable tag listed", key: tagKey(0), value: []byte{1}, read: func(p *classtest.Pool) error {
			_, err := TagList(context.Background(), p, testOID, "c", nil)
			return err
		}, want: syscall.EIO},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newJournal(t)
			// A committed client so that tag_create does scan the tags.
			mustOperate(t, p, register("c"), commit("c", at(0, 0)))
			p.Objects[testOID].Omap[tt.key] = tt.value
			var err error
			if tt.op != nil {
				err = operate(p, tt.op)
			} else {
				err = tt.read(p)
			}
			if got := objstore.Errno(err); got != tt.want {
				t.Fatalf("err = %v, want errno %d", err, tt.want)
			}
		})
	}
}

func TestClientRegisterStartsAtMinimumCommitPosition(t *testing.T) {
	tests := []struct {
		name  string
		setup []func(*objstore.WriteOp)
		want  []ObjectPosition
	}{
		{name: "no clients"},
		{
			name: "oldest newest position wins",
			setup: steps(register("a"), commit("a", at(2, 5), at(2, 4)),
				register("b"), commit("b", at(1, 9), at(1, 8)),
				register("c"), commit("c", at(1, 10))),
			want: []ObjectPosition{at(1, 9), at(1, 8)},
		},
		{
			name: "same tag: lower entry wins",
			setup: steps(register("a"), commit("a", at(1, 7)),
				register("b"), commit("b", at(1, 6), at(1, 5))),
			want: []ObjectPosition{at(1, 6), at(1, 5)},
		},
		{
			// Ceph 16 counts disconnected clients too.
			name: "disconnected client counts",
			setup: steps(register("a"), commit("a", at(2, 5)),
				register("b"), commit("b", at(1, 1)),
				func(op *objstore.WriteOp) { ClientUpdateState(op, "b", ClientStateDisconnected) }),
			want: []ObjectPosition{at(1, 1)},
		},
		{
			// An empty position resets the result and ends the page's scan.
			name:  "empty position after a committed one",
			setup: steps(register("a"), commit("a", at(2, 5)), register("b"), commit("b")),
			want:  nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newJournal(t)
			for _, s := range tt.setup {
				mustOperate(t, p, s)
			}
			mustOperate(t, p, register("new"))
			c, err := GetClient(context.Background(), p, testOID, "new")
			if err != nil {
				t.Fatal(err)
			}
			want := ObjectSetPosition{ObjectPositions: tt.want}
			if !c.CommitPosition.Equal(want) || c.State != ClientStateConnected {
				t.Errorf("new client at %v (%v), want %v", c.CommitPosition, c.State, want)
			}
		})
	}
}

// tagsOf lists the tids of the header's tag keys.
func tagsOf(p *classtest.Pool) []uint64 {
	var tids []uint64
	for k := range p.Objects[testOID].Omap {
		if len(k) > len(tagPrefix) && k[:len(tagPrefix)] == tagPrefix {
			tids = append(tids, tagTidFromKey(k))
		}
	}
	slices.Sort(tids)
	return tids
}

// withTags is a journal with tags 0 (class 0), 1 (class 1), 2, 3 (class 0)
// and 4 (class 1).
func withTags(t *testing.T) *classtest.Pool {
	p := newJournal(t)
	mustOperate(t, p,
		tagCreateStep(0, TagClassNew), tagCreateStep(1, TagClassNew),
		tagCreateStep(2, 0), tagCreateStep(3, 0), tagCreateStep(4, 1))
	return p
}

func TestExpireTags(t *testing.T) {
	tests := []struct {
		name  string
		setup []func(*objstore.WriteOp)
		op    func(*objstore.WriteOp)
		want  []uint64
	}{
		{
			// Oldest tag in use is 3: class 0's tags before 3 go, class 1
			// keeps tag 1 (its newest tag up to 3) and everything after.
			name:  "tag create prunes",
			setup: steps(register("a"), commit("a", at(3, 0), at(3, 1))),
			op:    tagCreateStep(5, 0),
			want:  []uint64{1, 3, 4, 5},
		},
		{
			name:  "client without commit position blocks pruning",
			setup: steps(register("a"), register("b"), commit("a", at(3, 0))),
			op:    tagCreateStep(5, 0),
			want:  []uint64{0, 1, 2, 3, 4, 5},
		},
		{
			name: "no client blocks nothing but nothing is committed",
			op:   tagCreateStep(5, 0),
			want: []uint64{0, 1, 2, 3, 4, 5},
		},
		{
			name: "disconnected client does not block pruning",
			setup: steps(register("a"), register("b"), commit("a", at(3, 0)),
				func(op *objstore.WriteOp) { ClientUpdateState(op, "b", ClientStateDisconnected) }),
			op:   tagCreateStep(5, 0),
			want: []uint64{1, 3, 4, 5},
		},
		{
			name:  "unregistering the blocking client prunes",
			setup: steps(register("a"), register("b"), commit("a", at(3, 0))),
			op:    func(op *objstore.WriteOp) { ClientUnregister(op, "b") },
			want:  []uint64{1, 3, 4},
		},
		{
			name:  "lagging client keeps old tags",
			setup: steps(register("a"), commit("a", at(3, 0)), register("b"), commit("b", at(2, 0), at(3, 1))),
			op:    tagCreateStep(5, 0),
			want:  []uint64{1, 2, 3, 4, 5},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := withTags(t)
			for _, s := range tt.setup {
				mustOperate(t, p, s)
			}
			mustOperate(t, p, tt.op)
			if got := tagsOf(p); !slices.Equal(got, tt.want) {
				t.Errorf("tags %v, want %v", got, tt.want)
			}
		})
	}
}

func TestTagList(t *testing.T) {
	class := func(c uint64) *uint64 { return &c }
	tests := []struct {
		name       string
		commit     []ObjectPosition
		startAfter uint64
		max        uint64
		class      *uint64
		want       []uint64
	}{
		{name: "empty commit position lists all", max: 256, want: []uint64{0, 1, 2, 3, 4}},
		{name: "tags the client may need", commit: []ObjectPosition{at(3, 0)}, max: 256, want: []uint64{1, 3, 4}},
		{name: "class filter", commit: []ObjectPosition{at(3, 0)}, max: 256, class: class(0), want: []uint64{3}},
		{name: "class filter without commit", max: 256, class: class(1), want: []uint64{1, 4}},
		{name: "start after", commit: []ObjectPosition{at(3, 0)}, startAfter: 3, max: 256, want: []uint64{4}},
		{name: "start after 0 means from the start", startAfter: 0, max: 256, want: []uint64{0, 1, 2, 3, 4}},
		{name: "max return", max: 2, want: []uint64{0, 1}},
		{name: "max return 0 still returns one tag", max: 0, want: []uint64{0}},
		{name: "newest commit at the oldest tag", commit: []ObjectPosition{at(4, 1), at(0, 0)}, max: 256, want: []uint64{0, 1, 2, 3, 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := withTags(t)
			mustOperate(t, p, register("c"), commit("c", tt.commit...))
			o := p.Objects[testOID]
			out, err := Class()["tag_list"].Call(o, encodeTagListInput(tt.startAfter, tt.max, "c", tt.class))
			if err != nil {
				t.Fatal(err)
			}
			tags, err := cephenc.DecodeList[Tag](cephenc.NewDecoder(out), structHeader)
			if err != nil {
				t.Fatal(err)
			}
			var got []uint64
			for _, tag := range tags {
				got = append(got, tag.Tid)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("tags %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPaging(t *testing.T) {
	// More than one page (256) of clients and of tags.
	p := newJournal(t)
	var want []string
	for i := range 300 {
		id := fmt.Sprintf("client-%03d", i)
		want = append(want, id)
		mustOperate(t, p, register(id), tagCreateStep(uint64(i), TagClassNew))
	}
	ctx := context.Background()
	clients, err := ClientList(ctx, p, testOID)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range clients {
		got = append(got, c.ID)
	}
	if !slices.Equal(got, want) {
		t.Errorf("listed %d clients, want %d in order", len(got), len(want))
	}
	tags, err := TagList(ctx, p, testOID, "client-000", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(tags) != 300 || tags[0].Tid != 0 || tags[299].Tid != 299 || tags[299].TagClass != 299 {
		t.Errorf("listed %d tags", len(tags))
	}
	one := uint64(7)
	if tags, err := TagList(ctx, p, testOID, "client-000", &one); err != nil || len(tags) != 1 || tags[0].Tid != 7 {
		t.Errorf("class 7: %v, %v", tags, err)
	}
	_, _, clients, err = GetMutableMetadata(ctx, p, testOID)
	if err != nil || len(clients) != 300 {
		t.Errorf("mutable metadata: %d clients, %v", len(clients), err)
	}
}

func TestReads(t *testing.T) {
	ctx := context.Background()
	p := newPool()
	mustOperate(t, p, func(op *objstore.WriteOp) { Create(op, 22, 8, 5) })
	mustOperate(t, p,
		func(op *objstore.WriteOp) { ClientRegister(op, "m", []byte("meta")) },
		commit("m", at(1, 2)),
		func(op *objstore.WriteOp) { SetActiveSet(op, 9) },
		func(op *objstore.WriteOp) { SetMinimumSet(op, 4) },
		func(op *objstore.WriteOp) { TagCreate(op, 0, TagClassNew, []byte("t0")) },
	)
	order, splay, pool, err := GetImmutableMetadata(ctx, p, testOID)
	if err != nil || order != 22 || splay != 8 || pool != 5 {
		t.Errorf("immutable: %d %d %d %v", order, splay, pool, err)
	}
	minimum, active, clients, err := GetMutableMetadata(ctx, p, testOID)
	if err != nil || minimum != 4 || active != 9 || len(clients) != 1 {
		t.Errorf("mutable: %d %d %v %v", minimum, active, clients, err)
	}
	want := Client{ID: "m", Data: []byte("meta"), CommitPosition: ObjectSetPosition{ObjectPositions: []ObjectPosition{at(1, 2)}}}
	if c, err := GetClient(ctx, p, testOID, "m"); err != nil || !c.Equal(want) {
		t.Errorf("client %+v, %v", c, err)
	}
	if _, err := GetClient(ctx, p, testOID, "x"); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("unknown client: %v", err)
	}
	if tid, err := GetNextTagTid(ctx, p, testOID); err != nil || tid != 1 {
		t.Errorf("next tag tid %d, %v", tid, err)
	}
	if tag, err := GetTag(ctx, p, testOID, 0); err != nil || !tag.Equal(Tag{Tid: 0, TagClass: 0, Data: []byte("t0")}) {
		t.Errorf("tag %+v, %v", tag, err)
	}
	if _, err := GetTag(ctx, p, testOID, 1); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("unknown tag: %v", err)
	}
	if _, err := TagList(ctx, p, testOID, "x", nil); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("tag list of unknown client: %v", err)
	}
	if _, _, _, err := GetImmutableMetadata(ctx, p, "journal.none"); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("missing journal: %v", err)
	}
}

func TestGuardAppendAndAppend(t *testing.T) {
	const dataOID = "journal_data.1.x.0"
	ctx := context.Background()
	p := newPool()
	run := func(build func(op *objstore.WriteOp)) error {
		var op objstore.WriteOp
		build(&op)
		return p.Operate(ctx, dataOID, &op)
	}
	// librbd's compat path: guard_append then a plain append, in one op.
	if err := run(func(op *objstore.WriteOp) { GuardAppend(op, 8); op.Append([]byte("12345678")) }); err != nil {
		t.Fatal(err)
	}
	if err := run(func(op *objstore.WriteOp) { GuardAppend(op, 8); op.Append([]byte("9")) }); objstore.Errno(err) != syscall.EOVERFLOW {
		t.Fatalf("full object: %v", err)
	}
	if err := run(func(op *objstore.WriteOp) { GuardAppend(op, 9); op.Append([]byte("9")) }); err != nil {
		t.Fatal(err)
	}
	// The cls append: refuses a full object, may overshoot the soft limit.
	if err := run(func(op *objstore.WriteOp) { Append(op, 9, []byte("x")) }); objstore.Errno(err) != syscall.EOVERFLOW {
		t.Fatalf("append to full object: %v", err)
	}
	if err := run(func(op *objstore.WriteOp) { Append(op, 10, []byte("abc")) }); err != nil {
		t.Fatal(err)
	}
	if got := string(p.Objects[dataOID].Data); got != "123456789abc" {
		t.Errorf("object holds %q", got)
	}
}
