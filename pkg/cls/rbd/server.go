package clsrbd

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/cls/clsenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Header omap keys, as cls_rbd.cc names them.
const (
	keySize            = "size"
	keyOrder           = "order"
	keyFeatures        = "features"
	keyObjectPrefix    = "object_prefix"
	keySnapSeq         = "snap_seq"
	keyCreateTimestamp = "create_timestamp"
	keyAccessTimestamp = "access_timestamp"
	keyModifyTimestamp = "modify_timestamp"
	keyDataPoolID      = "data_pool_id"
	keyParent          = "parent"
	keyStripeUnit      = "stripe_unit"
	keyStripeCount     = "stripe_count"

	snapKeyPrefix    = "snapshot_"
	dirIDKeyPrefix   = "id_"
	dirNameKeyPrefix = "name_"
)

// maxKeysRead is the page size of the class's own omap scans
// (RBD_MAX_KEYS_READ).
const maxKeysRead = 64

func dirKeyForName(name string) string { return dirNameKeyPrefix + name }
func dirKeyForID(id string) string     { return dirIDKeyPrefix + id }

// snapKey is "snapshot_" and the id in 16 zero-padded lower-case hex digits
// (key_from_snap_id), so that keys sort in id order.
func snapKey(id uint64) string { return cephenc.HexKey(snapKeyPrefix, id) }

// snapIDFromKey parses a snapshot key as snap_id_from_key does.
func snapIDFromKey(key string) uint64 { return cephenc.ParseHexKey(snapKeyPrefix, key) }

// Class returns the "rbd" object class: the methods of Ceph 16's cls_rbd
// that a format-2 image without snapshots, clones, object map or mirroring
// uses, with the same inputs, outputs, omap keys, value encodings and return
// codes.
//
// Read-only methods fail with ENOENT on a missing object, as the OSD does
// before it runs a read-only method; method-specific checks follow.
func Class() objstore.Class {
	return objstore.Class{
		"create":                {Write: true, Call: create},
		"get_size":              {Call: readOnly(getSize)},
		"set_size":              {Write: true, Call: setSize},
		"get_features":          {Call: readOnly(getFeatures)},
		"set_features":          {Write: true, Call: setFeatures},
		"get_object_prefix":     {Call: readOnly(getObjectPrefix)},
		"get_data_pool":         {Call: readOnly(getDataPool)},
		"get_snapcontext":       {Call: readOnly(getSnapContext)},
		"get_parent":            {Call: readOnly(getParent)},
		"set_parent":            {Write: true, Call: setParent}, // parent.go
		"copyup":                {Write: true, Call: copyup},
		"get_stripe_unit_count": {Call: readOnly(getStripeUnitCount)},
		"get_create_timestamp":  {Call: readOnly(getTimestamp(keyCreateTimestamp))},
		"get_access_timestamp":  {Call: readOnly(getTimestamp(keyAccessTimestamp))},
		"get_modify_timestamp":  {Call: readOnly(getTimestamp(keyModifyTimestamp))},
		"set_access_timestamp":  {Write: true, Call: setTimestamp(keyAccessTimestamp)},
		"set_modify_timestamp":  {Write: true, Call: setTimestamp(keyModifyTimestamp)},
		"get_all_features":      {Call: readOnly(getAllFeatures)},
		"get_id":                {Call: readOnly(getID)},
		"set_id":                {Write: true, Call: setID},
		"dir_add_image":         {Write: true, Call: dirAddImage},
		"dir_remove_image":      {Write: true, Call: dirRemoveImage},
		"dir_rename_image":      {Write: true, Call: dirRenameImage},
		"dir_get_id":            {Call: readOnly(dirGet(dirKeyForName))},
		"dir_get_name":          {Call: readOnly(dirGet(dirKeyForID))},
		"dir_list":              {Call: readOnly(dirList)},
		// metadata.go
		"metadata_set":    {Write: true, Call: metadataSet},
		"metadata_remove": {Write: true, Call: metadataRemove},
		"metadata_get":    {Call: readOnly(metadataGet)},
		// snap.go
		"snapshot_add":           {Write: true, Call: snapshotAdd},
		"snapshot_remove":        {Write: true, Call: snapshotRemove},
		"snapshot_trash_add":     {Write: true, Call: snapshotTrashAdd},
		"snapshot_get":           {Call: readOnly(snapshotGet)},
		"get_snapshot_name":      {Call: readOnly(getSnapshotName)},
		"get_snapshot_timestamp": {Call: readOnly(getSnapshotTimestamp)},
		// clone.go
		"child_attach":    {Write: true, Call: childAttach},
		"child_detach":    {Write: true, Call: childDetach},
		"children_list":   {Call: readOnly(childrenList)},
		"op_features_get": {Call: readOnly(opFeaturesGet)},
		"op_features_set": {Write: true, Call: opFeaturesSet},
		"remove_parent":   {Write: true, Call: removeParent},
	}
}

