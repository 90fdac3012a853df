// Package memlimit sets the Go soft memory limit of the node plugin
// (runtime/debug.SetMemoryLimit), so that the garbage collector keeps the
// heap within what the node gives the plugin rather than letting it grow
// to twice what is live (GOGC=100) before collecting.
//
// The node plugin's own bounds (blockdev.NodeBudget, fuseloop.RequestBuffers)
// keep what is live under about 600 MiB however many volumes it serves; the
// garbage collector's headroom on top of that is what the soft limit caps.
package memlimit

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
)

// Default is the soft limit when neither a flag, GOMEMLIMIT nor a cgroup
// memory limit says otherwise: the Go heap's share of the 1 GiB a node
// plugin serving 50 volumes is sized for. The rest goes to librados' C
// memory (its copies of the data in flight: 300–400 MiB beside the heap
// with 50 volumes writing 1 MiB blocks), goroutine stacks and the
// runtime's own; with 768 MiB such a run peaked at 1042 MiB on Ceph, with
// 640 MiB at 918–1046 MiB, with 512 MiB at 820–875 MiB for the same
// throughput (three runs each, back to back, 2026-12-06). The live heap
// stayed at 300–430 MiB, below the limit, so the collector does not thrash.
const Default = 512 << 20

// cgroupShare is the part of the cgroup's memory.max given to the Go heap.
const cgroupShare = 0.75

// Source says where a limit came from.
type Source string

const (
	SourceFlag       Source = "flag"
	SourceGOMEMLIMIT Source = "GOMEMLIMIT"
	SourceCgroup     Source = "cgroup memory.max"
	SourceDefault    Source = "default"
)

// Resolve returns the soft limit to use: flag if positive; none (0) if
// GOMEMLIMIT is set, which the runtime already honours; 3/4 of the
// memory.max of this process's cgroup (v2) if it has one; Default
// otherwise. A negative flag disables the limit (0, SourceFlag).
func Resolve(flag int64) (int64, Source, error) {
	return resolve(flag, os.Getenv("GOMEMLIMIT"), "/proc/self/cgroup", "/sys/fs/cgroup")
}

func resolve(flag int64, env, procCgroup, cgroupRoot string) (int64, Source, error) {
	switch {
	case flag > 0:
		return flag, SourceFlag, nil
	case flag < 0:
		return 0, SourceFlag, nil
	case env != "":
		return 0, SourceGOMEMLIMIT, nil
	}
	max, ok, err := cgroupMemoryMax(procCgroup, cgroupRoot)
	if err != nil {
		return 0, "", err
	}
	if ok {
		return int64(float64(max) * cgroupShare), SourceCgroup, nil
	}
	return Default, SourceDefault, nil
}

// cgroupMemoryMax reads the memory.max of this process's cgroup v2 (false:
// none, "max", or no cgroup v2).
func cgroupMemoryMax(procCgroup, root string) (int64, bool, error) {
	b, err := os.ReadFile(procCgroup)
	if err != nil {
		if os.IsNotExist(err) {
			return 0, false, nil
		}
		return 0, false, fmt.Errorf("memory limit: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		path, ok := strings.CutPrefix(line, "0::")
		if !ok {
			continue
		}
		v, err := os.ReadFile(filepath.Join(root, filepath.Clean("/"+path), "memory.max"))
		if err != nil {
			// The root cgroup has no memory.max; neither has a v1 host.
			return 0, false, nil
		}
		s := strings.TrimSpace(string(v))
		if s == "max" {
			return 0, false, nil
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, false, fmt.Errorf("memory limit: cgroup memory.max %q: %w", s, err)
		}
		return n, true, nil
	}
	return 0, false, nil
}

// Apply resolves the limit (Resolve) and sets it; it returns what it set
// (0: left to GOMEMLIMIT, or disabled) and where it came from.
func Apply(flag int64) (int64, Source, error) {
	limit, src, err := Resolve(flag)
	if err != nil {
		return 0, "", err
	}
	if limit > 0 {
		debug.SetMemoryLimit(limit)
	}
	return limit, src, nil
}
