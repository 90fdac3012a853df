package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/classes"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

// localGroup is our device on the local backend (each ack policy, journaling
// off, metadata journal mode) and the plain loop device.
func localGroup(o options, policies []policyRow) *group {
	g := &group{name: "local", begin: func(context.Context) (func(), error) { return func() {}, nil }}
	add := func(name string, bo blockdev.Options) {
		g.rows = append(g.rows, rowSpec{Name: name, Backend: "local", open: func(ctx context.Context) (*target, error) {
			return localDevice(ctx, o, name, bo)
		}})
	}
	for _, p := range policies {
		add(policyRowName(p.Name), blockdev.Options{AckPolicy: p.Policy, MaxPayload: o.payload})
	}
	add(unjournaledName, blockdev.Options{Unjournaled: true})
	add(metadataName, blockdev.Options{JournalMode: blockdev.JournalMetadata, AckPolicy: blockdev.AckApplied, MaxPayload: o.payload})
	g.rows = append(g.rows, rowSpec{Name: plainLoopName, Backend: "-", open: func(context.Context) (*target, error) { return plainLoop(o) }})
	return g
}

const plainLoopName = "plain loop on a file"

// localPool opens a new local backend in a scratch directory (scratchDir)
// and its pool "rbd"; drop closes the backend and removes the directory.
func localPool(ctx context.Context, o options, name string) (c *local.Cluster, pool objstore.Pool, dir string, drop func(), err error) {
	dir, err = scratchDir(o, name)
	if err != nil {
		return nil, nil, "", nil, err
	}
	c, err = local.Open(dir, local.Options{Classes: classes.Standard()})
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, "", nil, err
	}
	drop = func() { c.Close(); os.RemoveAll(dir) }
	pool, err = c.Pool(ctx, "rbd")
	if err != nil {
		drop()
		return nil, nil, "", nil, err
	}
	return c, pool, dir, drop, nil
}

// localDevice serves a new image of a new local backend as a loop device;
// closing it removes both.
func localDevice(ctx context.Context, o options, name string, bo blockdev.Options) (*target, error) {
	c, pool, dir, drop, err := localPool(ctx, o, name)
	if err != nil {
		return nil, err
	}
	if err := image.Create(ctx, pool, "bench", o.span, image.CreateOptions{JournalSplayWidth: volume.DefaultJournalSplayWidth, Features: featuresFor(bo)}); err != nil {
		drop()
		return nil, err
	}
	bo.Fencer = c
	dev, err := serveDevice(ctx, pool, "bench", filepath.Join(dir, "state"), bo, o.reqBufs)
	if err != nil {
		drop()
		return nil, err
	}
	ft := fioTarget{o: o, engine: fioDeviceEngine(dev.path), serve: servedByUs, lat: observeLatency(o, dev)}
	return &target{
		Name: name, Backend: "local", run: ft.run, fill: ft.fill,
		close: func() error { err := dev.close(ctx); drop(); return err },
	}, nil
}

func fioDeviceEngine(dev string) []string {
	return []string{"--filename=" + dev, "--ioengine=libaio", "--direct=1"}
}

// servedDevice is one of our devices attached as a loop device.
type servedDevice struct {
	path  string
	dev   *blockdev.Device
	close func(ctx context.Context) error
}

// serveDevice opens image name as our device and attaches it (loop over
// FUSE, served by this process).
func serveDevice(ctx context.Context, pool objstore.Pool, name, stateDir string, bo blockdev.Options, bufs *fuseloop.RequestBuffers) (*servedDevice, error) {
	d, err := blockdev.Open(ctx, pool, name, bo)
	if err != nil {
		return nil, err
	}
	dev, err := fuseloop.Attach(ctx, d, fuseloop.Options{StateDir: stateDir, Name: name, Buffers: bufs})
	if err != nil {
		cctx, cancel := cleanupCtx(ctx)
		defer cancel()
		d.Close(cctx)
		return nil, err
	}
	return &servedDevice{
		path: dev.Path(),
		dev:  d,
		close: func(ctx context.Context) error {
			cctx, cancel := cleanupCtx(ctx)
			defer cancel()
			return errors.Join(dev.Close(cctx), d.Close(cctx))
		},
	}, nil
}

func plainLoop(o options) (*target, error) {
	dir, err := scratchDir(o, "plain")
	if err != nil {
		return nil, err
	}
	file := filepath.Join(dir, "plain.img")
	f, err := os.Create(file)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	err = f.Truncate(o.span)
	f.Close()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	out, err := exec.Command("losetup", "--find", "--show", "--direct-io=on", file).Output()
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("losetup: %w", err)
	}
	dev := strings.TrimSpace(string(out))
	ft := fioTarget{o: o, engine: fioDeviceEngine(dev), serve: servedByKernel}
	return &target{
		Name: plainLoopName, Backend: "-", run: ft.run, fill: ft.fill,
		close: func() error {
			err := exec.Command("losetup", "-d", dev).Run()
			os.RemoveAll(dir)
			return err
		},
	}, nil
}
