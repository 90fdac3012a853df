// Package classes lists the object classes csi-rbdj calls, implemented in
// Go for the local backend (on Ceph the OSD loads its own): journal, rbd
// and lock.
package classes

import (
	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	clslock "github.com/csi-rbdj/csi-rbdj/pkg/cls/lock"
	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// Standard returns the classes a local cluster needs to serve RBD images
// with journals and exclusive locks.
func Standard() map[string]objstore.Class {
	return map[string]objstore.Class{
		"journal": clsjournal.Class(),
		"rbd":     clsrbd.Class(),
		"lock":    clslock.Class(),
	}
}