type callFunc = func(ctx objstore.MethodContext, in []byte) ([]byte, error)

// readOnly gives fn the OSD's treatment of read-only methods: ENOENT if the
// object does not exist.
func readOnly(fn callFunc) callFunc {
	return func(ctx objstore.MethodContext, in []byte) ([]byte, error) {
		if _, err := ctx.Stat(); err != nil {
			return nil, err
		}
		return fn(ctx, in)
	}
}

func isNotFound(err error) bool { return errors.Is(err, objstore.ErrNotFound) }

// errIO is the -EIO cls_rbd returns for a stored value it cannot decode.
const errIO = syscall.EIO

// readKey is cls_rbd's read_key: a missing key is -ENOENT, an undecodable
// value -EIO.
func readKey[T any](ctx objstore.MethodContext, key string, dec func(*cephenc.Decoder) (T, error)) (T, error) {
	return clsenc.ReadKey(ctx, key, dec, errIO)
}

func decUTime(d *cephenc.Decoder) (UTime, error) {
	var u UTime
	_ = u.Decode(d) // the error stays in d
	return u, d.Err()
}

func decParent(d *cephenc.Decoder) (parentRecord, error) {
	var p parentRecord
	_ = p.decode(d) // the error stays in d
	return p, d.Err()
}

func u64Bytes(v uint64) []byte { return cephenc.MarshalFunc(func(e *cephenc.Encoder) { e.U64(v) }) }

// checkExists is cls_rbd's check_exists: the object's stat.
func checkExists(ctx objstore.MethodContext) error {
	_, err := ctx.Stat()
	return err
}

// requireFeature fails with ENOEXEC unless the image has every feature in
// need; an image without a "features" key is a format-1 image, which has
// none.
func requireFeature(ctx objstore.MethodContext, need uint64) error {
	f, err := readKey(ctx, keyFeatures, clsenc.U64)
	if isNotFound(err) {
		return syscall.ENOEXEC
	}
	if err != nil {
		return err
	}
	if f&need != need {
		return syscall.ENOEXEC
	}
	return nil
}

// create initialises an image header. Input: u64 size, u8 order, u64
// features, string object_prefix, optional s64 data_pool_id.
func create(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	d := cephenc.NewDecoder(in)
	size := d.U64()
	order := d.U8()
	features := d.U64()
	prefix := d.Str()
	dataPoolID := int64(-1)
	if d.Err() == nil && d.Remaining() > 0 {
		dataPoolID = d.S64()
	}
	if err := clsenc.BadInput(d.Err()); err != nil {
		return nil, err
	}
	if features&^FeaturesAll != 0 {
		return nil, fmt.Errorf("unsupported features 0x%x: %w", features&^FeaturesAll, syscall.ENOSYS)
	}
	if prefix == "" {
		return nil, fmt.Errorf("empty object prefix: %w", objstore.ErrInvalid)
	}
	if _, err := ctx.OmapGet(keyObjectPrefix); !isNotFound(err) {
		return nil, fmt.Errorf("header already initialised: %w", objstore.ErrExists)
	}
	ts := cephenc.MarshalFunc(UTimeOf(time.Now()).Encode)
	vals := map[string][]byte{
		keySize:            u64Bytes(size),
		keyOrder:           {order},
		keyFeatures:        u64Bytes(features),
		keyObjectPrefix:    cephenc.MarshalFunc(func(e *cephenc.Encoder) { e.String(prefix) }),
		keySnapSeq:         u64Bytes(0),
		keyCreateTimestamp: ts,
		keyAccessTimestamp: ts,
		keyModifyTimestamp: ts,
	}
	if features&FeatureOperations != 0 {
		return nil, fmt.Errorf("internal feature operations: %w", objstore.ErrInvalid)
	}
	if features&FeatureDataPool != 0 {
		if dataPoolID == -1 {
			return nil, fmt.Errorf("data-pool feature without a data pool: %w", objstore.ErrInvalid)
		}
		vals[keyDataPoolID] = cephenc.MarshalFunc(func(e *cephenc.Encoder) { e.S64(dataPoolID) })
	} else if dataPoolID != -1 {
		return nil, fmt.Errorf("data pool without the data-pool feature: %w", objstore.ErrInvalid)
	}
	return nil, ctx.OmapSet(vals)
}

