package extentlog

import (
	"context"
	"errors"
	"fmt"
	"strings"

	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"k8s.io/klog/v2"
)

// syncer is a pool whose lazy operations (objstore.WriteOp.SetLazy)
// complete before they are durable (pkg/objstore/local): Sync returns once
// every operation its client completed before the call is durable. A pool
// without it (Ceph) makes every operation durable before it completes.
type syncer interface {
	Sync(ctx context.Context) error
}

// backgroundSubmitter queues operations whose completion nobody answers at
// once with new operations (pkg/objstore/local: its committer does not
// wait for company after them).
type backgroundSubmitter interface {
	SubmitBackground(ctx context.Context, ops []objstore.BatchOp) func() []error
}

// OpenLazy opens image id's extent log as clientID, as Open does, for the
// device that owns the image in metadata mode, whose data writes are
// synced: on a backend with lazy operations (the local store), its appends
// to the log's data objects are lazy, so an append costs no log sync of
// its own; it becomes durable with the device's next synced operation —
// the data write that follows an intent, the commit position update that
// follows the exact entries of a region it cools down, a management
// operation — or with sync, which a flush calls. On any other backend
// every append is durable when its future completes and sync does nothing.
//
// So a future of the returned journaler completes once its entry is in
// the log (visible to every reader) and durable no later than the next
// non-lazy operation of the same client completes (objstore.WriteOp.SetLazy).
// On the local store that is all a caller ordering its writes after an
// entry needs: its log is one sequence of records, and a record is durable
// only with every record logged before it, so no later write can survive a
// crash or power loss that the entry did not.
//
// What a lazy append adds: a power loss can lose its record from the
// store's log while the log object's file kept part of its bytes (the
// store applies a record to the object's file at once, unsynced). The
// player ignores such a torn tail, but the next append would land after
// it, and a bad entry followed by good ones is corruption; so OpenLazy
// first cuts a torn tail off the active objects (truncateTornTails), found
// as the player finds one (journal.TornTail). The
// caller must own the log (the image's exclusive lock).
func OpenLazy(ctx context.Context, pool objstore.Pool, imageID, clientID string, s journal.Settings) (_ *journal.Journaler, sync func(context.Context) error, _ error) {
	sy, ok := pool.(syncer)
	sub, ok2 := pool.(objstore.Submitter)
	bg, _ := pool.(backgroundSubmitter)
	bat, ok3 := pool.(objstore.Batcher)
	if !ok || !ok2 || !ok3 {
		j, err := Open(ctx, pool, imageID, clientID, s)
		return j, func(context.Context) error { return nil }, err
	}
	if err := truncateTornTails(ctx, pool, imageID); err != nil {
		return nil, nil, err
	}
	lp := &lazyPool{Pool: pool, sub: sub, bg: bg, bat: bat, prefix: Naming.DataOIDPrefix(pool.ID(), imageID)}
	j, err := Open(ctx, lp, imageID, clientID, s)
	if err != nil {
		return nil, nil, err
	}
	return j, func(ctx context.Context) error {
		if err := sy.Sync(ctx); err != nil {
			return fmt.Errorf("sync extent log of image %s: %w", imageID, err)
		}
		return nil
	}, nil
}

// lazyPool marks the appends to one extent log's data objects lazy; every
// other operation (the header's, a data object's removal) passes as it is.
type lazyPool struct {
	objstore.Pool
	sub    objstore.Submitter
	bg     backgroundSubmitter // nil if the pool has none
	bat    objstore.Batcher
	prefix string
}

func (p *lazyPool) mark(oid string, op *objstore.WriteOp) {
	if op != nil && strings.HasPrefix(oid, p.prefix) && appendOnly(op) {
		op.SetLazy()
	}
}

// appendOnly reports whether op only appends (with the journal's guards).
func appendOnly(op *objstore.WriteOp) bool {
	appends := false
	for _, s := range op.Steps() {
		switch {
		case s.Kind == objstore.StepAppend, s.Kind == objstore.StepAppendv:
			appends = true
		case s.Kind == objstore.StepCmpExt:
		case s.Kind == objstore.StepExec && s.Class == "journal" && s.Method == "guard_append":
		default:
			return false
		}
	}
	return appends
}

func (p *lazyPool) Operate(ctx context.Context, oid string, op *objstore.WriteOp) error {
	p.mark(oid, op)
	return p.Pool.Operate(ctx, oid, op)
}

func (p *lazyPool) OperateBatch(ctx context.Context, ops []objstore.BatchOp) []error {
	for _, o := range ops {
		p.mark(o.OID, o.Op)
	}
	return p.bat.OperateBatch(ctx, ops)
}

// Submit is how the journaler sends its waves of appends. Their completion
// is seldom answered at once with new operations (a write's exact entry is
// waited for only by a flush; a sequential stream declares the next
// region's intent ahead of its writes), so they are queued as background
// operations where the pool has that: after a batch of a data write and a
// wave the local store's committer then does not wait for a second
// operation that is not coming.
func (p *lazyPool) Submit(ctx context.Context, ops []objstore.BatchOp) func() []error {
	all := true
	for _, o := range ops {
		p.mark(o.OID, o.Op)
		all = all && o.Op != nil && o.Op.Lazy()
	}
	if all && p.bg != nil {
		return p.bg.SubmitBackground(ctx, ops)
	}
	return p.sub.Submit(ctx, ops)
}

// truncateTornTails cuts a torn tail (journal.TornTail) off each object of the
// active set of image id's extent log. Only the active set can have one:
// moving to the next set updates the header, a synced operation, after
// the appends to the previous set completed.
func truncateTornTails(ctx context.Context, pool objstore.Pool, imageID string) error {
	hdr := HeaderOID(imageID)
	_, splay, poolID, err := clsjournal.GetImmutableMetadata(ctx, pool, hdr)
	if err != nil {
		return fmt.Errorf("extent log of image %s: %w", imageID, err)
	}
	_, active, _, err := clsjournal.GetMutableMetadata(ctx, pool, hdr)
	if err != nil {
		return fmt.Errorf("extent log of image %s: %w", imageID, err)
	}
	if poolID < 0 {
		poolID = pool.ID()
	}
	prefix := Naming.DataOIDPrefix(poolID, imageID)
	w := uint64(splay)
	for n := active * w; n < active*w+w; n++ {
		oid := fmt.Sprintf("%s%d", prefix, n)
		var rd objstore.ReadOp
		res := rd.Read(0, 0)
		if err := pool.Read(ctx, oid, &rd); err != nil {
			if errors.Is(err, objstore.ErrNotFound) {
				continue
			}
			return fmt.Errorf("extent log of image %s: read %s: %w", imageID, oid, err)
		}
		data := res.Data()
		off := journal.TornTail(data)
		if off < 0 {
			continue
		}
		// The object is unchanged since it was read: its owner is the
		// caller, and the cmpext makes sure of it anyway.
		var op objstore.WriteOp
		op.CmpExt(uint64(off), data[off:])
		op.Truncate(uint64(off))
		if err := pool.Operate(ctx, oid, &op); err != nil {
			return fmt.Errorf("extent log of image %s: cut the torn tail of %s at %d: %w", imageID, oid, off, err)
		}
		klog.FromContext(ctx).Info("Cut a torn tail off the extent log (an append lost with a power loss)", "object", oid, "offset", off, "bytes", len(data)-off)
	}
	return nil
}
