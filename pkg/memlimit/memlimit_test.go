package memlimit

import (
	"os"
	"path/filepath"
	"testing"
)

func TestResolve(t *testing.T) {
	root := t.TempDir()
	write := func(rel, s string) string {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cgroups := filepath.Join(root, "fs")
	write("fs/pod/memory.max", "1073741824\n")
	write("fs/unlimited/memory.max", "max\n")
	write("fs/bad/memory.max", "lots\n")
	limited := write("proc/limited", "0::/pod\n")
	unlimited := write("proc/unlimited", "0::/unlimited\n")
	bad := write("proc/bad", "0::/bad\n")
	rootCg := write("proc/root", "0::/\n")
	v1 := write("proc/v1", "12:memory:/x\n")
	for _, tc := range []struct {
		name    string
		flag    int64
		env     string
		proc    string
		want    int64
		src     Source
		wantErr bool
	}{
		{"flag wins", 512 << 20, "1GiB", limited, 512 << 20, SourceFlag, false},
		{"negative flag disables", -1, "", limited, 0, SourceFlag, false},
		{"GOMEMLIMIT left to the runtime", 0, "900MiB", limited, 0, SourceGOMEMLIMIT, false},
		{"cgroup limit", 0, "", limited, 768 << 20, SourceCgroup, false},
		{"cgroup without limit", 0, "", unlimited, Default, SourceDefault, false},
		{"root cgroup", 0, "", rootCg, Default, SourceDefault, false},
		{"cgroup v1", 0, "", v1, Default, SourceDefault, false},
		{"no /proc/self/cgroup", 0, "", filepath.Join(root, "none"), Default, SourceDefault, false},
		{"unparsable memory.max", 0, "", bad, 0, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, src, err := resolve(tc.flag, tc.env, tc.proc, cgroups)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if got != tc.want || src != tc.src {
				t.Fatalf("got %d (%s), want %d (%s)", got, src, tc.want, tc.src)
			}
		})
	}
}
