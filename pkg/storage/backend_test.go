package storage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseCephConfig(t *testing.T) {
	cs, err := ParseCephConfig("c.json", []byte(`[{"clusterID": "a", "monitors": ["10.0.0.1:6789", "10.0.0.2:6789"], "cephFS": {}},
		{"clusterID": "b", "monitors": ["[v2:10.0.1.1:3300,v1:10.0.1.1:6789]"], "pools": ["kube", "kube-ssd"]}]`))
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 || cs[0].ClusterID != "a" || len(cs[0].Monitors) != 2 || cs[1].Monitors[0] != "[v2:10.0.1.1:3300,v1:10.0.1.1:6789]" ||
		cs[0].Pools != nil || strings.Join(cs[1].Pools, ",") != "kube,kube-ssd" {
		t.Fatalf("parsed %+v", cs)
	}
	if c, err := findCephCluster("c.json", cs, ""); err != nil || c.ClusterID != "a" {
		t.Errorf("default cluster: %+v %v", c, err)
	}
	if c, err := findCephCluster("c.json", cs, "b"); err != nil || c.ClusterID != "b" {
		t.Errorf("cluster b: %+v %v", c, err)
	}
	if _, err := findCephCluster("c.json", cs, "z"); !errors.Is(err, ErrUnknownCluster) || !strings.Contains(err.Error(), "lists a, b") {
		t.Errorf("unknown cluster: %v", err)
	}
	for _, bad := range []struct{ in, msg string }{
		{`{}`, "want a JSON list"},
		{`[]`, "lists no cluster"},
		{`[{"clusterID": "", "monitors": ["m"]}]`, "empty clusterID"},
		{`[{"clusterID": "a/b", "monitors": ["m"]}]`, "not allowed"},
		{`[{"clusterID": "a", "monitors": []}]`, "has no monitors"},
		{`[{"clusterID": "a", "monitors": [" "]}]`, "empty monitor"},
		{`[{"clusterID": "a", "monitors": ["m"]}, {"clusterID": "a", "monitors": ["n"]}]`, "listed twice"},
		{`[{"clusterID": "a", "monitors": ["m"], "pools": ["ok", ""]}]`, "pools"},
	} {
		if _, err := ParseCephConfig("c.json", []byte(bad.in)); err == nil || !strings.Contains(err.Error(), bad.msg) {
			t.Errorf("%s: %v, want an error with %q", bad.in, err, bad.msg)
		}
	}
	if _, err := LoadCephConfig(""); err == nil || !strings.Contains(err.Error(), "--ceph-config") {
		t.Errorf("no file: %v", err)
	}
}

const testKey = "AQBvsj9pAAAAABAA0k8D0bqUvS7lpWc4DdXPHg=="

func TestCredentials(t *testing.T) {
	c, ok, err := CredentialsFromSecrets(map[string]string{SecretUserID: "client.csi", SecretUserKey: testKey + "\n"})
	if err != nil || !ok || c.User != "csi" || c.Key != testKey {
		t.Fatalf("%v %v %v", c.User, ok, err)
	}
	for _, s := range []string{c.String(), fmt.Sprintf("%v %+v %#v %s", c, c, c, c)} {
		if strings.Contains(s, testKey) {
			t.Errorf("credentials print their key: %s", s)
		}
	}
	if _, ok, err := CredentialsFromSecrets(nil); ok || err != nil {
		t.Errorf("no secrets: %v %v", ok, err)
	}
	for _, tc := range []struct {
		s   map[string]string
		msg string
	}{
		{map[string]string{SecretUserID: "csi"}, `"userID" (client.csi) but no "userKey"`},
		{map[string]string{SecretUserKey: testKey}, `has "userKey" but no "userID"`},
		{map[string]string{"adminID": "x", "adminKey": testKey}, `no "userID" and "userKey" keys (it has adminID, adminKey)`},
	} {
		_, _, err := CredentialsFromSecrets(tc.s)
		if !errors.Is(err, ErrNoCredentials) || !strings.Contains(err.Error(), tc.msg) || strings.Contains(err.Error(), testKey) {
			t.Errorf("%v: %v, want ErrNoCredentials with %q", tc.s, err, tc.msg)
		}
	}

	dir := t.TempDir()
	if _, ok, err := LoadCredentialsDir(dir); ok || err != nil {
		t.Errorf("empty dir: %v %v", ok, err)
	}
	if err := os.WriteFile(filepath.Join(dir, SecretUserID), []byte("csi\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadCredentialsDir(dir); !errors.Is(err, ErrNoCredentials) {
		t.Errorf("user without key: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, SecretUserKey), []byte(testKey), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, ok, err := LoadCredentialsDir(dir); !ok || err != nil || c.User != "csi" || c.Key != testKey {
		t.Errorf("dir: %v %v %v", c, ok, err)
	}
}

func TestClassify(t *testing.T) {
	// classify keeps the message and matches both errors.
	base := errors.New("base")
	if err := classify(ErrUnreachable, base); err.Error() != "base" || !errors.Is(err, base) || !errors.Is(err, ErrUnreachable) {
		t.Errorf("classify: %v", err)
	}
}
