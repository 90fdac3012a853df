// Command csi-rbdj is the csi-rbdj CSI driver: Kubernetes volumes on Ceph RBD
// images whose writes are journaled in userspace by the node plugin.
//
//	csi-rbdj serve --endpoint unix:///run/csi-rbdj/csi.sock --mode all --backend local --local-dir DIR
//	csi-rbdj demo
//	csi-rbdj version
//
// See README.md for every flag.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
	"github.com/csi-rbdj/csi-rbdj/pkg/csiaddons"
	"github.com/csi-rbdj/csi-rbdj/pkg/driver"
	"github.com/csi-rbdj/csi-rbdj/pkg/kubeletreg"
	"github.com/csi-rbdj/csi-rbdj/pkg/memlimit"
	"github.com/csi-rbdj/csi-rbdj/pkg/nodeserver"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"k8s.io/klog/v2"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func usage() {
	fmt.Fprintf(os.Stderr, `csi-rbdj %s: CSI driver for journaled Ceph RBD volumes

Usage:
  csi-rbdj serve [flags]   serve CSI (controller, node or both) on a unix socket
  csi-rbdj demo [flags]    run the driver's main job end to end on the local backend
  csi-rbdj node-cleanup --state-dir DIR
                           tear down what a dead node plugin left staged
                           (mounts, loop devices) without serving it again
  csi-rbdj journal changed-extents --volume ID --consumer NAME [--from TAG:ENTRY] [--to TAG:ENTRY]
                           list the extents a journalMode metadata volume changed
                           (also register-consumer, advance-consumer, unregister-consumer)
  csi-rbdj fuse-holder --socket PATH
                           hold the node plugin's FUSE connections across its
                           restarts (see pkg/fuseholder)
  csi-rbdj version         print the version

Run "csi-rbdj serve -h" or "csi-rbdj demo -h" for their flags.
`, version)
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serveMain(os.Args[2:])
	case "demo":
		err = demoMain(os.Args[2:])
	case "node-cleanup":
		err = nodeCleanupMain(os.Args[2:])
	case "journal":
		err = journalMain(os.Args[2:]) // journal.go
	case "fuse-holder":
		err = holderMain(os.Args[2:])
	case "version", "--version", "-version":
		backends := "local, ceph"
		if !storage.CephBuilt {
			backends = "local (built without Ceph support)"
		}
		fmt.Printf("csi-rbdj %s (driver %s; backends: %s)\n", version, driver.DefaultName, backends)
	case "help", "-h", "--help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "csi-rbdj: unknown command %q\n\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	flushLogs()
	if err != nil {
		fmt.Fprintf(os.Stderr, "csi-rbdj %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// serveConfig is what `serve` is configured with.
type serveConfig struct {
	endpoint       string
	mode           string
	nodeID         string
	backend        string
	localDir       string
	clusterID      string
	stateDir       string
	driverName     string
	requestTimeout time.Duration
	maxVolumes     int64
	noSync         bool
	kubeletRegDir  string
	kubeletRegPath string
	// csiAddonsEndpoint: the csi-addons socket (controller); "": off.
	csiAddonsEndpoint string

	cephConfig         string
	cephCredentialsDir string
	cephConnectTimeout time.Duration
	cephOpTimeout      time.Duration
	journalCommitAge   time.Duration

	metricsAddress   string
	holderSocket     string
	kubernetesEvents bool

	maxPendingBytes, maxDirtyBytes int64
	memoryLimit                    int64
	writeBackRing                  bool
}

func serveFlags(fs *flag.FlagSet, c *serveConfig) {
	host, _ := os.Hostname()
	fs.StringVar(&c.endpoint, "endpoint", "unix:///run/csi-rbdj/csi.sock", "CSI endpoint: unix:///path/to/csi.sock")
	fs.StringVar(&c.mode, "mode", "all", "services to serve: controller, node or all")
	fs.StringVar(&c.nodeID, "node-id", host, "node id reported by NodeGetInfo (node and all modes; default: the host name)")
	fs.StringVar(&c.backend, "backend", storage.BackendLocal, "storage backend: local (embedded, one machine) or ceph"+cephNote())
	fs.StringVar(&c.localDir, "local-dir", "/var/lib/csi-rbdj/cluster", "local backend: the cluster directory (created if missing)")
	fs.StringVar(&c.clusterID, "cluster-id", "default", "local backend: cluster id written into volume ids")
	fs.StringVar(&c.cephConfig, "ceph-config", "/etc/csi-rbdj/config/config.json", `ceph backend: the clusters, JSON [{"clusterID": "ceph-a", "monitors": ["10.0.0.1:6789"]}] (ceph-csi's config.json; re-read on every request)`)
	fs.StringVar(&c.cephCredentialsDir, "ceph-credentials-dir", "", "ceph backend: default credentials, files userID and userKey (a mounted Secret), used by requests without secrets (ListVolumes, GetCapacity, Probe) and by a restarted node plugin re-serving staged volumes; empty: none")
	fs.DurationVar(&c.cephConnectTimeout, "ceph-connect-timeout", 10*time.Second, "ceph backend: how long to wait for a cluster's monitors")
	fs.DurationVar(&c.cephOpTimeout, "ceph-op-timeout", 30*time.Second, "ceph backend: bound of every OSD and monitor operation")
	fs.DurationVar(&c.journalCommitAge, "journal-commit-age", 0, "node: how long a moved journal commit position may stay in memory before it is written (librbd's rbd_journal_commit_age; 0: 1s); a crash replays at most that window")
	fs.StringVar(&c.stateDir, "state-dir", "/var/lib/csi-rbdj/node", "node: staging records and FUSE mount points; must survive plugin restarts")
	fs.StringVar(&c.driverName, "driver-name", driver.DefaultName, "CSI driver name (the StorageClass provisioner)")
	fs.DurationVar(&c.requestTimeout, "request-timeout", 90*time.Second, "node: a device I/O request running longer aborts the device's FUSE connection (no task hangs in D state)")
	fs.Int64Var(&c.maxVolumes, "max-volumes-per-node", 0, "node: max_volumes_per_node reported to the CO (0: no limit)")
	fs.BoolVar(&c.noSync, "local-no-sync", false, "local backend: skip fsync (tests only: loses data on power loss)")
	fs.StringVar(&c.kubeletRegDir, "kubelet-registration-dir", "", "node: register with the kubelet through a socket in this directory (<kubelet root>/plugins_registry); empty: do not register")
	fs.StringVar(&c.kubeletRegPath, "kubelet-registration-path", "", "node: the CSI socket path as the kubelet sees it (default: the --endpoint path)")
	fs.StringVar(&c.metricsAddress, "metrics-address", "", "serve Prometheus metrics at http://ADDR/metrics (host:port, e.g. :9810); empty: no metrics")
	fs.StringVar(&c.csiAddonsEndpoint, "csi-addons-endpoint", "", "controller: serve the csi-addons Identity and Replication services (VolumeReplication: rbd-mirror journal mirroring, Ceph only) on this socket, e.g. unix:///run/csi-rbdj/csi-addons.sock; empty: off")
	fs.BoolVar(&c.kubernetesEvents, "kubernetes-events", true, "node: record Kubernetes events on PersistentVolumes (a replicator disconnected by journalMaxConcurrentObjectSets) when running in a pod whose service account may create events; otherwise, or false, they are only logged")
	fs.StringVar(&c.holderSocket, "fuse-holder-socket", "", "node: unix socket of `csi-rbdj fuse-holder`, which keeps the volumes' FUSE connections across plugin restarts (pods see a pause, no I/O error); empty: no holder, a restart re-serves every volume on a new loop device")
	fs.Int64Var(&c.maxPendingBytes, "max-pending-bytes", blockdev.DefaultNodeMaxPendingBytes, "node: bound, shared by every volume the plugin serves, of the written bytes held in memory until applied to the image; writers wait beyond it (each volume also has its own 64 MiB bound)")
	fs.Int64Var(&c.maxDirtyBytes, "max-dirty-bytes", blockdev.DefaultNodeMaxDirtyBytes, "node: bound, shared by every volume served with ackPolicy writeback, of the bytes acknowledged but not yet durable in the journal (what a crash may lose after the last flush); writers wait beyond it (each volume also has its own 24 MiB bound)")
	fs.Int64Var(&c.memoryLimit, "memory-limit", 0, "Go soft memory limit in bytes (the garbage collector works harder near it): 0 derives it: GOMEMLIMIT if set, else 3/4 of the container's cgroup memory.max, else 512 MiB (what the node-wide bounds need with 50 volumes); negative: none")
	fs.BoolVar(&c.writeBackRing, "writeback-ring", true, "node, with --fuse-holder-socket: keep each writeback volume's acknowledged, not yet durable writes in a memfd the holder keeps too (up to about 26 MiB of shared memory per volume while writes are in flight), so that a kill -9 of the plugin loses none and the connection is handed over; false: such a crash aborts the connection (EIO in the pods)")
}

func serveMain(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	var c serveConfig
	serveFlags(fs, &c)
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if c.maxPendingBytes < 0 || c.maxDirtyBytes < 0 {
		return fmt.Errorf("--max-pending-bytes %d, --max-dirty-bytes %d: must be >= 0 (0: the default)", c.maxPendingBytes, c.maxDirtyBytes)
	}
	limit, src, err := memlimit.Apply(c.memoryLimit)
	if err != nil {
		return err
	}
	klog.Background().Info("Go soft memory limit", "bytes", limit, "source", src)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// Everything below logs through the logger of its context (klog's
	// flags configure it).
	return serve(klog.NewContext(ctx, klog.Background()), c)
}

// openBackend opens the configured backend.
func openBackend(ctx context.Context, c serveConfig) (storage.Backend, error) {
	switch c.backend {
	case storage.BackendLocal:
		b, err := storage.OpenLocal(storage.LocalOptions{Dir: c.localDir, ClusterID: c.clusterID, NoSync: c.noSync, Logger: klog.FromContext(ctx)})
		if err != nil {
			return nil, err
		}
		return b, nil
	case storage.BackendCeph:
		return storage.OpenCeph(storage.CephOptions{
			ConfigFile: c.cephConfig, CredentialsDir: c.cephCredentialsDir,
			ConnectTimeout: c.cephConnectTimeout, OpTimeout: c.cephOpTimeout,
			Logger: klog.FromContext(ctx),
		})
	}
	return nil, fmt.Errorf("unknown backend %q (want local or ceph)", c.backend)
}

// cephNote says whether this binary carries the ceph backend.
func cephNote() string {
	if storage.CephBuilt {
		return ""
	}
	return " (this binary was built without Ceph support)"
}

// serve runs the driver until ctx is done.
func serve(ctx context.Context, c serveConfig) error {
	mode, err := driver.ParseMode(c.mode)
	if err != nil {
		return err
	}
	// Bind the metrics address first: a taken port fails the start at once.
	pm, err := newPluginMetrics(c.metricsAddress)
	if err != nil {
		return err
	}
	defer pm.stop()
	st, err := openBackend(ctx, c)
	if err != nil {
		return err
	}
	defer st.Close()
	pm.start(ctx, st)

	var ns *nodeserver.Server
	if mode == driver.ModeNode || mode == driver.ModeAll {
		events, stopEvents := nodeEvents(ctx, c)
		defer stopEvents()
		ns, err = nodeserver.New(nodeserver.Options{
			NodeID: c.nodeID, StateDir: c.stateDir, Backend: st,
			RequestTimeout: c.requestTimeout, MaxVolumes: c.maxVolumes,
			JournalCommitAge: c.journalCommitAge, Metrics: pm.volumes(),
			HolderSocket: c.holderSocket, Events: events,
			MaxPendingBytes: c.maxPendingBytes, MaxDirtyBytes: c.maxDirtyBytes,
			NoWriteBackRing: !c.writeBackRing,
		})
		if err != nil {
			return err
		}
	}
	opts := driver.Options{Name: c.driverName, Version: version, Mode: mode, Backend: st, Interceptors: pm.interceptors()}
	if ns != nil {
		opts.NodeServer = ns
	}
	d, err := driver.New(opts)
	if err != nil {
		return err
	}
	l, err := driver.Listen(c.endpoint)
	if err != nil {
		return err
	}
	if ns != nil {
		ns.Start(ctx)
		defer func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			ns.Stop(sctx)
		}()
	}
	if c.csiAddonsEndpoint != "" {
		stopAddons, err := serveCSIAddons(ctx, c, mode, st)
		if err != nil {
			l.Close()
			return err
		}
		defer stopAddons()
	}
	if c.kubeletRegDir != "" {
		reg, err := listenKubeletRegistration(ctx, c)
		if err != nil {
			l.Close()
			return err
		}
		go func() { // ends when reg.Close runs (deferred below)
			if err := reg.Serve(); err != nil {
				klog.FromContext(ctx).Error(err, "Kubelet registration server failed")
			}
		}()
		// Runs before the node server stops: the kubelet deregisters the driver first.
		defer reg.Close()
	}
	err = d.Serve(ctx, l)
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	klog.FromContext(ctx).Info("Shutting down", "reason", context.Cause(ctx))
	return nil
}

// serveCSIAddons serves the csi-addons services on their socket until
// the returned stop is called.
func serveCSIAddons(ctx context.Context, c serveConfig, mode driver.Mode, b storage.Backend) (stop func(), err error) {
	if mode != driver.ModeController && mode != driver.ModeAll {
		return nil, fmt.Errorf("--csi-addons-endpoint needs --mode controller or all, not %q", c.mode)
	}
	srv, err := csiaddons.New(csiaddons.Options{Name: c.driverName, Version: version, Backend: b})
	if err != nil {
		return nil, err
	}
	l, err := driver.Listen(c.csiAddonsEndpoint)
	if err != nil {
		return nil, fmt.Errorf("csi-addons endpoint: %w", err)
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { // owned by stop, which ends and waits for it
		defer close(done)
		if err := srv.Serve(actx, l); err != nil {
			klog.FromContext(ctx).Error(err, "csi-addons server failed")
		}
	}()
	return func() { cancel(); <-done }, nil
}

// listenKubeletRegistration creates the kubelet plugin-registration socket
// that points the kubelet at the node plugin's CSI endpoint.
func listenKubeletRegistration(ctx context.Context, c serveConfig) (*kubeletreg.Server, error) {
	if c.mode != "node" && c.mode != "all" {
		return nil, fmt.Errorf("--kubelet-registration-dir needs --mode node or all, not %q", c.mode)
	}
	path := c.kubeletRegPath
	if path == "" {
		p, err := driver.ParseEndpoint(c.endpoint)
		if err != nil {
			return nil, err
		}
		path = p
	}
	return kubeletreg.Listen(kubeletreg.Options{DriverName: c.driverName, Endpoint: path, Dir: c.kubeletRegDir, Logger: klog.FromContext(ctx)})
}

// parseArgs adds klog's flags (-v, ...) to a subcommand's, parses args and
// rejects positional arguments: no subcommand takes any, and one is usually
// a flag whose value went astray (say "--fs xfs extra"), which would
// otherwise be ignored silently.
func parseArgs(fs *flag.FlagSet, args []string) error {
	klog.InitFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return nil
}

func nodeCleanupMain(args []string) error {
	fs := flag.NewFlagSet("node-cleanup", flag.ExitOnError)
	stateDir := fs.String("state-dir", "/var/lib/csi-rbdj/node", "the node plugin's --state-dir")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return nodeserver.CleanupState(ctx, *stateDir)
}
