package clsjournal

import (
	"context"
	"errors"
	"fmt"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/cls/clsenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// className is the object class's name in Ceph.
const className = "journal"

// Reader runs a compound read on one object; objstore.Pool is one.
type Reader = clsenc.Reader

func exec(op *objstore.WriteOp, method string, enc func(e *cephenc.Encoder)) {
	op.Exec(className, method, cephenc.MarshalFunc(enc))
}

// Create adds journal.create to op: it initialises a journal header with
// objects of 1<<order bytes, splayWidth active objects and data in pool
// poolID (-1: the header's pool). It fails with objstore.ErrExists if the
// header exists.
func Create(op *objstore.WriteOp, order, splayWidth uint8, poolID int64) {
	exec(op, "create", func(e *cephenc.Encoder) {
		e.U8(order)
		e.U8(splayWidth)
		e.S64(poolID)
	})
}

// SetMinimumSet adds journal.set_minimum_set to op. It fails with
// objstore.ErrStale if set is older than the current minimum and
// objstore.ErrInvalid if it is newer than the active set.
func SetMinimumSet(op *objstore.WriteOp, set uint64) {
	exec(op, "set_minimum_set", func(e *cephenc.Encoder) { e.U64(set) })
}

// SetActiveSet adds journal.set_active_set to op. It fails with
// objstore.ErrStale if set is older than the current active set and
// objstore.ErrInvalid if it is older than the minimum set.
func SetActiveSet(op *objstore.WriteOp, set uint64) {
	exec(op, "set_active_set", func(e *cephenc.Encoder) { e.U64(set) })
}

// ClientRegister adds journal.client_register to op. The new client starts
// at the oldest commit position of the registered clients. It fails with
// objstore.ErrExists if id is registered and objstore.ErrNotFound if the
// journal does not exist.
func ClientRegister(op *objstore.WriteOp, id string, data []byte) {
	exec(op, "client_register", func(e *cephenc.Encoder) {
		e.String(id)
		e.Bytes(data)
	})
}

// ClientUpdateData adds journal.client_update_data to op.
func ClientUpdateData(op *objstore.WriteOp, id string, data []byte) {
	exec(op, "client_update_data", func(e *cephenc.Encoder) {
		e.String(id)
		e.Bytes(data)
	})
}

// ClientUpdateState adds journal.client_update_state to op.
func ClientUpdateState(op *objstore.WriteOp, id string, state ClientState) {
	exec(op, "client_update_state", func(e *cephenc.Encoder) {
		e.String(id)
		e.U8(uint8(state))
	})
}

// ClientUnregister adds journal.client_unregister to op. It also removes the
// tags no remaining client needs.
func ClientUnregister(op *objstore.WriteOp, id string) {
	exec(op, "client_unregister", func(e *cephenc.Encoder) { e.String(id) })
}

// ClientCommit adds journal.client_commit to op. It fails with
// objstore.ErrInvalid if pos holds more positions than the splay width.
func ClientCommit(op *objstore.WriteOp, id string, pos ObjectSetPosition) {
	exec(op, "client_commit", func(e *cephenc.Encoder) {
		e.String(id)
		pos.Encode(e)
	})
}

// TagCreate adds journal.tag_create to op. tid must be the header's next tag
// tid (else objstore.ErrStale); tagClass is TagClassNew to allocate a class
// or an allocated class (else objstore.ErrInvalid).
func TagCreate(op *objstore.WriteOp, tid, tagClass uint64, data []byte) {
	exec(op, "tag_create", func(e *cephenc.Encoder) {
		e.U64(tid)
		e.U64(tagClass)
		e.Bytes(data)
	})
}

// GuardAppend adds journal.guard_append to op, for a journal data object:
// it fails with objstore.ErrOverflow if the object holds softLimit bytes or
// more, so that appends after it in op do not happen.
func GuardAppend(op *objstore.WriteOp, softLimit uint64) {
	exec(op, "guard_append", func(e *cephenc.Encoder) { e.U64(softLimit) })
}

// Append adds journal.append to op (Octopus and later): it appends data to
// a journal data object unless the object holds softLimit bytes or more, in
// which case it fails with objstore.ErrOverflow.
func Append(op *objstore.WriteOp, softLimit uint64, data []byte) {
	exec(op, "append", func(e *cephenc.Encoder) {
		e.U64(softLimit)
		e.Bytes(data)
	})
}

// GetImmutableMetadata reads the journal's order, splay width and data pool
// id in one operation.
func GetImmutableMetadata(ctx context.Context, r Reader, oid string) (order, splayWidth uint8, poolID int64, err error) {
	var op objstore.ReadOp
	o := op.Exec(className, "get_order", nil)
	s := op.Exec(className, "get_splay_width", nil)
	p := op.Exec(className, "get_pool_id", nil)
	if err := r.Read(ctx, oid, &op); err != nil {
		return 0, 0, 0, fmt.Errorf("get immutable journal metadata: %w", err)
	}
	do, ds, dp := cephenc.NewDecoder(o.Out()), cephenc.NewDecoder(s.Out()), cephenc.NewDecoder(p.Out())
	order, splayWidth, poolID = do.U8(), ds.U8(), dp.S64()
	if err := errors.Join(do.Err(), ds.Err(), dp.Err()); err != nil {
		return 0, 0, 0, fmt.Errorf("get immutable journal metadata: %w", err)
	}
	return order, splayWidth, poolID, nil
}

// GetMutableMetadata reads the journal's minimum and active object sets in
// one operation, then lists the registered clients. As in Ceph, the client
// list is read separately, so it may be newer than the sets.
func GetMutableMetadata(ctx context.Context, r Reader, oid string) (minimumSet, activeSet uint64, clients []Client, err error) {
	var op objstore.ReadOp
	mn := op.Exec(className, "get_minimum_set", nil)
	ac := op.Exec(className, "get_active_set", nil)
	if err := r.Read(ctx, oid, &op); err != nil {
		return 0, 0, nil, fmt.Errorf("get mutable journal metadata: %w", err)
	}
	dm, da := cephenc.NewDecoder(mn.Out()), cephenc.NewDecoder(ac.Out())
	minimumSet, activeSet = dm.U64(), da.U64()
	if err := errors.Join(dm.Err(), da.Err()); err != nil {
		return 0, 0, nil, fmt.Errorf("get mutable journal metadata: %w", err)
	}
	clients, err = ClientList(ctx, r, oid)
	if err != nil {
		return 0, 0, nil, fmt.Errorf("get mutable journal metadata: %w", err)
	}
	return minimumSet, activeSet, clients, nil
}

// readOne runs one read-only method and returns a decoder over its output.
func readOne(ctx context.Context, r Reader, oid, method string, in []byte) (*cephenc.Decoder, error) {
	return clsenc.Call(ctx, r, oid, className, method, in)
}

// GetClient reads the registered client id (objstore.ErrNotFound if none).
func GetClient(ctx context.Context, r Reader, oid, id string) (Client, error) {
	var e cephenc.Encoder
	e.String(id)
	c, err := clsenc.CallDecode[Client](ctx, r, oid, className, "get_client", e.Data())
	if err != nil {
		return Client{}, fmt.Errorf("get journal client %q: %w", id, err)
	}
	return c, nil
}

// ClientList reads every registered client, sorted by id, paging through
// client_list as Ceph's client does.
func ClientList(ctx context.Context, r Reader, oid string) ([]Client, error) {
	var all []Client
	startAfter := ""
	for {
		var e cephenc.Encoder
		e.String(startAfter)
		e.U64(maxReturn)
		d, err := readOne(ctx, r, oid, "client_list", e.Data())
		if err != nil {
			return nil, fmt.Errorf("list journal clients: %w", err)
		}
		page, err := cephenc.DecodeList[Client](d, structHeader)
		if err != nil {
			return nil, fmt.Errorf("list journal clients: %w", err)
		}
		all = append(all, page...)
		if len(page) < maxReturn {
			return all, nil
		}
		startAfter = page[len(page)-1].ID
	}
}

// GetNextTagTid reads the tid the next tag_create must use.
func GetNextTagTid(ctx context.Context, r Reader, oid string) (uint64, error) {
	d, err := readOne(ctx, r, oid, "get_next_tag_tid", nil)
	if err != nil {
		return 0, fmt.Errorf("get next journal tag tid: %w", err)
	}
	tid := d.U64()
	if err := d.Err(); err != nil {
		return 0, fmt.Errorf("get next journal tag tid: %w", err)
	}
	return tid, nil
}

// GetTag reads tag tid (objstore.ErrNotFound if none).
func GetTag(ctx context.Context, r Reader, oid string, tid uint64) (Tag, error) {
	var e cephenc.Encoder
	e.U64(tid)
	t, err := clsenc.CallDecode[Tag](ctx, r, oid, className, "get_tag", e.Data())
	if err != nil {
		return Tag{}, fmt.Errorf("get journal tag %d: %w", tid, err)
	}
	return t, nil
}

// TagList reads the tags that client clientID may still need (see the
// server's tag_list), of class *tagClass only if tagClass is not nil, sorted
// by tid.
//
// Ceph's synchronous cls client never advances its cursor and loops forever
// once a journal has JOURNAL_MAX_RETURN tags; this pages on after the last
// tid returned, as librbd's JournalMetadata does.
func TagList(ctx context.Context, r Reader, oid, clientID string, tagClass *uint64) ([]Tag, error) {
	var all []Tag
	var startAfter uint64
	for {
		d, err := readOne(ctx, r, oid, "tag_list", encodeTagListInput(startAfter, maxReturn, clientID, tagClass))
		if err != nil {
			return nil, fmt.Errorf("list journal tags: %w", err)
		}
		page, err := cephenc.DecodeList[Tag](d, structHeader)
		if err != nil {
			return nil, fmt.Errorf("list journal tags: %w", err)
		}
		all = append(all, page...)
		if len(page) < maxReturn {
			return all, nil
		}
		startAfter = page[len(page)-1].Tid
	}
}

// encodeTagListInput encodes tag_list's input: start_after_tag_tid,
// max_return, client_id and a boost::optional<uint64_t> tag class (a u8
// presence flag, then the value if present).
func encodeTagListInput(startAfter, max uint64, clientID string, tagClass *uint64) []byte {
	var e cephenc.Encoder
	e.U64(startAfter)
	e.U64(max)
	e.String(clientID)
	e.Bool(tagClass != nil)
	if tagClass != nil {
		e.U64(*tagClass)
	}
	return e.Data()
}
