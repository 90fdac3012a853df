package clsjournal

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"syscall"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/cls/clsenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Header omap keys, as cls_journal.cc names them.
const (
	keyOrder        = "order"
	keySplayWidth   = "splay_width"
	keyPoolID       = "pool_id"
	keyMinimumSet   = "minimum_set"
	keyActiveSet    = "active_set"
	keyNextTagTid   = "next_tag_tid"
	keyNextTagClass = "next_tag_class"
	clientPrefix    = "client_"
	tagPrefix       = "tag_"
)

// maxKeysRead is the page size of the class's own omap scans (MAX_KEYS_READ).
const maxKeysRead = 64

// maxOmapEntriesPerRequest is the OSD's cap on one omap listing
// (osd_max_omap_entries_per_request), which bounds a client_list whatever
// max_return the caller asks for.
const maxOmapEntriesPerRequest = 1024

func clientKey(id string) string { return clientPrefix + id }

// tagKey is "tag_" and the tid in 16 zero-padded lower-case hex digits
// (to_hex in cls_journal.cc), so that keys sort in tid order.
func tagKey(tid uint64) string { return cephenc.HexKey(tagPrefix, tid) }

// tagTidFromKey parses the tid of a tag key the way Ceph does.
func tagTidFromKey(key string) uint64 { return cephenc.ParseHexKey(tagPrefix, key) }

// Class returns the "journal" object class: every method of Ceph 16's
// cls_journal with the same inputs, outputs, omap keys, value encodings and
// return codes.
//
// One difference remains: Ceph's append pads the object with zeros to the
// OSD's allocation unit once the cluster's minimum client release is Octopus
// or later; this append never pads (what a Ceph 16 cluster with the default
// require_min_compat_client does). Journal readers must accept both.
func Class() objstore.Class {
	return objstore.Class{
		"create":              {Write: true, Call: create},
		"get_order":           {Call: getOrder},
		"get_splay_width":     {Call: getSplayWidth},
		"get_pool_id":         {Call: getPoolID},
		"get_minimum_set":     {Call: getMinimumSet},
		"set_minimum_set":     {Write: true, Call: setMinimumSet},
		"get_active_set":      {Call: getActiveSet},
		"set_active_set":      {Write: true, Call: setActiveSet},
		"get_client":          {Call: getClient},
		"client_register":     {Write: true, Call: clientRegister},
		"client_update_data":  {Write: true, Call: clientUpdateData},
		"client_update_state": {Write: true, Call: clientUpdateState},
		"client_unregister":   {Write: true, Call: clientUnregister},
		"client_commit":       {Write: true, Call: clientCommit},
		"client_list":         {Call: clientList},
		"get_next_tag_tid":    {Call: getNextTagTid},
		"get_tag":             {Call: getTag},
		"tag_create":          {Write: true, Call: tagCreate},
		"tag_list":            {Call: tagList},
		"guard_append":        {Write: true, Call: guardAppend},
		"append":              {Write: true, Call: appendData},
	}
}

func isNotFound(err error) bool { return errors.Is(err, objstore.ErrNotFound) }

// readKey is cls_journal's read_key: a missing key is -ENOENT, an
// undecodable value -EINVAL.
func readKey[T any](ctx objstore.MethodContext, key string, dec func(*cephenc.Decoder) (T, error)) (T, error) {
	return clsenc.ReadKey(ctx, key, dec, objstore.ErrInvalid)
}

func decClient(d *cephenc.Decoder) (Client, error) {
	var c Client
	err := c.Decode(d)
	return c, err
}

func decTag(d *cephenc.Decoder) (Tag, error) {
	var t Tag
	err := t.Decode(d)
	return t, err
}

func writeClient(ctx objstore.MethodContext, c Client) error {
	return clsenc.WriteKey(ctx, clientKey(c.ID), c.Encode)
}

// updateClient stores registered client id (-ENOENT if it is not) as update
// changes it.
func updateClient(ctx objstore.MethodContext, id string, update func(*Client)) error {
	c, err := readKey(ctx, clientKey(id), decClient)
	if err != nil {
		return err
	}
	update(&c)
	return writeClient(ctx, c)
}

