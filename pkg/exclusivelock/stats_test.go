package exclusivelock_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	clslock "github.com/csi-rbdj/csi-rbdj/pkg/cls/lock"
	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
	"github.com/csi-rbdj/csi-rbdj/pkg/testwait"
)

// TestStats: the state and the takeover and fencing counters follow what
// Acquire had to do and what happened to the lock since.
func TestStats(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		// setup prepares the header in dir and returns the options c2
		// acquires the lock with.
		setup     func(t *testing.T, dir string, c2 *lockClient) exclusivelock.Options
		takeovers uint64
		fencings  uint64
		after     func(t *testing.T, l *exclusivelock.Lock, c2 *lockClient)
		state     exclusivelock.State
	}{
		{
			name:  "free lock",
			setup: func(*testing.T, string, *lockClient) exclusivelock.Options { return exclusivelock.Options{} },
			state: exclusivelock.StateHeld,
		},
		{
			name:  "released",
			setup: func(*testing.T, string, *lockClient) exclusivelock.Options { return exclusivelock.Options{} },
			after: func(t *testing.T, l *exclusivelock.Lock, _ *lockClient) {
				if err := l.Release(ctx); err != nil {
					t.Fatal(err)
				}
			},
			state: exclusivelock.StateReleased,
		},
		{
			name: "dead holder fenced",
			setup: func(t *testing.T, dir string, c2 *lockClient) exclusivelock.Options {
				_, p1 := client(t, dir)
				holdRaw(t, p1).w.Close(context.Background())
				return exclusivelock.Options{Fencer: c2.c}
			},
			takeovers: 1, fencings: 1,
			state: exclusivelock.StateHeld,
		},
		{
			name: "cooperative holder",
			setup: func(t *testing.T, dir string, c2 *lockClient) exclusivelock.Options {
				_, p1 := client(t, dir)
				coop := &releaser{p: p1}
				w, err := p1.Watch(ctx, oid, coop)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { w.Close(context.Background()) })
				coop.cookie = "auto " + strconv.FormatUint(w.Cookie(), 10)
				op := &objstore.WriteOp{}
				clslock.Lock(op, exclusivelock.LockName, clslock.LockExclusive, coop.cookie, exclusivelock.LockTag, "", 0, 0)
				if err := p1.Operate(ctx, oid, op); err != nil {
					t.Fatal(err)
				}
				return exclusivelock.Options{Fencer: c2.c}
			},
			takeovers: 1,
			state:     exclusivelock.StateHeld,
		},
		{
			name:  "fenced owner",
			setup: func(*testing.T, string, *lockClient) exclusivelock.Options { return exclusivelock.Options{} },
			after: func(t *testing.T, l *exclusivelock.Lock, c2 *lockClient) {
				other, _ := client(t, c2.dir)
				if err := other.Blocklist(ctx, c2.p.Client().Addr, time.Hour); err != nil {
					t.Fatal(err)
				}
				testwait.For(t, 5*time.Second, "the lock to be lost", func() bool { return l.Err() != nil })
			},
			state: exclusivelock.StateLost,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, _, _ := newHeader(t)
			c2, p2 := client(t, dir)
			lc := &lockClient{c: c2, p: p2, dir: dir}
			l := acquire(t, p2, tc.setup(t, dir, lc))
			if tc.after != nil {
				tc.after(t, l, lc)
			}
			st := l.Stats()
			if st.State != tc.state || st.Takeovers != tc.takeovers || st.Fencings != tc.fencings {
				t.Errorf("stats %+v, want state %s, %d takeovers, %d fencings", st, tc.state, tc.takeovers, tc.fencings)
			}
		})
	}
}

// lockClient is the client that acquires the lock, and its cluster dir.
type lockClient struct {
	c   *local.Cluster
	p   objstore.Pool
	dir string
}
