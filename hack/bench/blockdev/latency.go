package main

import (
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
)

// latencyObserver sums a device's latencies (blockdev.Observer) for
// -latency: the tables say how fast a row is, this says where a write's
// time goes (waiting for its journal entry, then for its image write).
type latencyObserver struct {
	req     [blockdev.NumOps]latencySum
	journal latencySum
	apply   latencySum
}

type latencySum struct{ n, ns atomic.Int64 }

func (s *latencySum) add(d time.Duration) { s.n.Add(1); s.ns.Add(int64(d)) }

// observeLatency sets a new latencyObserver on dev with -latency (nil
// otherwise: no observer, nothing added to the measured path).
func observeLatency(o options, dev *servedDevice) *latencyObserver {
	if !o.latency {
		return nil
	}
	l := &latencyObserver{}
	dev.dev.SetObserver(l)
	return l
}

func (l *latencyObserver) ObserveRequest(op blockdev.Op, d time.Duration) {
	if op >= 0 && op < blockdev.NumOps {
		l.req[op].add(d)
	}
}
func (l *latencyObserver) ObserveJournalAppend(d time.Duration) { l.journal.add(d) }
func (l *latencyObserver) ObserveApply(d time.Duration)         { l.apply.add(d) }

// latencySnapshot holds counts and summed nanoseconds: request kinds, then
// journal append, then apply.
type latencySnapshot [blockdev.NumOps + 2][2]int64

// snapshot reads the sums (zero for a nil observer).
func (l *latencyObserver) snapshot() latencySnapshot {
	var s latencySnapshot
	if l == nil {
		return s
	}
	read := func(x *latencySum) [2]int64 { return [2]int64{x.n.Load(), x.ns.Load()} }
	for op := range blockdev.NumOps {
		s[op] = read(&l.req[op])
	}
	s[blockdev.NumOps] = read(&l.journal)
	s[blockdev.NumOps+1] = read(&l.apply)
	return s
}

// since formats the means of what was observed between before and s.
func (s latencySnapshot) since(before latencySnapshot) string {
	var parts []string
	for i := range s {
		n, ns := s[i][0]-before[i][0], s[i][1]-before[i][1]
		if n == 0 {
			continue
		}
		name := "journal append"
		switch {
		case i < int(blockdev.NumOps):
			name = blockdev.Op(i).String()
		case i == int(blockdev.NumOps)+1:
			name = "apply"
		}
		parts = append(parts, fmt.Sprintf("%s %v (n=%d)", name, (time.Duration(ns/n)).Round(time.Microsecond), n))
	}
	if len(parts) == 0 {
		return "nothing observed"
	}
	return strings.Join(parts, ", ")
}
