package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The shared test cluster of hack/ceph-up.sh's defaults, which other work
// on this machine uses: the bench never starts its own cluster there.
const (
	sharedCephDir  = "/var/tmp/csi-rbdj-ceph"
	sharedCephPort = 13300
)

// cephCluster is the cluster of the Ceph rows: the bench's own (managed:
// started afresh with hack/ceph-up.sh in its own directory and port, wiped
// with hack/ceph-down.sh at the end) or an external one given by -ceph-conf
// (used as it is).
type cephCluster struct {
	managed bool
	dir     string
	port    int
	scripts string
	conf    string
	starts  int
}

func newCephCluster(o options) (*cephCluster, error) {
	if o.cephConf != "" {
		return &cephCluster{conf: o.cephConf}, nil
	}
	if err := checkOwnCluster(o.cephDir, o.cephPort); err != nil {
		return nil, err
	}
	scripts, err := findScripts(o.scripts)
	if err != nil {
		return nil, err
	}
	return &cephCluster{managed: true, dir: abs(o.cephDir), port: o.cephPort, scripts: scripts}, nil
}

// checkOwnCluster refuses a directory or port of the shared test cluster:
// starting afresh wipes the directory and kills the daemons recorded in it.
func checkOwnCluster(dir string, port int) error {
	if dir == "" {
		return fmt.Errorf("-ceph-dir is empty")
	}
	if filepath.Clean(abs(dir)) == sharedCephDir {
		return fmt.Errorf("-ceph-dir %s is the shared test cluster's: the bench wipes its cluster, give it a directory of its own", dir)
	}
	if port <= 0 || port >= 65535 {
		return fmt.Errorf("-ceph-port %d out of range", port)
	}
	// msgr2 on port, msgr1 on port+1, for both clusters.
	if port >= sharedCephPort-1 && port <= sharedCephPort+1 {
		return fmt.Errorf("-ceph-port %d collides with the shared test cluster's mon (%d, %d)", port, sharedCephPort, sharedCephPort+1)
	}
	return nil
}

func findScripts(dir string) (string, error) {
	cands := []string{dir}
	if dir == "" {
		cands = []string{"hack"}
		if exe, err := os.Executable(); err == nil {
			cands = append(cands, filepath.Join(filepath.Dir(exe), "..", "hack"))
		}
	}
	for _, d := range cands {
		if _, err := os.Stat(filepath.Join(d, "ceph-up.sh")); err == nil {
			return abs(d), nil
		}
	}
	return "", fmt.Errorf("ceph-up.sh not found in %s (run from the repository or pass -ceph-scripts)", strings.Join(cands, ", "))
}

func (c *cephCluster) env() []string {
	return append(os.Environ(), "CEPH_DIR="+c.dir, "CEPH_MON_PORT="+strconv.Itoa(c.port))
}

// fresh starts the bench's cluster anew (any previous one is stopped and
// wiped by ceph-up.sh). For an external cluster it does nothing.
func (c *cephCluster) fresh(ctx context.Context) error {
	if !c.managed {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, filepath.Join(c.scripts, "ceph-up.sh"))
	cmd.Env = append(c.env(), "CEPH_FRESH=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("starting the bench's cluster in %s: %w: %s", c.dir, err, lastLine(stderr.Bytes()))
	}
	c.conf = lastLine(out)
	c.starts++
	fmt.Fprintf(os.Stderr, "blockdev-bench: fresh Ceph cluster in %s (mon port %d) in %s\n", c.dir, c.port, time.Since(start).Round(100*time.Millisecond))
	return nil
}

// down stops and wipes the bench's cluster (never an external one).
func (c *cephCluster) down() {
	if c == nil || !c.managed {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.scripts, "ceph-down.sh"), "--wipe")
	cmd.Env = c.env()
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "blockdev-bench: wiping the bench's cluster in %s: %v: %s\n", c.dir, err, lastLine(out))
	}
}

// confValue returns the first "key = value" of a ceph.conf, "" if absent.
func confValue(path, key string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if ok && strings.ReplaceAll(strings.TrimSpace(k), "_", " ") == strings.ReplaceAll(key, "_", " ") {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// describe says which cluster the Ceph rows ran on (after the run).
func (c *cephCluster) describe() string {
	if !c.managed {
		return "external cluster " + c.conf + " (used as it is, not fresh)"
	}
	return fmt.Sprintf("the bench's own single-node cluster (hack/ceph-up.sh, one memstore OSD) in %s, mon port %d, started afresh %d times", c.dir, c.port, c.starts)
}
