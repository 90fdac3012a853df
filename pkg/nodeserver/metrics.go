package nodeserver

import "github.com/csi-rbdj/csi-rbdj/pkg/blockdev"

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
