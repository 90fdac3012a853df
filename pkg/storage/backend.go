package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Backend gives the CSI servers the Storage of a cluster, opened with the
// credentials of a request. It is the one place that knows how clusters are
// configured (local: one directory is one cluster; ceph: a clusterID →
// monitors file, the way ceph-csi's ConfigMap does it) and how requests
// authenticate (local: not at all; ceph: the CSI secrets userID/userKey, or
// the default credentials).
//
// Implementations cache what Storage returns (ceph: one connection per
// cluster, user and key digest); the Storage stays valid until Close, and
// callers never close it themselves.
type Backend interface {
	// Kind is BackendLocal or BackendCeph.
	Kind() string
	// Clusters returns the configured cluster ids, the default one (used
	// when a StorageClass names none) first.
	Clusters() ([]string, error)
	// Storage returns the storage of cluster clusterID ("": the default
	// one), authenticated with secrets (SecretUserID, SecretUserKey) or,
	// when secrets is empty, with the backend's default credentials.
	// Errors wrap ErrUnknownCluster, ErrNoCredentials, ErrBadCredentials or
	// ErrUnreachable where they apply (StorageStatus maps them to CSI
	// codes); no error carries a key.
	Storage(ctx context.Context, clusterID string, secrets map[string]string) (Storage, error)
	// Close releases every connection.
	Close() error
}

// The keys of the CSI secrets a request authenticates with (as ceph-csi's
// secrets: a Kubernetes Secret with these keys, named by the StorageClass).
const (
	SecretUserID  = "userID"
	SecretUserKey = "userKey"
)

// Errors of Backend.Storage, for StorageStatus.
var (
	// ErrUnknownCluster: the cluster id is not configured.
	ErrUnknownCluster = errors.New("unknown cluster id")
	// ErrNoCredentials: the request carries no credentials and the backend
	// has no default ones.
	ErrNoCredentials = errors.New("no credentials")
	// ErrBadCredentials: the cluster refused the credentials (or they are
	// malformed).
	ErrBadCredentials = errors.New("credentials rejected")
	// ErrUnreachable: the cluster did not answer.
	ErrUnreachable = errors.New("cluster unreachable")
	// ErrBadConfig: the cluster configuration (--ceph-config) is missing
	// or invalid.
	ErrBadConfig = errors.New("bad cluster configuration")
	// ErrCephNotBuilt: this binary has no Ceph support.
	ErrCephNotBuilt = errors.New("this binary was built without Ceph support: build with -tags ceph,pacific (make build does when librados and librbd headers are installed), or use --backend local")
)

// kindError is err classified as kind: its message is err's, and errors.Is
// matches both.
type kindError struct{ kind, err error }

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }

// classify marks err as one of the Backend errors without changing its
// message.
func classify(kind, err error) error { return &kindError{kind: kind, err: err} }

// Credentials are a cephx user id and key. String never shows the key.
type Credentials struct {
	User string
	Key  string
}

// String names the user only.
func (c Credentials) String() string { return "client." + c.User }

// GoString is String: %#v must not print the key either.
func (c Credentials) GoString() string { return c.String() }

// CredentialsFromSecrets reads SecretUserID and SecretUserKey from a
// request's secrets. ok is false when secrets is empty; secrets with one key
// but not the other are an error naming the missing key.
func CredentialsFromSecrets(secrets map[string]string) (c Credentials, ok bool, err error) {
	if len(secrets) == 0 {
		return Credentials{}, false, nil
	}
	c.User = strings.TrimPrefix(strings.TrimSpace(secrets[SecretUserID]), "client.")
	c.Key = strings.TrimSpace(secrets[SecretUserKey])
	switch {
	case c.User == "" && c.Key == "":
		var keys []string
		for k := range secrets {
			keys = append(keys, k)
		}
		return Credentials{}, false, fmt.Errorf("%w: the secret has no %q and %q keys (it has %s)", ErrNoCredentials, SecretUserID, SecretUserKey, strings.Join(sortedKeys(keys), ", "))
	case c.User == "":
		return Credentials{}, false, fmt.Errorf("%w: the secret has %q but no %q", ErrNoCredentials, SecretUserKey, SecretUserID)
	case c.Key == "":
		return Credentials{}, false, fmt.Errorf("%w: the secret has %q (client.%s) but no %q", ErrNoCredentials, SecretUserID, c.User, SecretUserKey)
	}
	return c, true, nil
}

// LoadCredentialsDir reads default credentials from dir: files named
// SecretUserID and SecretUserKey (a mounted Kubernetes Secret). ok is false
// when dir is "" or holds neither file.
func LoadCredentialsDir(dir string) (c Credentials, ok bool, err error) {
	if dir == "" {
		return Credentials{}, false, nil
	}
	read := func(name string) (string, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) {
			return "", nil
		}
		if err != nil {
			return "", fmt.Errorf("default credentials: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	user, err := read(SecretUserID)
	if err != nil {
		return Credentials{}, false, err
	}
	key, err := read(SecretUserKey)
	if err != nil {
		return Credentials{}, false, err
	}
	switch {
	case user == "" && key == "":
		return Credentials{}, false, nil
	case user == "" || key == "":
		return Credentials{}, false, fmt.Errorf("%w: default credentials in %s need both files %s and %s", ErrNoCredentials, dir, SecretUserID, SecretUserKey)
	}
	return Credentials{User: strings.TrimPrefix(user, "client."), Key: key}, true, nil
}

// LocalBackend is the local Backend: one directory is one cluster, and
// requests need no credentials. It is also that cluster's Storage, for
// tools that need no Backend.
type LocalBackend struct{ *localStorage }

// OpenLocal opens the local backend in o.Dir.
func OpenLocal(o LocalOptions) (*LocalBackend, error) {
	st, err := openLocalStorage(o)
	if err != nil {
		return nil, err
	}
	return &LocalBackend{localStorage: st}, nil
}

// Kind is BackendLocal.
func (b *LocalBackend) Kind() string { return BackendLocal }

// Clusters is the one cluster of the directory.
func (b *LocalBackend) Clusters() ([]string, error) { return []string{b.clusterID}, nil }

// Close closes the cluster directory.
func (b *LocalBackend) Close() error { return b.c.Close() }

// Storage ignores secrets: the local backend has no users.
func (b *LocalBackend) Storage(_ context.Context, clusterID string, _ map[string]string) (Storage, error) {
	if clusterID != "" && clusterID != b.clusterID {
		return nil, fmt.Errorf("%w %q: this plugin's local backend is cluster %q (--cluster-id); use the plugin configured for that cluster", ErrUnknownCluster, clusterID, b.clusterID)
	}
	return b.localStorage, nil
}

func sortedKeys(keys []string) []string {
	sort.Strings(keys)
	return keys
}