// create: input u8 order, u8 splay_width, s64 pool_id. -EEXIST if the header
// has an order key.
func create(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	d := cephenc.NewDecoder(in)
	order, splay, pool := d.U8(), d.U8(), d.S64()
	if err := clsenc.BadInput(d.Err()); err != nil {
		return nil, err
	}
	if _, err := ctx.OmapGet(keyOrder); err == nil {
		return nil, fmt.Errorf("journal already exists: %w", objstore.ErrExists)
	} else if !isNotFound(err) {
		return nil, err
	}
	var zero [8]byte
	kv := map[string][]byte{
		keyOrder:        {order},
		keySplayWidth:   {splay},
		keyPoolID:       cephenc.MarshalFunc(func(e *cephenc.Encoder) { e.S64(pool) }),
		keyActiveSet:    zero[:],
		keyMinimumSet:   zero[:],
		keyNextTagTid:   zero[:],
		keyNextTagClass: zero[:],
	}
	return nil, ctx.OmapSet(kv)
}

// getValue is a method without input that returns the value stored under
// key, decoded with dec and encoded again with enc.
func getValue[T any](key string, dec func(*cephenc.Decoder) (T, error), enc func(*cephenc.Encoder, T)) func(objstore.MethodContext, []byte) ([]byte, error) {
	return func(ctx objstore.MethodContext, _ []byte) ([]byte, error) {
		v, err := readKey(ctx, key, dec)
		if err != nil {
			return nil, err
		}
		return cephenc.MarshalFunc(func(e *cephenc.Encoder) { enc(e, v) }), nil
	}
}

var (
	getOrder      = getValue(keyOrder, clsenc.U8, (*cephenc.Encoder).U8)
	getSplayWidth = getValue(keySplayWidth, clsenc.U8, (*cephenc.Encoder).U8)
	getPoolID     = getValue(keyPoolID, clsenc.S64, (*cephenc.Encoder).S64)
	getMinimumSet = getValue(keyMinimumSet, clsenc.U64, (*cephenc.Encoder).U64)
	getActiveSet  = getValue(keyActiveSet, clsenc.U64, (*cephenc.Encoder).U64)
	getNextTagTid = getValue(keyNextTagTid, clsenc.U64, (*cephenc.Encoder).U64)
)

// setObjectSet returns set_minimum_set or set_active_set: the set stored
// under key may only move forward (-ESTALE) and never past the other one,
// stored under boundKey (-EINVAL); setting the current value is a no-op.
// pastBound tells whether set is past the bound, which is told as relation
// ("beyond", "before") in the error; name and boundName name the two sets.
func setObjectSet(name, key, relation, boundName, boundKey string, pastBound func(set, bound uint64) bool) func(objstore.MethodContext, []byte) ([]byte, error) {
	return func(ctx objstore.MethodContext, in []byte) ([]byte, error) {
		set, err := clsenc.Input(in, clsenc.U64)
		if err != nil {
			return nil, err
		}
		bound, err := readKey(ctx, boundKey, clsenc.U64)
		if err != nil {
			return nil, err
		}
		if pastBound(set, bound) {
			return nil, fmt.Errorf("%s set %d %s %s set %d: %w", name, set, relation, boundName, bound, objstore.ErrInvalid)
		}
		cur, err := readKey(ctx, key, clsenc.U64)
		if err != nil {
			return nil, err
		}
		switch {
		case set == cur:
			return nil, nil
		case set < cur:
			return nil, fmt.Errorf("%s set %d before current %d: %w", name, set, cur, objstore.ErrStale)
		}
		return nil, clsenc.WriteU64(ctx, key, set)
	}
}

var (
	// setMinimumSet: never past the active set.
	setMinimumSet = setObjectSet("minimum", keyMinimumSet, "beyond", "active", keyActiveSet,
		func(set, active uint64) bool { return active < set })
	// setActiveSet: never behind the minimum set.
	setActiveSet = setObjectSet("active", keyActiveSet, "before", "minimum", keyMinimumSet,
		func(set, minimum uint64) bool { return minimum > set })
)

