package nodeserver

import (
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
)

// VolumeMetrics is told which journaled devices this node serves, so that
// it exports their metrics only while they are served (metrics.Node).
type VolumeMetrics interface {
	// Served: dev now serves volumeID (staged, or re-served after a
	// restart or a failure).
	Served(volumeID string, dev *blockdev.Device)
	// Unserved: volumeID's device was closed (unstaged, or a failed stage
	// undone).
	Unserved(volumeID string)
}

// HandoverMetrics is implemented by a VolumeMetrics that also reports
// handovers: after a restart, volumeID's FUSE connection was adopted from
// the holder, took took (this process's part of the pause pods saw: fence,
// replay, adopt) and resent requests came back from the dead predecessor.
type HandoverMetrics interface {
	Adopted(volumeID string, took time.Duration, resent uint64)
}

// BudgetMetrics is implemented by a VolumeMetrics that also reports the
// node-wide bounds of pending and dirty bytes (told once, by New).
type BudgetMetrics interface {
	NodeBudget(b *blockdev.NodeBudget)
}

func (s *Server) metricsAdopted(volumeID string, took time.Duration, resent uint64) {
	if m, ok := s.o.Metrics.(HandoverMetrics); ok {
		m.Adopted(volumeID, took, resent)
	}
}

func (s *Server) metricsServed(volumeID string, dev *blockdev.Device) {
	if m := s.o.Metrics; m != nil {
		m.Served(volumeID, dev)
	}
}

func (s *Server) metricsUnserved(volumeID string) {
	if m := s.o.Metrics; m != nil {
		m.Unserved(volumeID)
	}
}
