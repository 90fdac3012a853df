//go:build !(ceph && pacific)

package main

import (
	"context"
	"errors"
)

const cephBuilt = false

var errNoCeph = errors.New("built without Ceph support: build with -tags ceph,pacific (make bench-handover does when Ceph's libraries are installed)")

func connectCeph(context.Context, childConfig) (*backendConn, error) { return nil, errNoCeph }

func createCeph(context.Context, childConfig, int64) (func(context.Context) error, error) {
	return nil, errNoCeph
}
