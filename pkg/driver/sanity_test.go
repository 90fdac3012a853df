package driver_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/driver"
	"github.com/csi-rbdj/csi-rbdj/pkg/fsprobe"
	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
	"github.com/csi-rbdj/csi-rbdj/pkg/nodeserver"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
	"github.com/csi-rbdj/csi-rbdj/pkg/testproc"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
)

// TestSanity runs csi-test's sanity suite against the driver in mode all,
// served on a unix socket, with real staging (journaled device, FUSE, loop
// device, mkfs, mounts): once with the mount access type, once with block.
// Each run is a child process (Ginkgo runs one suite per process).
func TestSanity(t *testing.T) {
	kerneltest.RequireRoot(t)
	runSanityChildren(t, "TestSanityChild")
}

// runSanityChildren runs test child once per access type (mount, block),
// each in a child process, and logs the summary and the skipped specs.
func runSanityChildren(t *testing.T, child string, env ...string) {
	for _, at := range []string{"mount", "block"} {
		t.Run(at, func(t *testing.T) {
			report := filepath.Join(t.TempDir(), "report.json")
			cmd := exec.Command(os.Args[0], "-test.run=^"+child+"$", "-test.v", "-ginkgo.no-color", "-ginkgo.json-report="+report)
			cmd.Env = append(append(os.Environ(), "CSI_RBDJ_SANITY_ACCESS_TYPE="+at), env...)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stderr = cmd.Stdout
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cmd.Process.Kill() })
			summary := regexp.MustCompile(`^Ran \d+ of \d+ Specs|Passed \| \d+ Failed|SUCCESS!|FAIL!`)
			sc := bufio.NewScanner(out)
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			var tail []string
			for sc.Scan() {
				line := sc.Text()
				tail = append(tail, line)
				if len(tail) > 400 {
					tail = tail[1:]
				}
				if summary.MatchString(line) || strings.Contains(line, "[FAIL]") {
					t.Log(line)
				}
			}
			if err := cmd.Wait(); err != nil {
				t.Errorf("sanity (%s): %v\n%s", at, err, strings.Join(tail, "\n"))
			}
			logSkipped(t, report)
		})
	}
}

// logSkipped logs the specs a ginkgo JSON report did not run, grouped by
// the reason.
func logSkipped(t *testing.T, report string) {
	b, err := os.ReadFile(report)
	if err != nil {
		t.Errorf("ginkgo report: %v", err)
		return
	}
	var reports []struct {
		SpecReports []struct {
			ContainerHierarchyTexts []string
			LeafNodeText            string
			State                   string
			Failure                 struct{ Message string }
		}
	}
	if err := json.Unmarshal(b, &reports); err != nil {
		t.Errorf("ginkgo report: %v", err)
		return
	}
	byReason := map[string][]string{}
	for _, r := range reports {
		for _, s := range r.SpecReports {
			if s.State == "passed" || s.LeafNodeText == "" {
				continue
			}
			reason := s.State
			if s.Failure.Message != "" {
				reason += ": " + s.Failure.Message
			}
			byReason[reason] = append(byReason[reason], strings.Join(append(s.ContainerHierarchyTexts, s.LeafNodeText), " "))
		}
	}
	reasons := make([]string, 0, len(byReason))
	for r := range byReason {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		t.Logf("not run (%s): %d specs: %s", r, len(byReason[r]), strings.Join(byReason[r], "; "))
	}
}

// TestSanityChild is the child process of TestSanity.
func TestSanityChild(t *testing.T) {
	at := testproc.ChildEnv(t, "CSI_RBDJ_SANITY_ACCESS_TYPE", "child process of TestSanity")
	dir := t.TempDir()
	b, err := storage.OpenLocal(storage.LocalOptions{Dir: filepath.Join(dir, "cluster"), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	cfg := sanityConfig(t, dir, b, at)
	cfg.TestVolumeParameters = map[string]string{volume.ParamAckPolicy: "journaled", volume.ParamJournalSplayWidth: "2"}
	if at == "block" {
		cfg.TestVolumeParameters[volume.ParamAckPolicy] = "applied"
	}
	sanity.Test(t, cfg)
}

// sanityConfig serves a driver in mode all on b (closed at the end) in dir
// and returns a sanity configuration for it: access type at, paths in dir.
func sanityConfig(t *testing.T, dir string, b storage.Backend, at string) sanity.TestConfig {
	sock := filepath.Join(dir, "csi.sock")
	stateDir := filepath.Join(dir, "node")
	ns, err := nodeserver.New(nodeserver.Options{NodeID: "sanity-node", StateDir: stateDir, Backend: b, RequestTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	d, err := driver.New(driver.Options{Mode: driver.ModeAll, Backend: b, NodeServer: ns})
	if err != nil {
		t.Fatal(err)
	}
	l, err := driver.Listen("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	l = &slowFirstAccept{Listener: l}
	ctx, cancel := context.WithCancel(context.Background())
	ns.Start(ctx)
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		<-done
		sctx, scancel := context.WithTimeout(context.Background(), time.Minute)
		defer scancel()
		ns.Stop(sctx)
		b.Close()
		cleanupNode(t, dir, stateDir)
	})

	cfg := sanity.NewTestConfig()
	cfg.Address = sock
	cfg.TargetPath = filepath.Join(dir, "target")
	cfg.StagingPath = filepath.Join(dir, "staging")
	cfg.TestVolumeAccessType = at
	cfg.TestVolumeSize = 64 << 20
	cfg.TestVolumeExpandSize = 128 << 20
	return cfg
}

// slowFirstAccept delays the first connection by 200 ms. csi-test's
// utils.Connect dials and then waits for the connection state to change
// from what it reads right after the dial; a server in the same process
// can make the connection ready before that read, and the wait then times
// out after a minute ("Connection timed out" in the first spec's
// BeforeEach). A connection still being set up when the state is read
// cannot be missed.
type slowFirstAccept struct {
	net.Listener
	once sync.Once
}

func (l *slowFirstAccept) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	l.once.Do(func() { time.Sleep(200 * time.Millisecond) })
	return c, err
}

// cleanupNode removes whatever a failed run left under dir: mounts
// (deepest first) and the devices' FUSE mounts and loop devices.
func cleanupNode(t *testing.T, dir, stateDir string) {
	t.Helper()
	for _, m := range reverse(fsprobe.MountsUnder(dir)) {
		if !strings.Contains(m, "/fuse/") {
			t.Logf("cleanup: unmounting leftover %s", m)
			_ = exec.Command("umount", "-l", m).Run()
		}
	}
	ents, _ := os.ReadDir(filepath.Join(stateDir, "fuse"))
	for _, e := range ents {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := fuseloopCleanup(ctx, filepath.Join(stateDir, "fuse"), e.Name()); err != nil {
			t.Logf("cleanup %s: %v", e.Name(), err)
		}
		cancel()
	}
	if left := fsprobe.MountsUnder(dir); len(left) > 0 {
		t.Errorf("mounts left under %s: %v", dir, left)
	}
}

func reverse(s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}

// loopsUnder lists loop devices whose backing file is under dir.
func loopsUnder(dir string) []string {
	ms, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []string
	for _, m := range ms {
		b, err := os.ReadFile(m)
		if err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), dir+"/") {
			out = append(out, m)
		}
	}
	return out
}
