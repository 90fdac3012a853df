// Package volume is csi-rbdj's volume model, shared by the controller
// (pkg/driver) and the node (pkg/nodeserver): what a volume id encodes
// ("rbdj1/<backend>/<cluster id>/<pool>/<image>", so the node needs no call
// to the controller), the StorageClass parameters and the volume context the
// controller hands to the node, the access modes and capabilities a
// journaled volume supports, the table that turns storage errors into CSI
// status codes with a message saying what to fix, and the resolution of a
// request's volume id to the storage.Storage it lives in.
//
// It does not link the data path (pkg/blockdev): the controller checks
// parameters without it.
package volume