// getKeyed returns a method whose input, decoded with in (-EINVAL if it
// does not decode), names through key the omap key of the value it returns:
// the value decoded with dec (-ENOENT if missing, -EINVAL if undecodable)
// and encoded again. get_client and get_tag are such methods.
func getKeyed[K any, T cephenc.Encodable](in func(*cephenc.Decoder) (K, error), key func(K) string, dec func(*cephenc.Decoder) (T, error)) func(objstore.MethodContext, []byte) ([]byte, error) {
	return func(ctx objstore.MethodContext, input []byte) ([]byte, error) {
		k, err := clsenc.Input(input, in)
		if err != nil {
			return nil, err
		}
		v, err := readKey(ctx, key(k), dec)
		if err != nil {
			return nil, err
		}
		return cephenc.Marshal(v), nil
	}
}

var (
	getClient = getKeyed(clsenc.String, clientKey, decClient)
	getTag    = getKeyed(clsenc.U64, tagKey, decTag)
)

// clientRegister needs an existing journal (its order key: -ENOENT
// otherwise) and a new id (-EEXIST). The client starts at the oldest commit
// position of the registered clients, so that it does not pin entries the
// others have already trimmed.
func clientRegister(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	d := cephenc.NewDecoder(in)
	id, data := d.Str(), d.Bytes()
	if err := clsenc.BadInput(d.Err()); err != nil {
		return nil, err
	}
	if _, err := readKey(ctx, keyOrder, clsenc.U8); err != nil {
		return nil, err
	}
	if _, err := ctx.OmapGet(clientKey(id)); err == nil {
		return nil, fmt.Errorf("client %q already registered: %w", id, objstore.ErrExists)
	} else if !isNotFound(err) {
		return nil, err
	}
	minset, err := findMinCommitPosition(ctx)
	if err != nil {
		return nil, err
	}
	return nil, writeClient(ctx, Client{ID: id, Data: data, CommitPosition: minset})
}

// findMinCommitPosition returns the commit position of the client whose
// newest position (the first) has the lowest tag tid, then entry tid.
//
// It ports Ceph 16's quirks as they are: a client with an empty position
// resets the result to empty but only stops the scan of its own page of
// clients, and disconnected clients count (Ceph skips them only since 17).
func findMinCommitPosition(ctx objstore.MethodContext) (ObjectSetPosition, error) {
	var (
		minset           ObjectSetPosition
		valid            bool
		tagTid, entryTid uint64
		startAfter       string
	)
	for {
		batch, err := clientListRange(ctx, startAfter, maxReturn)
		if err != nil {
			return ObjectSetPosition{}, err
		}
		if len(batch) == 0 {
			break
		}
		startAfter = batch[len(batch)-1].ID
		for _, c := range batch {
			if len(c.CommitPosition.ObjectPositions) == 0 {
				minset = ObjectSetPosition{}
				break
			}
			first := c.CommitPosition.ObjectPositions[0]
			if !valid || tagTid > first.TagTid || (tagTid == first.TagTid && entryTid > first.EntryTid) {
				tagTid, entryTid = first.TagTid, first.EntryTid
				minset = c.CommitPosition
				valid = true
			}
		}
		if len(batch) < maxReturn {
			break
		}
	}
	return minset, nil
}

// clientListRange lists up to max clients with ids after startAfter ("" for
// the first). An undecodable client is -EIO.
func clientListRange(ctx objstore.MethodContext, startAfter string, max uint64) ([]Client, error) {
	lastRead := ""
	if startAfter != "" {
		lastRead = clientKey(startAfter)
	}
	page, err := ctx.OmapList(lastRead, clientPrefix, int(min(max, maxOmapEntriesPerRequest)))
	if err != nil {
		return nil, err
	}
	clients := make([]Client, 0, len(page.Entries))
	for _, kv := range page.Entries {
		var c Client
		if err := cephenc.Unmarshal(kv.Value, &c); err != nil {
			return nil, fmt.Errorf("omap key %q: %w: %w", kv.Key, syscall.EIO, err)
		}
		clients = append(clients, c)
	}
	return clients, nil
}