// getSize returns u8 order and u64 size of the head (snap_id NoSnap) or of
// a snapshot. Input: u64 snap_id.
func getSize(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	snapID, err := clsenc.Input(in, clsenc.U64)
	if err != nil {
		return nil, err
	}
	order, err := readKey(ctx, keyOrder, clsenc.U8)
	if err != nil {
		return nil, err
	}
	var size uint64
	if snapID == NoSnap {
		size, err = readKey(ctx, keySize, clsenc.U64)
	} else {
		size, err = readKey(ctx, snapKey(snapID), decSnapImageSize)
	}
	if err != nil {
		return nil, err
	}
	return cephenc.MarshalFunc(func(e *cephenc.Encoder) {
		e.U8(order)
		e.U64(size)
	}), nil
}

// decSnapImageSize reads the image size of a cls_rbd_snap record, whose
// first fields (every version) are u64 id, string name, u64 image_size.
func decSnapImageSize(d *cephenc.Decoder) (uint64, error) {
	s := d.Start(8)
	d.U64()
	d.Str()
	size := d.U64()
	d.Finish(s)
	return size, d.Err()
}

// setSize sets the image size and, when shrinking a clone, shrinks its
// overlap with the parent. Input: u64 size.
func setSize(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	size, err := clsenc.Input(in, clsenc.U64)
	if err != nil {
		return nil, err
	}
	orig, err := readKey(ctx, keySize, clsenc.U64)
	if err != nil {
		return nil, err
	}
	if err := clsenc.WriteU64(ctx, keySize, size); err != nil {
		return nil, err
	}
	if size >= orig {
		return nil, nil
	}
	p, err := readKey(ctx, keyParent, decParent)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if p.exists() && p.headOverlap != nil && *p.headOverlap > size {
		p.headOverlap = &size
		return nil, clsenc.WriteKey(ctx, keyParent, p.encode)
	}
	return nil, nil
}

func (p parentRecord) exists() bool {
	return p.poolID >= 0 && p.imageID != "" && p.snapID != NoSnap
}

// getFeatures returns u64 features and u64 incompatible features (those a
// client must understand to read, or with read_only false to write, the
// image). Input: u64 snap_id (ignored, as in Ceph), optional bool read_only.
func getFeatures(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	d := cephenc.NewDecoder(in)
	d.U64()
	readOnly := false
	if d.Err() == nil && d.Remaining() > 0 {
		readOnly = d.Bool()
	}
	if err := clsenc.BadInput(d.Err()); err != nil {
		return nil, err
	}
	f, err := readKey(ctx, keyFeatures, clsenc.U64)
	if err != nil {
		return nil, err
	}
	incompatible := f & FeaturesRWIncompatible
	if readOnly {
		incompatible = f & FeaturesIncompatible
	}
	return cephenc.MarshalFunc(func(e *cephenc.Encoder) {
		e.U64(f)
		e.U64(incompatible)
	}), nil
}

// setFeatures enables and disables mutable features. Input: u64 features,
// u64 mask (the bits to change).
func setFeatures(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	d := cephenc.NewDecoder(in)
	features := d.U64()
	mask := d.U64()
	if err := clsenc.BadInput(d.Err()); err != nil {
		return nil, err
	}
	orig, err := readKey(ctx, keyFeatures, clsenc.U64)
	if err != nil && !isNotFound(err) {
		return nil, err
	}
	if mask&FeaturesInternal != 0 {
		return nil, fmt.Errorf("internal features 0x%x: %w", mask&FeaturesInternal, objstore.ErrInvalid)
	}
	mask &= FeaturesAll
	if enabled := features & mask; enabled&^FeaturesMutable != 0 {
		return nil, fmt.Errorf("enable immutable features 0x%x: %w", enabled&^FeaturesMutable, objstore.ErrInvalid)
	}
	if disabled := ^features & mask; disabled&^(FeaturesMutable|FeaturesDisableOnly) != 0 {
		return nil, fmt.Errorf("disable immutable features 0x%x: %w", disabled&^(FeaturesMutable|FeaturesDisableOnly), objstore.ErrInvalid)
	}
	f := orig&^mask | features&mask
	return nil, clsenc.WriteU64(ctx, keyFeatures, f)
}

