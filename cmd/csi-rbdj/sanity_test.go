package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-rbdj/csi-rbdj/pkg/kerneltest"
)

// TestStandaloneCSISanity builds the csi-rbdj binary, starts it by hand
// (`serve --mode all --backend local`) and runs the standalone csi-sanity
// command against its socket, for the mount and the block access types,
// through hack/csi-sanity.sh.
func TestStandaloneCSISanity(t *testing.T) {
	kerneltest.RequireRoot(t)
	if testing.Short() {
		t.Skip("builds csi-sanity and the driver binary")
	}
	runCSISanity(t, nil)
}

// runCSISanity builds the csi-rbdj binary (with the build tags), runs
// hack/csi-sanity.sh against it with env added to the environment and
// wants both csi-sanity runs (mount, block) to succeed; it returns the
// script's output.
func runCSISanity(t *testing.T, tags []string, env ...string) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "csi-rbdj")
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build csi-rbdj: %v", err)
	}
	args := []string{"build"}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	build := exec.Command(goBin, append(args, "-o", bin, "./cmd/csi-rbdj")...)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(filepath.Join(root, "hack", "csi-sanity.sh"), bin)
	cmd.Dir = root
	cmd.Env = append(append(os.Environ(), "PATH="+filepath.Dir(goBin)+":"+os.Getenv("PATH")), env...)
	out, err := cmd.CombinedOutput()
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		t.Log(line)
	}
	if err != nil {
		t.Fatalf("hack/csi-sanity.sh: %v", err)
	}
	if n := strings.Count(string(out), "SUCCESS!"); n != 2 {
		t.Fatalf("want 2 successful csi-sanity runs (mount, block), got %d", n)
	}
	return string(out)
}