func clientUpdateData(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	d := cephenc.NewDecoder(in)
	id, data := d.Str(), d.Bytes()
	if err := clsenc.BadInput(d.Err()); err != nil {
		return nil, err
	}
	return nil, updateClient(ctx, id, func(c *Client) { c.Data = data })
}

// clientUpdateState stores any state value, as Ceph does.
func clientUpdateState(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	d := cephenc.NewDecoder(in)
	id, state := d.Str(), ClientState(d.U8())
	if err := clsenc.BadInput(d.Err()); err != nil {
		return nil, err
	}
	return nil, updateClient(ctx, id, func(c *Client) { c.State = state })
}

// clientUnregister removes the client (-ENOENT if not registered), then
// expires the tags that only it still needed.
func clientUnregister(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	id, err := clsenc.Input(in, clsenc.String)
	if err != nil {
		return nil, err
	}
	key := clientKey(id)
	if _, err := ctx.OmapGet(key); err != nil {
		return nil, err
	}
	if err := ctx.OmapRemove(key); err != nil {
		return nil, err
	}
	return nil, expireTags(ctx, &id)
}

// clientCommit stores the client's commit position. A position naming more
// objects than the splay width is -EINVAL; an unchanged one is not written.
func clientCommit(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	d := cephenc.NewDecoder(in)
	id := d.Str()
	var pos ObjectSetPosition
	if err := clsenc.BadInput(pos.Decode(d)); err != nil {
		return nil, err
	}
	splay, err := readKey(ctx, keySplayWidth, clsenc.U8)
	if err != nil {
		return nil, err
	}
	if len(pos.ObjectPositions) > int(splay) {
		return nil, fmt.Errorf("%d commit positions for splay width %d: %w", len(pos.ObjectPositions), splay, objstore.ErrInvalid)
	}
	c, err := readKey(ctx, clientKey(id), decClient)
	if err != nil {
		return nil, err
	}
	if c.CommitPosition.Equal(pos) {
		return nil, nil
	}
	c.CommitPosition = pos
	return nil, writeClient(ctx, c)
}

// clientList: input string start_after, u64 max_return; output the clients
// after start_after as a std::set<Client>.
func clientList(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	d := cephenc.NewDecoder(in)
	startAfter, max := d.Str(), d.U64()
	if err := clsenc.BadInput(d.Err()); err != nil {
		return nil, err
	}
	clients, err := clientListRange(ctx, startAfter, max)
	if err != nil {
		return nil, err
	}
	return cephenc.MarshalFunc(func(e *cephenc.Encoder) { cephenc.EncodeList(e, clients) }), nil
}

// tagCreate: the tid must not exist (-EEXIST) and must be next_tag_tid
// (-ESTALE), which makes tags a gap-free sequence that concurrent writers
// race for. TagClassNew allocates next_tag_class; any other class must
// already be allocated (-EINVAL). Expired tags are pruned before the new one
// is written.
func tagCreate(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	d := cephenc.NewDecoder(in)
	tid, class, data := d.U64(), d.U64(), d.Bytes()
	if err := clsenc.BadInput(d.Err()); err != nil {
		return nil, err
	}
	key := tagKey(tid)
	if _, err := ctx.OmapGet(key); err == nil {
		return nil, fmt.Errorf("tag %d exists: %w", tid, objstore.ErrExists)
	} else if !isNotFound(err) {
		return nil, err
	}
	next, err := readKey(ctx, keyNextTagTid, clsenc.U64)
	if err != nil {
		return nil, err
	}
	if tid != next {
		return nil, fmt.Errorf("tag %d out of sequence (next is %d): %w", tid, next, objstore.ErrStale)
	}
	nextClass, err := readKey(ctx, keyNextTagClass, clsenc.U64)
	if err != nil {
		return nil, err
	}
	if class == TagClassNew {
		class = nextClass
		if err := clsenc.WriteU64(ctx, keyNextTagClass, class+1); err != nil {
			return nil, err
		}
	} else if class >= nextClass {
		return nil, fmt.Errorf("tag class %d not allocated (next is %d): %w", class, nextClass, objstore.ErrInvalid)
	}
	if err := expireTags(ctx, nil); err != nil {
		return nil, err
	}
	if err := clsenc.WriteU64(ctx, keyNextTagTid, tid+1); err != nil {
		return nil, err
	}
	return nil, clsenc.WriteKey(ctx, key, Tag{Tid: tid, TagClass: class, Data: data}.Encode)
}

