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

func cephTargets(context.Context, options) ([]func() (*target, error), []string, error) {
	return nil, nil, errNoCeph
}

func replayBench(context.Context, options, uint8) (*replayResult, error) { return nil, errNoCeph }

func crashWriterMain([]string) {
	fmt.Fprintln(os.Stderr, errNoCeph)
	os.Exit(2)
}
