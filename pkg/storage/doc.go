// Package storage is the storage layer under csi-rbdj's CSI servers: the
// Backend that hands out the Storage of a cluster for a request's
// credentials, and the Storage interface itself (pools, and the management
// of journaled RBD images in them: create, remove, describe, list users,
// grow (through the lock owner when a node serves the image),
// capacity, health, fencing).
//
// Two implementations: the local backend (one pkg/objstore/local directory
// is one cluster; images through pkg/image) and the ceph backend (clusters
// from a ceph-csi style --ceph-config file, credentials from the CSI secrets
// or a default credentials directory, pools through librados and images
// through librbd). The ceph backend is in the files built with the tags
// `ceph pacific`, the only ones of this package that link go-ceph (cgo);
// without them OpenCeph returns ErrCephNotBuilt.
//
// The package knows nothing of CSI: its errors are sentinels
// (ErrUnknownCluster, ErrNoCredentials, ErrPoolNotFound, ...) that
// pkg/volume maps to CSI status codes. No error or String method carries a
// key.
package storage
