package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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

// SecretsOf names, for error messages, the StorageClass parameters through
// which a call gets its secrets.
type SecretsOf string

// What each call's secrets come from.
const (
	// SecretsProvisioner: CreateVolume and DeleteVolume.
	SecretsProvisioner SecretsOf = "provisioner"
	// SecretsNodeStage: NodeStageVolume.
	SecretsNodeStage SecretsOf = "node-stage"
	// SecretsControllerValidate: ValidateVolumeCapabilities (no
	// Kubernetes sidecar sends them; the default credentials serve).
	SecretsControllerValidate SecretsOf = "validate"
	// SecretsNone: calls without secrets (ListVolumes, GetCapacity, Probe,
	// re-serving staged volumes after a restart): only the default
	// credentials can serve them.
	SecretsNone SecretsOf = "none"
)

// hint says how to give a call credentials.
func (s SecretsOf) hint() string {
	switch s {
	case SecretsProvisioner, SecretsNodeStage:
		return fmt.Sprintf("set the StorageClass parameters csi.storage.k8s.io/%[1]s-secret-name and csi.storage.k8s.io/%[1]s-secret-namespace to a Secret with the keys %[2]s and %[3]s, or give the plugin default credentials (--ceph-credentials-dir)",
			string(s), SecretUserID, SecretUserKey)
	}
	return fmt.Sprintf("give the plugin default credentials: --ceph-credentials-dir pointing at a mounted Secret with the keys %s and %s", SecretUserID, SecretUserKey)
}

// Where a cluster id came from, for StorageStatus: a StorageClass parameter
// is the caller's mistake (InvalidArgument), a volume id naming a cluster
// this plugin does not know is a configuration problem (FailedPrecondition).
const (
	fromParams   = true
	fromVolumeID = false
)

// StorageStatus turns an error of Backend.Storage or of a Storage call into
// a gRPC status whose message says what to fix:
//
//	unknown cluster id         InvalidArgument (StorageClass) / FailedPrecondition (volume id)
//	no credentials             InvalidArgument naming the secret parameters (FailedPrecondition without secrets: --ceph-credentials-dir)
//	credentials rejected       Unauthenticated naming the user (never the key)
//	EPERM/EACCES on an op      PermissionDenied: the user lacks a capability
//	cluster unreachable        Unavailable naming the monitors
//	bad --ceph-config          FailedPrecondition
//	anything else              Internal
func StorageStatus(err error, secrets SecretsOf, clusterFromParams bool) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, ErrUnknownCluster):
		if clusterFromParams {
			return status.Errorf(codes.InvalidArgument, "parameter %q: %v", ParamClusterID, err)
		}
		return status.Errorf(codes.FailedPrecondition, "%v", err)
	case errors.Is(err, ErrNoCredentials):
		if secrets == SecretsNone || secrets == SecretsControllerValidate {
			return status.Errorf(codes.FailedPrecondition, "%v: %s", err, secrets.hint())
		}
		return status.Errorf(codes.InvalidArgument, "%v: %s", err, secrets.hint())
	case errors.Is(err, ErrBadCredentials):
		return status.Errorf(codes.Unauthenticated, "%v (check the %s and %s of the Secret)", err, SecretUserID, SecretUserKey)
	case errors.Is(err, ErrUnreachable):
		return status.Errorf(codes.Unavailable, "%v", err)
	case errors.Is(err, ErrCephNotBuilt), errors.Is(err, ErrBadConfig):
		return status.Errorf(codes.FailedPrecondition, "%v", err)
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return status.Errorf(codes.PermissionDenied, "%v (the user lacks a capability: give it `mon 'profile rbd' osd 'profile rbd'`)", err)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Errorf(codes.DeadlineExceeded, "%v", err)
	case errors.Is(err, context.Canceled):
		return status.Errorf(codes.Canceled, "%v", err)
	}
	return status.Errorf(codes.Internal, "%v", err)
}

// opStatus maps a failed Storage call made with the given secrets: the
// classified errors (permissions, an unreachable cluster) as StorageStatus
// does, anything else with code and "what: err".
func opStatus(err error, secrets SecretsOf, code codes.Code, what string) error {
	switch {
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES), errors.Is(err, ErrUnreachable),
		errors.Is(err, ErrBadCredentials):
		return StorageStatus(fmt.Errorf("%s: %w", what, err), secrets, fromVolumeID)
	case objstore.Errno(err) == syscall.ETIMEDOUT, errors.Is(err, context.DeadlineExceeded):
		return status.Errorf(codes.Unavailable, "%s: %v (the cluster did not answer in time; retry)", what, err)
	}
	return status.Errorf(code, "%s: %v", what, err)
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
