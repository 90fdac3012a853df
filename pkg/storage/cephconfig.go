package storage

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/klog/v2"
)

// CephCluster is one cluster of the --ceph-config file: the same JSON as
// ceph-csi's config.json (a ConfigMap mounted into the pods), of which
// csi-rbdj reads clusterID and monitors (other fields are ignored), and
// optionally pools:
//
//	[{"clusterID": "ceph-a", "monitors": ["10.0.0.1:6789", "10.0.0.2:6789"], "pools": ["kube"]}]
type CephCluster struct {
	ClusterID string   `json:"clusterID"`
	Monitors  []string `json:"monitors"`
	// Pools, when set, are the only pools ListVolumes and ListSnapshots
	// walk on this cluster. A shared cluster has pools that are none of
	// the driver's business (and that its user may not read); volumes are
	// still created in whatever pool a StorageClass names.
	Pools []string `json:"pools,omitempty"`
}

// CephOptions configure the ceph backend.
type CephOptions struct {
	// ConfigFile is the cluster list (--ceph-config). It is read again on
	// every request that opens a cluster, so clusters can be added to the
	// ConfigMap without restarting the plugin (which would stop every
	// device a node plugin serves).
	ConfigFile string
	// CredentialsDir holds the default credentials (--ceph-credentials-dir:
	// files userID and userKey, a mounted Secret), used by requests
	// without secrets and by a restarted node plugin re-serving staged
	// volumes. Read when needed, never copied anywhere. Optional.
	CredentialsDir string
	// ConnectTimeout bounds the wait for a cluster's monitors (default
	// 10 s).
	ConnectTimeout time.Duration
	// OpTimeout bounds every OSD and monitor operation (default 30 s).
	OpTimeout time.Duration
	// Logger logs the connections, which belong to no request; default
	// klog.Background().
	Logger klog.Logger
}

// LoadCephConfig reads and checks a --ceph-config file.
func LoadCephConfig(path string) ([]CephCluster, error) {
	if path == "" {
		return nil, fmt.Errorf("no Ceph cluster configuration: set --ceph-config to a JSON file like [{\"clusterID\": \"ceph-a\", \"monitors\": [\"10.0.0.1:6789\"]}]")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ceph cluster configuration (--ceph-config): %w", err)
	}
	return ParseCephConfig(path, b)
}

// ParseCephConfig parses and checks the content of a --ceph-config file
// (path names it in errors).
func ParseCephConfig(path string, b []byte) ([]CephCluster, error) {
	var cs []CephCluster
	if err := json.Unmarshal(b, &cs); err != nil {
		return nil, fmt.Errorf("ceph cluster configuration %s: %w (want a JSON list like [{\"clusterID\": \"ceph-a\", \"monitors\": [\"10.0.0.1:6789\"]}])", path, err)
	}
	if len(cs) == 0 {
		return nil, fmt.Errorf("ceph cluster configuration %s lists no cluster", path)
	}
	seen := map[string]bool{}
	for i, c := range cs {
		if err := ValidateName("clusterID", c.ClusterID); err != nil {
			return nil, fmt.Errorf("ceph cluster configuration %s: entry %d: %w", path, i, err)
		}
		if seen[c.ClusterID] {
			return nil, fmt.Errorf("ceph cluster configuration %s: clusterID %q is listed twice", path, c.ClusterID)
		}
		seen[c.ClusterID] = true
		if len(c.Monitors) == 0 {
			return nil, fmt.Errorf("ceph cluster configuration %s: cluster %q has no monitors", path, c.ClusterID)
		}
		for _, m := range c.Monitors {
			if strings.TrimSpace(m) == "" {
				return nil, fmt.Errorf("ceph cluster configuration %s: cluster %q has an empty monitor address", path, c.ClusterID)
			}
		}
		for _, pn := range c.Pools {
			if err := ValidateName("pool", pn); err != nil {
				return nil, fmt.Errorf("ceph cluster configuration %s: cluster %q: pools: %w", path, c.ClusterID, err)
			}
		}
	}
	return cs, nil
}

// findCephCluster picks the cluster clusterID names ("": the first one).
func findCephCluster(path string, cs []CephCluster, clusterID string) (CephCluster, error) {
	if clusterID == "" {
		return cs[0], nil
	}
	ids := make([]string, 0, len(cs))
	for _, c := range cs {
		if c.ClusterID == clusterID {
			return c, nil
		}
		ids = append(ids, c.ClusterID)
	}
	return CephCluster{}, fmt.Errorf("%w %q: %s lists %s; add the cluster there (the ConfigMap behind --ceph-config) or fix the clusterID",
		ErrUnknownCluster, clusterID, path, strings.Join(ids, ", "))
}
