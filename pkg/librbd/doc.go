// Package librbd manages RBD images on a Ceph cluster through librbd
// (go-ceph's rbd package): create (with the journaling feature and the
// journal's order and splay width), remove (image and journal), resize,
// describe and list. Its functions have pkg/image's management signatures
// and errors (image.ErrExists, image.ErrNotFound, image.ErrBusy, ...), so a
// caller uses pkg/image on the local backend and this package on Ceph, and
// branches on the same errors.
//
// Built only with the build tags `ceph pacific` (see pkg/objstore/ceph);
// the pools passed in must be objstore/ceph pools (ErrNotCeph otherwise).
package librbd