// tagPass is a pass of the two-pass tag scans of expireTags and tagList.
type tagPass int

const (
	passMinimums tagPass = iota // per class, the newest tag up to the oldest committed tag
	passSecond                  // scrub (expireTags) or list (tagList)
	passDone
)

// expireTags removes the tags no client needs any more (expire_tags).
//
// The oldest tag tid in any connected client's commit position bounds what
// is in use; if a connected client has an empty commit position nothing is
// pruned. Disconnected clients, and skipClientID (being unregistered), do
// not count. Then, scanning tags in tid order up to and including the first
// tag at or past that bound, the newest tag of each class is the class's
// oldest tag in use; a second scan removes the older tags of each class. A
// tag whose key does not match its tid is -EINVAL, an undecodable client or
// tag -EIO.
func expireTags(ctx objstore.MethodContext, skipClientID *string) error {
	skipKey := ""
	if skipClientID != nil {
		skipKey = clientKey(*skipClientID)
	}
	minimumTagTid := uint64(math.MaxUint64)
	lastRead := ""
	for {
		page, err := ctx.OmapList(lastRead, clientPrefix, maxKeysRead)
		if err != nil && !isNotFound(err) {
			return err
		}
		for _, kv := range page.Entries {
			if skipClientID != nil && kv.Key == skipKey {
				continue
			}
			var c Client
			if err := cephenc.Unmarshal(kv.Value, &c); err != nil {
				return fmt.Errorf("omap key %q: %w: %w", kv.Key, syscall.EIO, err)
			}
			if c.State == ClientStateDisconnected {
				continue
			}
			if len(c.CommitPosition.ObjectPositions) == 0 {
				return nil
			}
			for _, p := range c.CommitPosition.ObjectPositions {
				minimumTagTid = min(minimumTagTid, p.TagTid)
			}
		}
		if n := len(page.Entries); n > 0 {
			lastRead = page.Entries[n-1].Key
		}
		if !page.More {
			break
		}
	}
	if minimumTagTid == math.MaxUint64 {
		return nil // no connected client has committed yet
	}

	classMin := make(map[uint64]uint64)
	pass := passMinimums
	lastRead = tagPrefix
	for pass != passDone {
		page, err := ctx.OmapList(lastRead, tagPrefix, maxKeysRead)
		if err != nil && !isNotFound(err) {
			return err
		}
		entries, more := page.Entries, page.More
		for _, kv := range entries {
			var t Tag
			if err := cephenc.Unmarshal(kv.Value, &t); err != nil {
				return fmt.Errorf("omap key %q: %w: %w", kv.Key, syscall.EIO, err)
			}
			if t.Tid != tagTidFromKey(kv.Key) {
				return fmt.Errorf("omap key %q holds tag %d: %w", kv.Key, t.Tid, objstore.ErrInvalid)
			}
			if pass == passMinimums {
				classMin[t.TagClass] = t.Tid
			} else if t.Tid < classMin[t.TagClass] {
				if err := ctx.OmapRemove(kv.Key); err != nil && !isNotFound(err) {
					return err
				}
			}
			if t.Tid >= minimumTagTid {
				// later tags are all in use, whatever their class
				entries, more = nil, false
				break
			}
		}
		if !more {
			lastRead = tagPrefix
			pass++
		} else if n := len(entries); n > 0 {
			lastRead = entries[n-1].Key
		}
	}
	return nil
}

