package journal

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	clsjournal "github.com/csi-rbdj/csi-rbdj/pkg/cls/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
)

// TestLaggyClients: another registered client (rbd-mirror's) holds back
// trimming until it has committed past the entries, unless it falls more
// than MaxConcurrentObjectSets sets behind: then it is flagged
// DISCONNECTED (once, reported to OnClientDisconnected) and the journal is
// trimmed past it, as librbd's schedule_laggy_clients_disconnect and
// JournalTrimmer do.
func TestLaggyClients(t *testing.T) {
	for _, tt := range laggyCases {
		t.Run(tt.name, func(t *testing.T) { laggyScenario(t, newPool(t), "img", tt) })
	}
}

type laggyCase struct {
	name      string
	bound     int
	peerSet   int64 // the peer's committed object set; -1: none
	wantDisc  bool
	wantMinIs func(minSet, active uint64) bool
}

var laggyCases = []laggyCase{
	{name: "unbounded: a silent peer keeps everything", bound: 0, peerSet: -1,
		wantMinIs: func(m, _ uint64) bool { return m == 0 }},
	{name: "bound not reached", bound: 1000, peerSet: -1,
		wantMinIs: func(m, _ uint64) bool { return m == 0 }},
	{name: "silent peer beyond the bound is disconnected", bound: 2, peerSet: -1, wantDisc: true,
		wantMinIs: func(m, a uint64) bool { return m > 0 }},
	{name: "peer within the bound holds trimming at its set", bound: 3, peerSet: 1000, // set to active-1 below
		wantMinIs: func(m, a uint64) bool { return m == a-1 }},
}

// laggyScenario runs one case on journal id of pool.
func laggyScenario(t *testing.T, pool objstore.Pool, id string, tt laggyCase) {
	ctx := context.Background()
	var mu sync.Mutex
	var reported []LaggyClient
	s := fastSettings
	s.MaxConcurrentObjectSets = tt.bound
	s.OnClientDisconnected = func(c LaggyClient) {
		mu.Lock()
		defer mu.Unlock()
		reported = append(reported, c)
	}
	j, tagTid := newJournalWith(t, pool, id, CreateOptions{Order: 12, SplayWidth: 4}, s)
	peer := &objstore.WriteOp{}
	clsjournal.ClientRegister(peer, "mirror-peer-uuid", nil)
	if err := pool.Operate(ctx, HeaderOID(id), peer); err != nil {
		t.Fatal(err)
	}

	fs := appendAll(t, j, tagTid, payloads(rand.New(rand.NewPCG(1, 2)), 200, 1500))
	_, active := j.Sets()
	if active < 6 {
		t.Fatalf("active set %d: want several sets", active)
	}
	if tt.peerSet >= 0 {
		set := min(uint64(tt.peerSet), active-1)
		op := &objstore.WriteOp{}
		clsjournal.ClientCommit(op, "mirror-peer-uuid", clsjournal.ObjectSetPosition{ObjectPositions: []clsjournal.ObjectPosition{
			{ObjectNumber: set * 4, TagTid: tagTid, EntryTid: 0}}})
		if err := pool.Operate(ctx, HeaderOID(id), op); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range fs {
		j.Committed(f.CommitTid)
	}
	if err := j.FlushCommitPosition(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := clsjournal.GetClient(ctx, pool, HeaderOID(id), "mirror-peer-uuid")
	if err != nil {
		t.Fatal(err)
	}
	if disc := c.State == clsjournal.ClientStateDisconnected; disc != tt.wantDisc {
		t.Errorf("peer disconnected = %v, want %v (active set %d, bound %d)", disc, tt.wantDisc, active, tt.bound)
	}
	minSet, active := j.Sets()
	if !tt.wantMinIs(minSet, active) {
		t.Errorf("minimum set %d with active set %d", minSet, active)
	}
	for _, name := range dataObjects(t, pool, id) {
		var n uint64
		if _, err := fmt.Sscanf(name[strings.LastIndexByte(name, '.')+1:], "%d", &n); err == nil && n/4 < minSet {
			t.Errorf("object %s of a trimmed set remains", name)
		}
	}
	// A second flush disconnects nobody again.
	fs = appendAll(t, j, tagTid, payloads(rand.New(rand.NewPCG(3, 4)), 10, 1500))
	for _, f := range fs {
		j.Committed(f.CommitTid)
	}
	if err := j.FlushCommitPosition(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := 0
	if tt.wantDisc {
		want = 1
	}
	if len(reported) != want {
		t.Fatalf("reported %v, want %d disconnection(s)", reported, want)
	}
	if want == 1 && (reported[0].ID != "mirror-peer-uuid" || reported[0].ObjectSet != 0 || reported[0].ActiveSet <= uint64(tt.bound)) {
		t.Errorf("reported %+v", reported[0])
	}
}
