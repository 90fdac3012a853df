//go:build ceph && pacific

package driver_test

// What the Ceph tests of the driver share: the test cluster of
// hack/ceph-up.sh (pkg/objstore/ceph/cephtest), a --ceph-config file naming
// it, cephx users with the capabilities a real deployment gives the driver,
// and the rbd CLI.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

// cephTestCluster is the clusterID of the test cluster in the config file.
const cephTestCluster = "ceph-test"

// The cephx users of the tests: rw is what a deployment gives the
// provisioner and node secrets (profile rbd: images, journals, locks and
// blocklisting of dead lock owners), ro has read-only capabilities (enough
// for ListVolumes, GetCapacity and Probe).
const (
	cephUserRW = "csi-rbdj-rw"
	cephUserRO = "csi-rbdj-ro"
)

// cephFixture is the test cluster as the driver sees it.
type cephFixture struct {
	conf       string // the cluster's ceph.conf (client.admin's keyring)
	configFile string // --ceph-config naming it as cephTestCluster
	rw, ro     storage.Credentials
}

var (
	usersOnce sync.Once
	users     map[string]string
	usersErr  error
)

// newCephFixture connects to the test cluster (skipping without one) and
// writes a --ceph-config file for it.
func newCephFixture(t *testing.T) *cephFixture {
	t.Helper()
	f := &cephFixture{conf: cephtest.Conf(t)}
	usersOnce.Do(func() {
		users = map[string]string{}
		for user, osdCap := range map[string]string{cephUserRW: "profile rbd", cephUserRO: "profile rbd-read-only"} {
			out, err := cephCLI(context.Background(), f.conf, "ceph", "auth", "get-or-create-key", "client."+user, "mon", "profile rbd", "osd", osdCap)
			if err != nil {
				usersErr = fmt.Errorf("create client.%s: %v: %s", user, err, out)
				return
			}
			users[user] = strings.TrimSpace(out)
		}
	})
	if usersErr != nil {
		t.Fatal(usersErr)
	}
	f.rw = storage.Credentials{User: cephUserRW, Key: users[cephUserRW]}
	f.ro = storage.Credentials{User: cephUserRO, Key: users[cephUserRO]}
	f.configFile = writeCephConfig(t, map[string][]string{cephTestCluster: {cephtest.MonHost(t)}})
	return f
}