// tagList: input u64 start_after_tag_tid (0: from the start), u64
// max_return, string client_id (-ENOENT if not registered), optional u64
// tag class; output a std::set<Tag>.
//
// It returns the tags the client may still need: from the minimum pass of
// expireTags computed over the client's own commit position (all tags if it
// is empty), each tag at or after its class's oldest tag in use, filtered by
// class. Listing stops once max_return tags are collected.
func tagList(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	d := cephenc.NewDecoder(in)
	startAfter, max, clientID := d.U64(), d.U64(), d.Str()
	var classFilter *uint64
	if d.Bool() {
		c := d.U64()
		classFilter = &c
	}
	if err := clsenc.BadInput(d.Err()); err != nil {
		return nil, err
	}
	client, err := readKey(ctx, clientKey(clientID), decClient)
	if err != nil {
		return nil, err
	}
	minimumTagTid := uint64(math.MaxUint64)
	for _, p := range client.CommitPosition.ObjectPositions {
		minimumTagTid = min(minimumTagTid, p.TagTid)
	}

	var tags []Tag
	seen := make(map[uint64]bool) // a std::set<Tag> keeps the first tag of a tid
	classMin := make(map[uint64]uint64)
	pass := passMinimums
	if minimumTagTid == math.MaxUint64 {
		pass = passSecond
	}
	lastRead := tagPrefix
	for pass != passDone {
		page, err := ctx.OmapList(lastRead, tagPrefix, maxKeysRead)
		if err != nil && !isNotFound(err) {
			return nil, err
		}
		entries, more := page.Entries, page.More
		for _, kv := range entries {
			var t Tag
			if err := cephenc.Unmarshal(kv.Value, &t); err != nil {
				return nil, fmt.Errorf("omap key %q: %w: %w", kv.Key, syscall.EIO, err)
			}
			switch pass {
			case passMinimums:
				classMin[t.TagClass] = t.Tid
				if t.Tid >= minimumTagTid {
					entries, more = nil, false
				}
			case passSecond:
				if startAfter != 0 && t.Tid <= startAfter {
					continue
				}
				if t.Tid >= classMin[t.TagClass] && (classFilter == nil || *classFilter == t.TagClass) && !seen[t.Tid] {
					seen[t.Tid] = true
					tags = append(tags, t)
				}
				if uint64(len(tags)) >= max {
					pass = passDone
				}
			}
			if entries == nil {
				break
			}
		}
		if pass != passDone && !more {
			lastRead = tagPrefix
			pass++
		} else if n := len(entries); n > 0 {
			lastRead = entries[n-1].Key
		}
	}
	slices.SortFunc(tags, func(a, b Tag) int { return cmp.Compare(a.Tid, b.Tid) })
	return cephenc.MarshalFunc(func(e *cephenc.Encoder) { cephenc.EncodeList(e, tags) }), nil
}

// guardAppend: -EOVERFLOW once the data object holds soft_max_size bytes or
// more. A missing object is empty.
func guardAppend(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	softMax, err := clsenc.Input(in, clsenc.U64)
	if err != nil {
		return nil, err
	}
	size, err := ctx.Stat()
	if isNotFound(err) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	if size >= softMax {
		return nil, fmt.Errorf("journal object full (%d >= %d): %w", size, softMax, objstore.ErrOverflow)
	}
	return nil, nil
}

// appendData is the "append" method: input u64 soft_max_size, bufferlist
// data. Like guard_append it refuses a full object, then writes data at its
// end, creating it if needed. An object may thus end up to one append's
// size beyond soft_max_size. (No padding: see Class.)
func appendData(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	d := cephenc.NewDecoder(in)
	softMax, data := d.U64(), d.Bytes()
	if err := clsenc.BadInput(d.Err()); err != nil {
		return nil, err
	}
	size, err := ctx.Stat()
	if err != nil && !isNotFound(err) {
		return nil, err
	}
	if isNotFound(err) {
		size = 0
	}
	if size >= softMax {
		return nil, fmt.Errorf("journal object full (%d >= %d): %w", size, softMax, objstore.ErrOverflow)
	}
	return nil, ctx.Write(size, data)
}
