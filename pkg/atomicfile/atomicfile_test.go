package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name     string
		prepare  func(path string) // before Write
		data     string
		opts     Options
		wantErr  bool
		wantData string // content of path afterwards
		wantPerm os.FileMode
	}{
		{name: "new file", data: "one", wantData: "one", wantPerm: 0o600},
		{name: "replace", prepare: func(p string) { mustWrite(t, p, "old") }, data: "new", opts: Options{Perm: 0o644}, wantData: "new", wantPerm: 0o644},
		{name: "no sync", data: "x", opts: Options{NoSync: true}, wantData: "x", wantPerm: 0o600},
		{name: "empty", prepare: func(p string) { mustWrite(t, p, "old") }, data: "", wantData: "", wantPerm: 0o600},
		{
			// The rename fails: the target is a non-empty directory.
			name: "rename fails",
			prepare: func(p string) {
				if err := os.MkdirAll(filepath.Join(p, "sub"), 0o755); err != nil {
					t.Fatal(err)
				}
			},
			data: "new", wantErr: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sub := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			if err := os.Mkdir(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(sub, "f.json")
			if tc.prepare != nil {
				tc.prepare(path)
			}
			err := Write(path, []byte(tc.data), tc.opts)
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), path) {
					t.Fatalf("Write = %v, want an error naming %s", err, path)
				}
			} else {
				if err != nil {
					t.Fatalf("Write: %v", err)
				}
				b, err := os.ReadFile(path)
				if err != nil || string(b) != tc.wantData {
					t.Fatalf("content %q, %v; want %q", b, err, tc.wantData)
				}
				fi, err := os.Stat(path)
				if err != nil || fi.Mode().Perm() != tc.wantPerm {
					t.Fatalf("mode %v, %v; want %v", fi.Mode().Perm(), err, tc.wantPerm)
				}
			}
			ents, err := os.ReadDir(sub)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				if strings.HasSuffix(e.Name(), TempSuffix) {
					t.Errorf("temporary file %s left behind", e.Name())
				}
			}
		})
	}
}

func TestWriteMissingDir(t *testing.T) {
	err := Write(filepath.Join(t.TempDir(), "no", "f"), []byte("x"), Options{})
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Write = %v, want ErrNotExist", err)
	}
}

func mustWrite(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