// writeCephConfig writes a --ceph-config file (clusters in name order).
func writeCephConfig(t *testing.T, clusters map[string][]string) string {
	t.Helper()
	var entries []string
	for _, id := range slices.Sorted(maps.Keys(clusters)) {
		var mons []string
		for _, m := range clusters[id] {
			mons = append(mons, fmt.Sprintf("%q", m))
		}
		entries = append(entries, fmt.Sprintf(`{"clusterID": %q, "monitors": [%s]}`, id, strings.Join(mons, ", ")))
	}
	p := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(p, []byte("["+strings.Join(entries, ",\n ")+"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// secrets are a request's CSI secrets for c.
func secrets(c storage.Credentials) map[string]string {
	return map[string]string{storage.SecretUserID: c.User, storage.SecretUserKey: c.Key}
}

// credentialsDir writes c as a mounted Secret would appear.
func credentialsDir(t *testing.T, c storage.Credentials) string {
	t.Helper()
	dir := t.TempDir()
	for name, v := range secrets(c) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// openCeph opens the ceph backend on configFile (closed by whoever serves
// it) with default credentials from credsDir ("": none).
func openCeph(t testing.TB, configFile, credsDir string) storage.Backend {
	t.Helper()
	b, err := storage.OpenCeph(storage.CephOptions{ConfigFile: configFile, CredentialsDir: credsDir,
		ConnectTimeout: 5 * time.Second, OpTimeout: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// mirrorer opens pool of the test cluster through b as the read-write
// user, with the storage's Mirrorer.
func (f *cephFixture) mirrorer(t *testing.T, b storage.Backend, pool string) (storage.Mirrorer, objstore.Pool) {
	t.Helper()
	ctx := context.Background()
	st, err := b.Storage(ctx, cephTestCluster, secrets(f.rw))
	if err != nil {
		t.Fatal(err)
	}
	m, err := storage.MirrorerOf(st)
	if err != nil {
		t.Fatal(err)
	}
	p, err := st.Pool(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	return m, p
}

// servedPool is the driver served on the test cluster (servePool).
type servedPool struct {
	ctrl   csi.ControllerClient
	node   csi.NodeClient
	sec    map[string]string // the read-write user's secrets
	params map[string]string // StorageClass parameters naming the test pool
	pool   func(context.Context) (objstore.Pool, error)
}

// servePool serves the driver in dir on the test cluster (the read-only
// user as default credentials) and opens the test pool as the read-write
// user would.
func (f *cephFixture) servePool(t *testing.T, dir string) servedPool {
	t.Helper()
	b := openCeph(t, f.configFile, credentialsDir(t, f.ro))
	ctrl, node, _ := serveDriver(t, dir, b)
	sec := secrets(f.rw)
	return servedPool{ctrl: ctrl, node: node, sec: sec, params: cephPoolParams(),
		pool: func(ctx context.Context) (objstore.Pool, error) {
			st, err := b.Storage(ctx, cephTestCluster, sec)
			if err != nil {
				return nil, err
			}
			return st.Pool(ctx, cephtest.PoolName)
		}}
}

// cephPoolParams are StorageClass parameters naming the test pool.
func cephPoolParams() map[string]string {
	return map[string]string{volume.ParamClusterID: cephTestCluster, volume.ParamPool: cephtest.PoolName}
}

// cephCLI runs a Ceph command-line tool (ceph, rbd, ceph-authtool) on the
// test cluster and returns its combined output.
func cephCLI(ctx context.Context, conf, tool string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool, append([]string{"-c", conf}, args...)...)
	// Each CLI run would otherwise try to bind the same admin socket.
	cmd.Env = append(os.Environ(), "CEPH_ARGS=--admin-socket=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

var inspectSummary = regexp.MustCompile(`(\d+) entries inspected, (\d+) errors`)

// journalInspect runs `rbd journal inspect --verbose` on image name and
// returns the counts of its summary line.
func (f *cephFixture) journalInspect(t *testing.T, name string) (entries, errs int, out string) {
	t.Helper()
	out = f.rbd(t, "journal", "inspect", "--verbose", "--pool", cephtest.PoolName, "--image", name)
	m := inspectSummary.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("rbd journal inspect printed no summary:\n%s", out)
	}
	entries, _ = strconv.Atoi(m[1])
	errs, _ = strconv.Atoi(m[2])
	return entries, errs, out
}

// rbd runs the rbd CLI and fails t on error.
func (f *cephFixture) rbd(t *testing.T, args ...string) string {
	t.Helper()
	out, err := cephCLI(context.Background(), f.conf, "rbd", args...)
	if err != nil {
		t.Fatalf("rbd %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// createImage creates pool rbd's image name with the rbd CLI (librbd), with
// features (e.g. "layering,exclusive-lock,journaling"), and removes it at
// the end of the test.
func (f *cephFixture) createImage(t *testing.T, name, features string, sizeMiB int) {
	t.Helper()
	f.rbd(t, "create", "--size", fmt.Sprintf("%dM", sizeMiB), "--image-feature", features, cephtest.PoolName+"/"+name)
	t.Cleanup(func() { f.removeImage(t, name) })
}

// removeImage removes an image, retrying while a crashed client's watch
// keeps it busy (the OSD drops such a watch after 30 s).
func (f *cephFixture) removeImage(t *testing.T, name string) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		out, err := cephCLI(context.Background(), f.conf, "rbd", "rm", "--no-progress", cephtest.PoolName+"/"+name)
		if err == nil || strings.Contains(out, "No such file") || strings.Contains(out, "does not exist") {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("remove image %s: %v\n%s", name, err, out)
			return
		}
		time.Sleep(time.Second)
	}
}

// uniqueName is an image name no other test run uses.
func uniqueName(prefix string) string {
	return fmt.Sprintf("%s-%x", prefix, time.Now().UnixNano())
}

// staticVolumeID is the volume id of a pre-provisioned image of the test
// cluster's pool rbd (what an administrator puts into a static PV's
// volumeHandle).
func staticVolumeID(name string) string {
	return volume.VolumeID{Backend: storage.BackendCeph, Cluster: cephTestCluster, Pool: cephtest.PoolName, Image: name}.String()
}

// wrongKey is a well-formed cephx key that no user has.
func wrongKey(t *testing.T) string {
	t.Helper()
	// CryptoKey: u16 type (1: AES), utime created (u32 sec, u32 nsec),
	// u16 length, secret.
	b := make([]byte, 12+16)
	binary.LittleEndian.PutUint16(b, 1)
	binary.LittleEndian.PutUint32(b[2:], uint32(time.Now().Unix()))
	binary.LittleEndian.PutUint16(b[10:], 16)
	if _, err := rand.Read(b[12:]); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}
