package storage

// ConnectionCount is how many connections a backend holds to one cluster
// in one state (for metrics).
type ConnectionCount struct {
	Cluster string
	State   string
	Count   int
}

// The states of a backend's connections.
const (
	// ConnConnecting: the first request for the cluster and credentials
	// is connecting.
	ConnConnecting = "connecting"
	// ConnConnected: connected and cached.
	ConnConnected = "connected"
	// ConnRetired: dropped from the cache because the cluster fenced this
	// client; kept open until Close (devices may still use it).
	ConnRetired = "retired"
)

// ConnectionReporter is a Backend that reports its connections.
type ConnectionReporter interface {
	Connections() []ConnectionCount
}

// Connections reports the local backend's one cluster: always connected.
func (b *LocalBackend) Connections() []ConnectionCount {
	return []ConnectionCount{{Cluster: b.clusterID, State: ConnConnected, Count: 1}}
}
