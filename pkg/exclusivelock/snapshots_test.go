package exclusivelock_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
	"github.com/csi-rbdj/csi-rbdj/pkg/testwait"
)

// TestProxiedSnapshots: the owner answers snapshot requests as librbd's
// does — a SnapCreate with an async request id is accepted at once and
// completed with AsyncComplete; a SnapCreate without one (older clients)
// and a SnapRemove (Pacific has no id for it) are answered with the
// result once done; the namespace reaches the handler.
func TestProxiedSnapshots(t *testing.T) {
	p, p2, s := headerWithSpy(t)
	type call struct {
		op   string
		ns   rbdnotify.SnapshotNamespace
		name string
	}
	calls := make(chan call, 10)
	l := acquire(t, p, exclusivelock.Options{
		SnapCreate: func(ctx context.Context, ns rbdnotify.SnapshotNamespace, name string, flags uint64) error {
			calls <- call{"create", ns, name}
			if name == "taken" {
				return fmt.Errorf("snapshot exists: %w", syscall.EEXIST)
			}
			return nil
		},
		SnapRemove: func(ctx context.Context, ns rbdnotify.SnapshotNamespace, name string) error {
			calls <- call{"remove", ns, name}
			if name == "missing" {
				return fmt.Errorf("no snapshot: %w", syscall.ENOENT)
			}
			return nil
		},
	})
	owner := l.ClientID()
	other := rbdnotify.ClientID{GID: p2.Client().ID, Handle: s.w.Cookie()}
	mirror := rbdnotify.SnapshotNamespace{Type: rbdnotify.SnapNamespaceMirror, Raw: []byte{0, 1}}

	req := rbdnotify.AsyncRequestID{Client: other, RequestID: 3}
	r, answered := replyOf(t, notify(t, p2, rbdnotify.SnapCreate{Request: req, Name: "sync", Namespace: mirror}), owner)
	if !answered || r.Result != 0 {
		t.Fatalf("snap create accepted? %v %d", answered, r.Result)
	}
	testwait.For(t, 5*time.Second, "AsyncComplete", func() bool { return len(s.find(rbdnotify.OpAsyncComplete)) == 1 })
	if got := s.find(rbdnotify.OpAsyncComplete)[0]; got != (rbdnotify.AsyncComplete{Request: req, Result: 0}) {
		t.Fatalf("completion %#v", got)
	}
	if c := <-calls; c.op != "create" || c.name != "sync" || c.ns.Type != rbdnotify.SnapNamespaceMirror || string(c.ns.Raw) != "\x00\x01" {
		t.Fatalf("handler got %+v", c)
	}
	for _, tc := range []struct {
		msg  rbdnotify.Payload
		want int32
	}{
		{rbdnotify.SnapCreate{Name: "old-client"}, 0},
		{rbdnotify.SnapCreate{Name: "taken"}, -int32(syscall.EEXIST)},
		{rbdnotify.SnapRemove{Name: "s"}, 0},
		{rbdnotify.SnapRemove{Name: "missing"}, -int32(syscall.ENOENT)},
	} {
		r, answered := replyOf(t, notify(t, p2, tc.msg), owner)
		if !answered || r.Result != tc.want {
			t.Errorf("%v: answered %v %d, want %d", tc.msg, answered, r.Result, tc.want)
		}
		<-calls
	}
	if n := len(s.find(rbdnotify.OpAsyncComplete)); n != 1 {
		t.Fatalf("%d AsyncCompletes, want 1", n)
	}
}

// TestRequester: the librbd-style client side — requests reach the owner
// with async request ids, results come back through AsyncComplete, errors
// carry the owner's errno, a slow request is sent again and still runs
// once, and an image nobody owns gives ErrNoOwner.
func TestRequester(t *testing.T) {
	dir, _, p := newHeader(t)
	_, p2 := client(t, dir)
	ctx := context.Background()
	r, err := exclusivelock.NewRequester(ctx, p2, oid)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(context.Background())
	r.RequestTimeout = 300 * time.Millisecond
	if err := r.SnapCreate(ctx, rbdnotify.SnapshotNamespace{}, "x"); !errors.Is(err, exclusivelock.ErrNoOwner) {
		t.Fatalf("request to an image nobody owns: %v", err)
	}
	var creates atomic.Int32
	acquire(t, p, exclusivelock.Options{
		SnapCreate: func(ctx context.Context, ns rbdnotify.SnapshotNamespace, name string, flags uint64) error {
			creates.Add(1)
			switch name {
			case "taken":
				return fmt.Errorf("exists: %w", syscall.EEXIST)
			case "slow":
				time.Sleep(time.Second) // longer than the request timeout: sent again
			}
			return nil
		},
		SnapRemove: func(ctx context.Context, ns rbdnotify.SnapshotNamespace, name string) error {
			return fmt.Errorf("no snapshot: %w", syscall.ENOENT)
		},
	})
	if err := r.SnapCreate(ctx, rbdnotify.SnapshotNamespace{}, "s1"); err != nil {
		t.Fatal(err)
	}
	if err := r.SnapCreate(ctx, rbdnotify.SnapshotNamespace{}, "taken"); !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("duplicate: %v", err)
	}
	if err := r.SnapRemove(ctx, rbdnotify.SnapshotNamespace{}, "nope"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("remove of a missing snapshot: %v", err)
	}
	creates.Store(0)
	if err := r.SnapCreate(ctx, rbdnotify.SnapshotNamespace{}, "slow"); err != nil {
		t.Fatal(err)
	}
	if n := creates.Load(); n != 1 {
		t.Fatalf("a resent request ran %d times", n)
	}
}