// getObjectPrefix returns the string prefix of the image's data objects.
func getObjectPrefix(ctx objstore.MethodContext, _ []byte) ([]byte, error) {
	p, err := readKey(ctx, keyObjectPrefix, clsenc.String)
	if err != nil {
		return nil, err
	}
	return cephenc.MarshalFunc(func(e *cephenc.Encoder) { e.String(p) }), nil
}

// getDataPool returns the s64 id of the image's data pool, -1 for none.
func getDataPool(ctx objstore.MethodContext, _ []byte) ([]byte, error) {
	id, err := readKey(ctx, keyDataPoolID, clsenc.S64)
	if isNotFound(err) {
		id, err = -1, nil
	}
	if err != nil {
		return nil, err
	}
	return cephenc.MarshalFunc(func(e *cephenc.Encoder) { e.S64(id) }), nil
}

// getSnapContext returns the image's snapshot context: u64 snap_seq and the
// snapshot ids, newest first.
func getSnapContext(ctx objstore.MethodContext, _ []byte) ([]byte, error) {
	var ids []uint64
	last := snapKeyPrefix
	for {
		page, err := ctx.OmapList(last, snapKeyPrefix, maxKeysRead)
		if err != nil {
			return nil, err
		}
		for _, kv := range page.Entries {
			ids = append(ids, snapIDFromKey(kv.Key))
		}
		if len(page.Entries) > 0 {
			last = page.Entries[len(page.Entries)-1].Key
		}
		if !page.More || len(page.Entries) == 0 {
			break
		}
	}
	seq, err := readKey(ctx, keySnapSeq, clsenc.U64)
	if err != nil {
		return nil, err
	}
	c := SnapContext{Seq: seq, Snaps: make([]uint64, 0, len(ids))}
	for i := len(ids) - 1; i >= 0; i-- {
		c.Snaps = append(c.Snaps, ids[i])
	}
	return cephenc.MarshalFunc(c.Encode), nil
}

// getParent returns the image's parent: s64 pool id (-1 for none), string
// image id, u64 snap id, u64 overlap. Input: u64 snap_id.
func getParent(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	snapID, err := clsenc.Input(in, clsenc.U64)
	if err != nil {
		return nil, err
	}
	if err := checkExists(ctx); err != nil {
		return nil, err
	}
	p := parentRecord{poolID: -1, snapID: NoSnap}
	if requireFeature(ctx, FeatureLayering) == nil {
		stored, err := readKey(ctx, keyParent, decParent)
		if err != nil && !isNotFound(err) {
			return nil, err
		}
		if err == nil {
			p = stored
		}
		if p.poolNamespace != "" {
			return nil, fmt.Errorf("parent in pool namespace %q: %w", p.poolNamespace, syscall.EXDEV)
		}
		if snapID != NoSnap {
			// A snapshot shares the head's parent, with the overlap it
			// recorded (a pre-Nautilus record carries its own parent).
			r, err := readKey(ctx, snapKey(snapID), decSnapRecord)
			switch {
			case isNotFound(err):
				p = parentRecord{poolID: -1, snapID: NoSnap}
			case err != nil:
				return nil, err
			case r.parent != nil:
				p = *r.parent
			case r.ParentOverlap != nil && p.exists():
				v := *r.ParentOverlap
				p.headOverlap = &v
			default:
				p = parentRecord{poolID: -1, snapID: NoSnap}
			}
		}
	}
	return cephenc.MarshalFunc(func(e *cephenc.Encoder) {
		e.S64(p.poolID)
		e.String(p.imageID)
		e.U64(p.snapID)
		if p.headOverlap != nil {
			e.U64(*p.headOverlap)
		} else {
			e.U64(0)
		}
	}), nil
}

