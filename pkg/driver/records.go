package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// The controller's records (of volumes and of snapshots) are small JSON
// objects in the pool of what they describe.

// readJSONObject reads and decodes the JSON object oid.
func readJSONObject[T any](ctx context.Context, pool objstore.Pool, oid, what string) (T, error) {
	var v T
	var op objstore.ReadOp
	r := op.Read(0, 0)
	if err := pool.Read(ctx, oid, &op); err != nil {
		return v, err
	}
	if err := json.Unmarshal(r.Data(), &v); err != nil {
		return v, fmt.Errorf("%s record %s: %w", what, oid, err)
	}
	return v, nil
}

// createJSONObject creates object oid holding v; it fails with
// objstore.ErrExists if the object exists.
func createJSONObject(ctx context.Context, pool objstore.Pool, oid string, v any) error {
	return writeJSONObject(ctx, pool, oid, v, true)
}

// updateJSONObject replaces the content of existing object oid with v in
// JSON.
func updateJSONObject(ctx context.Context, pool objstore.Pool, oid string, v any) error {
	return writeJSONObject(ctx, pool, oid, v, false)
}

// writeJSONObject writes v in JSON as object oid: a new one (create) or an
// existing one.
func writeJSONObject(ctx context.Context, pool objstore.Pool, oid string, v any, create bool) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var op objstore.WriteOp
	if create {
		op.Create(true)
	} else {
		op.AssertExists()
	}
	op.WriteFull(b)
	return pool.Operate(ctx, oid, &op)
}

// removeObject removes object oid; a missing one is not an error.
func removeObject(ctx context.Context, pool objstore.Pool, oid string) error {
	var op objstore.WriteOp
	op.Remove()
	err := pool.Operate(ctx, oid, &op)
	if errors.Is(err, objstore.ErrNotFound) {
		return nil
	}
	return err
}
