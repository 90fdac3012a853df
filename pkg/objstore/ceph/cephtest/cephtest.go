//go:build ceph && pacific

// Package cephtest gives tests a real Ceph cluster: it starts the project's
// single-node cluster (hack/ceph-up.sh: installs Ceph if missing, reuses a
// running cluster) once per test binary and connects clients to it.
//
// Without a cluster (Ceph cannot be installed or started) tests skip with
// the reason, unless CSI_RBDJ_REQUIRE_CEPH=1 (set by `make test`), which
// makes them fail instead. CSI_RBDJ_CEPH_CONF=/path/ceph.conf uses that
// cluster instead of starting one (its keyring must hold client.admin).
package cephtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph"
)

// PoolName is the pool hack/ceph-up.sh creates and rbd-initialises.
const PoolName = "rbd"

var (
	once    sync.Once
	conf    string
	confErr error
)

// Setup starts (or finds) the cluster and returns its ceph.conf. It runs
// hack/ceph-up.sh once per process; later calls return the first result.
func Setup() (string, error) {
	once.Do(func() { conf, confErr = setup() })
	return conf, confErr
}

func setup() (string, error) {
	if c := os.Getenv("CSI_RBDJ_CEPH_CONF"); c != "" {
		if _, err := os.Stat(c); err != nil {
			return "", fmt.Errorf("CSI_RBDJ_CEPH_CONF: %w", err)
		}
		return c, nil
	}
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute) // includes installing Ceph
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(root, "hack", "ceph-up.sh"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("hack/ceph-up.sh: %w\n%s", err, lastLines(stderr.String(), 15))
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	c := strings.TrimSpace(lines[len(lines)-1])
	if _, err := os.Stat(c); err != nil {
		return "", fmt.Errorf("hack/ceph-up.sh printed %q, not a config file: %w", c, err)
	}
	return c, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// repoRoot finds the module root (the directory holding go.mod) above the
// working directory, which `go test` sets to the package's.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cephtest: no go.mod above the working directory")
		}
		dir = parent
	}
}

// Main is a TestMain: it sets the cluster up before the tests run (so that
// its start-up time is not charged to the first test) and runs them.
func Main(m *testing.M) {
	if _, err := Setup(); err != nil {
		fmt.Fprintf(os.Stderr, "cephtest: no Ceph cluster: %v\n", err)
	}
	os.Exit(m.Run())
}

// Required reports whether a missing cluster fails tests instead of
// skipping them.
func Required() bool { return os.Getenv("CSI_RBDJ_REQUIRE_CEPH") == "1" }

// Conf returns the cluster's ceph.conf, or skips t (fails it if Required)
// when there is no cluster.
func Conf(t testing.TB) string {
	t.Helper()
	c, err := Setup()
	if err != nil {
		if Required() {
			t.Fatalf("no Ceph cluster (CSI_RBDJ_REQUIRE_CEPH=1): %v", err)
		}
		t.Skipf("no Ceph cluster (install Ceph or run hack/ceph-up.sh): %v", err)
	}
	return c
}

// Config returns a client configuration for the cluster (the config
// file's keyring: client.admin).
func Config(t testing.TB) ceph.Config {
	return ceph.Config{ConfigFile: Conf(t), ConnectTimeout: 20 * time.Second, OpTimeout: 60 * time.Second}
}

// Connect opens a new client instance, closed when t ends.
func Connect(t testing.TB) *ceph.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := ceph.Connect(ctx, Config(t))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close ceph client: %v", err)
		}
	})
	return c
}

// Pool opens PoolName on a new client instance.
func Pool(t testing.TB) *ceph.Pool {
	t.Helper()
	return PoolOf(t, Connect(t))
}

// PoolOf opens PoolName on c.
func PoolOf(t testing.TB, c *ceph.Cluster) *ceph.Pool {
	t.Helper()
	p, err := c.OpenPool(context.Background(), PoolName)
	if err != nil {
		t.Fatalf("open pool %s: %v", PoolName, err)
	}
	return p
}

// OpenUncached opens image name in PoolName with librbd, on a new client
// whose cache is off (rbd_cache=false): in writeback mode librbd would ack a
// write before its journal entry is safe, so a process that crashes right
// after its writes could lose entries. It is for the librbd writer children
// of the crash-replay tests, which exit without closing the image or the
// client (the crash under test).
func OpenUncached(t testing.TB, name string) (*rbd.Image, *ceph.Pool) {
	t.Helper()
	cfg := Config(t)
	cfg.Options = map[string]string{"rbd_cache": "false"}
	c, err := ceph.Connect(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	pool := PoolOf(t, c)
	img, err := rbd.OpenImage(pool.IOContext(), name, rbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	return img, pool
}

// AdminKey returns client.admin's key (hack/ceph-up.sh writes it next to
// the config file).
func AdminKey(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(filepath.Dir(Conf(t)), "client.admin.key"))
	if err != nil {
		t.Fatalf("admin key: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// MonHost returns the mon_host line of the config file.
func MonHost(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(Conf(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && strings.TrimSpace(k) == "mon_host" {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no mon_host in %s", Conf(t))
	return ""
}