// getStripeUnitCount returns u64 stripe unit and u64 stripe count of an
// image with the striping feature (ENOEXEC without it).
func getStripeUnitCount(ctx objstore.MethodContext, _ []byte) ([]byte, error) {
	if err := checkExists(ctx); err != nil {
		return nil, err
	}
	if err := requireFeature(ctx, FeatureStripingV2); err != nil {
		return nil, err
	}
	unit, err := readKey(ctx, keyStripeUnit, clsenc.U64)
	if isNotFound(err) {
		order, oerr := readKey(ctx, keyOrder, clsenc.U8)
		if oerr != nil {
			return nil, fmt.Errorf("read order: %w", errIO)
		}
		unit, err = 1<<order, nil
	}
	if err != nil {
		return nil, err
	}
	count, err := readKey(ctx, keyStripeCount, clsenc.U64)
	if isNotFound(err) {
		count, err = 1, nil
	}
	if err != nil {
		return nil, err
	}
	return cephenc.MarshalFunc(func(e *cephenc.Encoder) {
		e.U64(unit)
		e.U64(count)
	}), nil
}

// getTimestamp returns the utime stored under key, zero if there is none
// (images created before timestamps were recorded).
func getTimestamp(key string) callFunc {
	return func(ctx objstore.MethodContext, _ []byte) ([]byte, error) {
		u, err := readKey(ctx, key, decUTime)
		if isNotFound(err) {
			u, err = UTime{}, nil
		}
		if err != nil {
			return nil, err
		}
		return cephenc.MarshalFunc(u.Encode), nil
	}
}

// setTimestamp stores the current time under key.
func setTimestamp(key string) callFunc {
	return func(ctx objstore.MethodContext, _ []byte) ([]byte, error) {
		if err := checkExists(ctx); err != nil {
			return nil, err
		}
		return nil, clsenc.WriteKey(ctx, key, UTimeOf(time.Now()).Encode)
	}
}

// getAllFeatures returns the u64 mask of every feature this class supports.
func getAllFeatures(objstore.MethodContext, []byte) ([]byte, error) {
	return u64Bytes(FeaturesAll), nil
}

// isValidID is cls_rbd's is_valid_id: a non-empty alphanumeric string.
func isValidID(id string) bool {
	if id == "" {
		return false
	}
	for _, c := range []byte(id) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}

// getID returns the string id stored as the data of an rbd_id object.
func getID(ctx objstore.MethodContext, _ []byte) ([]byte, error) {
	size, err := ctx.Stat()
	if err != nil {
		return nil, err
	}
	if size == 0 {
		return nil, objstore.ErrNotFound
	}
	b, err := ctx.Read(0, size)
	if err != nil {
		return nil, err
	}
	d := cephenc.NewDecoder(b)
	id := d.Str()
	if err := d.Err(); err != nil {
		return nil, fmt.Errorf("decode id: %w: %w", errIO, err)
	}
	return cephenc.MarshalFunc(func(e *cephenc.Encoder) { e.String(id) }), nil
}

// setID stores the id in an existing, empty rbd_id object. Input: string id.
func setID(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	if err := checkExists(ctx); err != nil {
		return nil, err
	}
	id, err := clsenc.Input(in, clsenc.String)
	if err != nil {
		return nil, err
	}
	if !isValidID(id) {
		return nil, fmt.Errorf("invalid image id %q: %w", id, objstore.ErrInvalid)
	}
	size, err := ctx.Stat()
	if err != nil {
		return nil, err
	}
	if size != 0 {
		return nil, fmt.Errorf("id already set: %w", objstore.ErrExists)
	}
	return nil, ctx.Write(0, cephenc.MarshalFunc(func(e *cephenc.Encoder) { e.String(id) }))
}

func dirAddImageHelper(ctx objstore.MethodContext, name, id string, checkUniqueID bool) error {
	if name == "" || !isValidID(id) {
		return fmt.Errorf("invalid name %q or id %q: %w", name, id, objstore.ErrInvalid)
	}
	nameKey, idKey := dirKeyForName(name), dirKeyForID(id)
	if _, err := readKey(ctx, nameKey, clsenc.String); !isNotFound(err) {
		return fmt.Errorf("image name %q: %w", name, objstore.ErrExists)
	}
	if _, err := readKey(ctx, idKey, clsenc.String); !isNotFound(err) && checkUniqueID {
		return fmt.Errorf("image id %q: %w", id, syscall.EBADF)
	}
	return ctx.OmapSet(map[string][]byte{
		nameKey: cephenc.MarshalFunc(func(e *cephenc.Encoder) { e.String(id) }),
		idKey:   cephenc.MarshalFunc(func(e *cephenc.Encoder) { e.String(name) }),
	})
}

