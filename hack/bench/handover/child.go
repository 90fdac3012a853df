package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/atomicfile"
	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop"
	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
	"github.com/csi-rbdj/csi-rbdj/pkg/fuseholder"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// childEnv carries the serving child's configuration (JSON) from the
// parent; its presence makes this binary the serving child.
const childEnv = "CSI_RBDJ_HANDOVER_BENCH_CHILD"

// childConfig is what a serving child needs: where the image is, where
// the holder listens, where the node plugin would keep its state.
type childConfig struct {
	Backend   string `json:"backend"` // local or ceph
	LocalDir  string `json:"localDir,omitempty"`
	CephConf  string `json:"cephConf,omitempty"`
	Pool      string `json:"pool"`
	Image     string `json:"image"`
	StateDir  string `json:"stateDir"`
	Socket    string `json:"socket"`
	OwnerFile string `json:"ownerFile"`
	AckPolicy string `json:"ackPolicy"`
}

// backendConn is an open cluster: the pool the image is in and the
// fencer that blocklists a dead lock holder.
type backendConn struct {
	pool   objstore.Pool
	fencer exclusivelock.Fencer
	close  func()
}

// cluster is what the backends' clusters (objstore/local, objstore/ceph)
// give the benchmark.
type cluster interface {
	exclusivelock.Fencer
	Pool(ctx context.Context, name string) (objstore.Pool, error)
	Close() error
}

// poolConn opens pool name of c as a backendConn; c is closed if that
// fails, and by the backendConn's close.
func poolConn(ctx context.Context, c cluster, name string) (*backendConn, error) {
	p, err := c.Pool(ctx, name)
	if err != nil {
		c.Close()
		return nil, err
	}
	return &backendConn{pool: p, fencer: c, close: func() { c.Close() }}, nil
}

// The serving child's exit codes (the parent names them in its errors).
const (
	exitOK = iota
	exitConfig
	exitOpen
	exitServe
	exitStopped
	exitHandoff
)

// childMain is one incarnation of the node plugin for one volume, as the
// plugin does it at start (pkg/nodeserver): connect to the cluster, open
// the journaled device (lock takeover, fencing the dead predecessor it
// recorded as owner, journal replay), then adopt the connection the holder
// kept (NOTIFY_RESEND) — or, the first time, attach and give it to the
// holder. It prints one line
//
//	READY <loop device> <adopted> <main start unix ns> <connect ns> <open ns> <adopt ns> <replayed entries> <replay ns>
//
// and serves until SIGTERM (planned stop: Handoff, drain and commit the
// journal, release the lock; prints "STOPPED <handoff ns> <close ns>"),
// SIGINT (the end of the benchmark: detach and unmount for good) or SIGKILL.
func childMain(raw string) int {
	mainStart := time.Now()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	var cfg childConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "child: config: %v\n", err)
		return exitConfig
	}
	policy, err := blockdev.ParseAckPolicy(cfg.AckPolicy)
	if err != nil {
		fmt.Fprintf(os.Stderr, "child: %v\n", err)
		return exitConfig
	}
	ctx := context.Background()
	octx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	conn, err := connectBackend(octx, cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "child: connect: %v\n", err)
		return exitOpen
	}
	defer conn.close()
	connected := time.Now()
	// The previous incarnation's lock owner address, as the node plugin
	// records it in its staging record: its lock is broken at once.
	var dead []string
	if b, err := os.ReadFile(cfg.OwnerFile); err == nil && len(b) > 0 {
		dead = append(dead, strings.TrimSpace(string(b)))
	}
	d, err := blockdev.Open(octx, conn.pool, cfg.Image, blockdev.Options{AckPolicy: policy, Fencer: conn.fencer, DeadOwners: dead})
	if err != nil {
		fmt.Fprintf(os.Stderr, "child: open: %v\n", err)
		return exitOpen
	}
	opened := time.Now()
	if err := atomicfile.Write(cfg.OwnerFile, []byte(d.Owner().Addr), atomicfile.Options{Perm: 0o644}); err != nil {
		fmt.Fprintf(os.Stderr, "child: record owner: %v\n", err)
		_ = d.Close(ctx)
		return exitOpen
	}
	dev, adopted, err := fuseloop.AdoptOrAttach(octx, fuseholder.NewClient(cfg.Socket), d,
		fuseloop.Options{StateDir: cfg.StateDir, Name: cfg.Image, RequestTimeout: 60 * time.Second}, true)
	if err != nil {
		fmt.Fprintf(os.Stderr, "child: adopt or attach: %v\n", err)
		_ = d.Close(ctx)
		return exitServe
	}
	ready := time.Now()
	fmt.Printf("READY %s %v %d %d %d %d %d %d\n", dev.Path(), adopted, mainStart.UnixNano(),
		connected.Sub(mainStart), opened.Sub(connected), ready.Sub(opened), d.ReplayStats().Entries, d.Stats().ReplayDuration)
	var s os.Signal
	select {
	case <-dev.Done():
		fmt.Fprintf(os.Stderr, "child: device stopped: %v\n", dev.Err())
		return exitStopped
	case s = <-sig:
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if s == syscall.SIGINT {
		// The end: the parent dropped the connection from the holder.
		err := errors.Join(dev.Close(sctx), d.Close(sctx))
		if err != nil {
			fmt.Fprintf(os.Stderr, "child: close: %v\n", err)
			return exitHandoff
		}
		return exitOK
	}
	t := time.Now()
	if err := dev.Handoff(sctx); err != nil {
		fmt.Fprintf(os.Stderr, "child: handoff: %v\n", err)
		return exitHandoff
	}
	handedOff := time.Now()
	if err := d.Close(sctx); err != nil {
		fmt.Fprintf(os.Stderr, "child: close the journaled device: %v\n", err)
		return exitHandoff
	}
	fmt.Printf("STOPPED %d %d\n", handedOff.Sub(t), time.Since(handedOff))
	return exitOK
}
