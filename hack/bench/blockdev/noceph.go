//go:build !(ceph && pacific)

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
)

const cephBuilt = false

var errNoCeph = errors.New("built without Ceph support: build with -tags ceph,pacific (make bench does when Ceph's libraries are installed)")

func cephGroup(options, *cephCluster, []policyRow) (*group, []string, error) {
	return nil, nil, errNoCeph
}

func cephManyVolumes(context.Context, options, *cephCluster) (*manyEnv, error) {
	return nil, errNoCeph
}

func replayBench(context.Context, options, string, uint8) (*replayResult, error) {
	return nil, errNoCeph
}

func crashWriterMain([]string) {
	fmt.Fprintln(os.Stderr, errNoCeph)
	os.Exit(2)
}