func dirRemoveImageHelper(ctx objstore.MethodContext, name, id string) error {
	nameKey, idKey := dirKeyForName(name), dirKeyForID(id)
	storedID, err := readKey(ctx, nameKey, clsenc.String)
	if err != nil {
		return err
	}
	storedName, err := readKey(ctx, idKey, clsenc.String)
	if err != nil {
		return err
	}
	if storedName != name || storedID != id {
		return fmt.Errorf("directory maps %q to %q and %q to %q: %w", name, storedID, id, storedName, objstore.ErrStale)
	}
	if err := ctx.OmapRemove(nameKey); err != nil {
		return err
	}
	return ctx.OmapRemove(idKey)
}

// dirAddImage adds name <-> id to the directory, creating it if needed.
// Input: string name, string id. EEXIST if the name is taken, EBADF if the
// id is.
func dirAddImage(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	if err := ctx.Create(false); err != nil {
		return nil, err
	}
	d := cephenc.NewDecoder(in)
	name := d.Str()
	id := d.Str()
	if err := clsenc.BadInput(d.Err()); err != nil {
		return nil, err
	}
	return nil, dirAddImageHelper(ctx, name, id, true)
}

// dirRemoveImage removes name <-> id from the directory. Input: string name,
// string id. ENOENT if either is missing, ESTALE if they do not match.
func dirRemoveImage(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	d := cephenc.NewDecoder(in)
	name := d.Str()
	id := d.Str()
	if err := clsenc.BadInput(d.Err()); err != nil {
		return nil, err
	}
	return nil, dirRemoveImageHelper(ctx, name, id)
}

// dirRenameImage renames src to dest. Input: string src, string dest, string
// id.
func dirRenameImage(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	d := cephenc.NewDecoder(in)
	src := d.Str()
	dest := d.Str()
	id := d.Str()
	if err := clsenc.BadInput(d.Err()); err != nil {
		return nil, err
	}
	if err := dirRemoveImageHelper(ctx, src, id); err != nil {
		return nil, err
	}
	// In cls_rbd the removal is not yet visible to the reads that follow
	// it in the same method, so renaming an image to its own name finds
	// the name taken.
	if dest == src {
		return nil, fmt.Errorf("image name %q: %w", dest, objstore.ErrExists)
	}
	return nil, dirAddImageHelper(ctx, dest, id, false)
}

// dirGet returns the string the directory stores under key(in), for an
// input string: dir_get_id with dirKeyForName (input: name; output: id),
// dir_get_name with dirKeyForID (input: id; output: name).
func dirGet(key func(string) string) callFunc {
	return func(ctx objstore.MethodContext, in []byte) ([]byte, error) {
		k, err := clsenc.Input(in, clsenc.String)
		if err != nil {
			return nil, err
		}
		v, err := readKey(ctx, key(k), clsenc.String)
		if err != nil {
			return nil, err
		}
		return cephenc.MarshalFunc(func(e *cephenc.Encoder) { e.String(v) }), nil
	}
}

// dirList returns up to max_return images after start_after in name order,
// as a map<string name, string id>. Input: string start_after, u64
// max_return.
func dirList(ctx objstore.MethodContext, in []byte) ([]byte, error) {
	d := cephenc.NewDecoder(in)
	startAfter := d.Str()
	maxReturn := d.U64()
	if err := clsenc.BadInput(d.Err()); err != nil {
		return nil, err
	}
	var images []DirEntry
	last := dirKeyForName(startAfter)
	more := true
	for more && uint64(len(images)) < maxReturn {
		page, err := ctx.OmapList(last, dirNameKeyPrefix, maxKeysRead)
		if err != nil {
			return nil, err
		}
		more = page.More
		for _, kv := range page.Entries {
			dd := cephenc.NewDecoder(kv.Value)
			id := dd.Str()
			if err := dd.Err(); err != nil {
				return nil, fmt.Errorf("id of image %q: %w: %w", kv.Key, errIO, err)
			}
			images = append(images, DirEntry{Name: strings.TrimPrefix(kv.Key, dirNameKeyPrefix), ID: id})
			if uint64(len(images)) >= maxReturn {
				break
			}
		}
		if len(images) > 0 {
			last = dirKeyForName(images[len(images)-1].Name)
		}
		if len(page.Entries) == 0 {
			break
		}
	}
	return cephenc.MarshalFunc(func(e *cephenc.Encoder) { encodeDirEntries(e, images) }), nil
}

func encodeDirEntries(e *cephenc.Encoder, images []DirEntry) {
	e.U32(uint32(len(images)))
	for _, im := range images {
		e.String(im.Name)
		e.String(im.ID)
	}
}
