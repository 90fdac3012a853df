package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestStandaloneCSISanity builds the csi-rbdj binary, starts it by hand
// (`serve --mode all --backend local`) and runs the standalone csi-sanity
// command against its socket, for the mount and the block access types,
// through hack/csi-sanity.sh.
func TestStandaloneCSISanity(t *testing.T) {
	requireRoot(t)
	if testing.Short() {
		t.Skip("builds csi-sanity and the driver binary")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "csi-rbdj")
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build csi-rbdj: %v", err)
	}
	build := exec.Command(goBin, "build", "-o", bin, "./cmd/csi-rbdj")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(filepath.Join(root, "hack", "csi-sanity.sh"), bin)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(goBin)+":"+os.Getenv("PATH"))
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
}
