package exclusivelock_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clslock "github.com/csi-rbdj/csi-rbdj/pkg/cls/lock"
	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local/localtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdnotify"
	"github.com/csi-rbdj/csi-rbdj/pkg/testwait"
)

const oid = "rbd_header.1234abcd"

// client opens a new client instance of the cluster in dir.
func client(t *testing.T, dir string) (*local.Cluster, objstore.Pool) {
	t.Helper()
	return localtest.Open(t, dir, local.Options{NoSync: true})
}

func newHeader(t *testing.T) (string, *local.Cluster, objstore.Pool) {
	t.Helper()
	dir := t.TempDir()
	c, p := client(t, dir)
	op := &objstore.WriteOp{}
	op.Create(false)
	if err := p.Operate(context.Background(), oid, op); err != nil {
		t.Fatal(err)
	}
	return dir, c, p
}

// spy watches the header like a librbd client that does not own the lock:
// it records every message and acknowledges them empty, or not at all when
// frozen.
type spy struct {
	mu     sync.Mutex
	msgs   []rbdnotify.NotifyMessage
	frozen atomic.Bool
	held   []*objstore.Notification // unacknowledged while frozen
	w      objstore.Watch
}

func (s *spy) HandleNotify(_ context.Context, n *objstore.Notification) {
	m, err := rbdnotify.Parse(n.Payload)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.msgs = append(s.msgs, m)
	}
	if s.frozen.Load() {
		s.held = append(s.held, n)
		return
	}
	n.Ack(nil)
}

func (s *spy) HandleWatchError(context.Context, error) {}

func (s *spy) find(op rbdnotify.Op) []rbdnotify.Payload {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []rbdnotify.Payload
	for _, m := range s.msgs {
		if m.Payload.Op() == op {
			out = append(out, m.Payload)
		}
	}
	return out
}

// headerWithSpy prepares an image header with a client p to lock it and
// a second client p2 of the same store whose spy s watches the header.
func headerWithSpy(t *testing.T) (p, p2 objstore.Pool, s *spy) {
	t.Helper()
	dir, _, p := newHeader(t)
	_, p2 = client(t, dir)
	return p, p2, watchSpy(t, p2)
}

func watchSpy(t *testing.T, p objstore.Pool) *spy {
	t.Helper()
	s := &spy{}
	w, err := p.Watch(context.Background(), oid, s)
	if err != nil {
		t.Fatal(err)
	}
	s.w = w
	t.Cleanup(func() { w.Close(context.Background()) })
	return s
}

func acquire(t *testing.T, p objstore.Pool, o exclusivelock.Options) *exclusivelock.Lock {
	t.Helper()
	l, err := exclusivelock.Acquire(context.Background(), p, oid, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Release(context.Background()) })
	return l
}

func lockInfo(t *testing.T, p objstore.Pool) clslock.LockInfo {
	t.Helper()
	info, err := clslock.GetLockInfo(context.Background(), p, oid, exclusivelock.LockName)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// cookieOnDisk returns the single holder's cookie.
func cookieOnDisk(t *testing.T, p objstore.Pool) string {
	t.Helper()
	for id := range lockInfo(t, p).Lockers {
		return id.Cookie
	}
	return ""
}

// notify sends a librbd message to the header and returns the replies by
// watcher.
func notify(t *testing.T, p objstore.Pool, msg rbdnotify.Payload) map[objstore.WatcherInfo][]byte {
	t.Helper()
	res, err := p.Notify(context.Background(), oid, rbdnotify.Marshal(msg), 2*time.Second)
	if err != nil {
		t.Fatalf("notify %v: %v", msg.Op(), err)
	}
	out := map[objstore.WatcherInfo][]byte{}
	for _, a := range res.Acks {
		out[objstore.WatcherInfo{Client: objstore.ClientInfo{ID: a.Watcher.Client.ID}, Cookie: a.Watcher.Cookie}] = a.Reply
	}
	return out
}

func replyOf(t *testing.T, replies map[objstore.WatcherInfo][]byte, id rbdnotify.ClientID) (rbdnotify.ResponseMessage, bool) {
	t.Helper()
	b, ok := replies[objstore.WatcherInfo{Client: objstore.ClientInfo{ID: id.GID}, Cookie: id.Handle}]
	if !ok {
		t.Fatalf("no acknowledgement from %v in %v", id, replies)
	}
	r, answered, err := rbdnotify.ParseResponse(b)
	if err != nil {
		t.Fatal(err)
	}
	return r, answered
}

// TestAcquireRelease: the lock is librbd's (tag, cookie naming the watch
// handle), announced with AcquiredLock and ReleasedLock.
func TestAcquireRelease(t *testing.T) {
	p, _, s := headerWithSpy(t)
	l, err := exclusivelock.Acquire(context.Background(), p, oid, exclusivelock.Options{Description: "node a"})
	if err != nil {
		t.Fatal(err)
	}
	id := l.ClientID()
	if id.GID != p.Client().ID || id.Handle == 0 {
		t.Fatalf("client id %v", id)
	}
	info := lockInfo(t, p)
	if info.Tag != exclusivelock.LockTag || info.Type != clslock.LockExclusive || len(info.Lockers) != 1 {
		t.Fatalf("lock info %+v", info)
	}
	if c := cookieOnDisk(t, p); c != "auto "+strconv.FormatUint(id.Handle, 10) || c != l.Cookie() {
		t.Fatalf("cookie %q, lock says %q, handle %d", c, l.Cookie(), id.Handle)
	}
	testwait.For(t, 2*time.Second, "AcquiredLock", func() bool { return len(s.find(rbdnotify.OpAcquiredLock)) == 1 })
	if got := s.find(rbdnotify.OpAcquiredLock)[0]; got != (rbdnotify.AcquiredLock{Client: id}) {
		t.Fatalf("announced %#v, want client %v", got, id)
	}
	if err := l.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := s.find(rbdnotify.OpReleasedLock); len(got) != 1 || got[0] != (rbdnotify.ReleasedLock{Client: id}) {
		t.Fatalf("released announcements %#v", got)
	}
	if n := len(lockInfo(t, p).Lockers); n != 0 {
		t.Fatalf("%d holders after release", n)
	}
	if ws, _ := p.ListWatchers(context.Background(), oid); len(ws) != 1 {
		t.Fatalf("watchers after release: %v (want only the spy)", ws)
	}
}

// TestOwnerAnswers: the owner refuses RequestLock with -EROFS, answers
// header updates, refuses maintenance and unknown ops with -EOPNOTSUPP;
// a watcher that does not own the lock acknowledges empty.
func TestOwnerAnswers(t *testing.T) {
	p, p2, s := headerWithSpy(t)
	var updates atomic.Int32
	l := acquire(t, p, exclusivelock.Options{OnHeaderUpdate: func() { updates.Add(1) }})
	owner := l.ClientID()
	other := rbdnotify.ClientID{GID: p2.Client().ID, Handle: s.w.Cookie()}

	for _, tc := range []struct {
		msg  rbdnotify.Payload
		want int32 // the owner's ResponseMessage result
	}{
		{rbdnotify.RequestLock{Client: other}, -int32(syscall.EROFS)},
		{rbdnotify.RequestLock{Client: other, Force: true}, -int32(syscall.EROFS)},
		{rbdnotify.SnapCreate{Name: "s"}, -int32(syscall.EOPNOTSUPP)},
		{rbdnotify.Flatten{}, -int32(syscall.EOPNOTSUPP)},
		{rbdnotify.UpdateFeatures{Features: 4}, -int32(syscall.EOPNOTSUPP)},
		{rbdnotify.Unknown{Code: 99}, -int32(syscall.EOPNOTSUPP)},
		{rbdnotify.Resize{Request: rbdnotify.AsyncRequestID{Client: other, RequestID: 1}, Size: 1 << 30}, -int32(syscall.EOPNOTSUPP)}, // no Resize handler
		{rbdnotify.HeaderUpdate{}, 0},
	} {
		replies := notify(t, p2, tc.msg)
		r, answered := replyOf(t, replies, owner)
		if !answered || r.Result != tc.want {
			t.Errorf("%v: owner answered %v %d, want %d", tc.msg.Op(), answered, r.Result, tc.want)
		}
		if _, answered := replyOf(t, replies, other); answered {
			t.Errorf("%v: the non-owner answered", tc.msg.Op())
		}
	}
	before := l.UpdateSeq()
	// librbd's legacy header update: an empty notification.
	if _, err := p2.Notify(context.Background(), oid, nil, time.Second); err != nil {
		t.Fatal(err)
	}
	if l.UpdateSeq() != before+1 || updates.Load() != 2 {
		t.Fatalf("header updates: seq %d -> %d, callbacks %d", before, l.UpdateSeq(), updates.Load())
	}
	// The owner's own RequestLock (same client id) is acknowledged empty.
	if r, answered := replyOf(t, notify(t, p2, rbdnotify.RequestLock{Client: owner}), owner); answered {
		t.Errorf("owner answered its own lock request: %d", r.Result)
	}
}

// TestLiveHolderRefuses: a second Acquire while the owner answers fails
// with ErrLocked naming the holder, promptly.
func TestLiveHolderRefuses(t *testing.T) {
	dir, c1, p := newHeader(t)
	c2, p2 := client(t, dir)
	acquire(t, p, exclusivelock.Options{Description: "csi-rbdj node a"})
	start := time.Now()
	_, err := exclusivelock.Acquire(context.Background(), p2, oid, exclusivelock.Options{Fencer: c2})
	if !errors.Is(err, exclusivelock.ErrLocked) {
		t.Fatalf("second acquire: %v", err)
	}
	for _, want := range []string{p.Client().Name(), p.Client().Addr, "csi-rbdj node a", "refused"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("refusal took %v", d)
	}
	if bl, _ := c1.ListBlocklist(context.Background()); len(bl) != 0 {
		t.Fatalf("a live holder was fenced: %v", bl)
	}
	if ws, _ := p2.ListWatchers(context.Background(), oid); len(ws) != 1 {
		t.Fatalf("the failed acquire left its watch: %v", ws)
	}
}

// holdRaw takes the lock the way a librbd client does, with a spy as its
// header watch.
func holdRaw(t *testing.T, p objstore.Pool) *spy {
	t.Helper()
	s := watchSpy(t, p)
	op := &objstore.WriteOp{}
	clslock.Lock(op, exclusivelock.LockName, clslock.LockExclusive, "auto "+strconv.FormatUint(s.w.Cookie(), 10), exclusivelock.LockTag, "", 0, 0)
	if err := p.Operate(context.Background(), oid, op); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestFrozenHolderFenced: a holder that still watches the header but does
// not answer a RequestLock within OwnerTimeout is fenced, then its lock is
// broken; with a negative OwnerTimeout it is not.
func TestFrozenHolderFenced(t *testing.T) {
	dir, _, _ := newHeader(t)
	c1, p1 := client(t, dir)
	s := holdRaw(t, p1)
	s.frozen.Store(true)
	c2, p2 := client(t, dir)

	_, err := exclusivelock.Acquire(context.Background(), p2, oid, exclusivelock.Options{Fencer: c2, OwnerTimeout: -1})
	if !errors.Is(err, exclusivelock.ErrLocked) || !strings.Contains(err.Error(), "still watches") {
		t.Fatalf("acquire without fencing unresponsive holders: %v", err)
	}

	const timeout = 300 * time.Millisecond
	start := time.Now()
	l, err := exclusivelock.Acquire(context.Background(), p2, oid, exclusivelock.Options{Fencer: c2, OwnerTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(context.Background())
	took := time.Since(start)
	t.Logf("takeover of a frozen holder: %v (owner timeout %v)", took, timeout)
	if took < timeout {
		t.Errorf("took %v, less than the owner timeout", took)
	}
	if got := s.find(rbdnotify.OpRequestLock); len(got) == 0 {
		t.Errorf("the holder was not asked for the lock")
	}
	bl, err := c2.ListBlocklist(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := bl[p1.Client().Addr]; !ok {
		t.Fatalf("frozen holder %s not fenced: %v", p1.Client().Addr, bl)
	}
	op := &objstore.WriteOp{}
	op.WriteFull([]byte("zombie"))
	if err := p1.Operate(context.Background(), "x", op); !errors.Is(err, objstore.ErrBlocklisted) {
		t.Fatalf("fenced holder's write: %v", err)
	}
	_ = c1
	if c := cookieOnDisk(t, p2); c != l.Cookie() {
		t.Fatalf("holder cookie %q, want ours %q", c, l.Cookie())
	}
}

// TestDeadHolderBroken: a holder without a watch is dead: fenced and
// broken at once; without a fencer it is not broken.
func TestDeadHolderBroken(t *testing.T) {
	dir, _, _ := newHeader(t)
	_, p1 := client(t, dir)
	s := holdRaw(t, p1)
	s.w.Close(context.Background())
	c2, p2 := client(t, dir)
	if _, err := exclusivelock.Acquire(context.Background(), p2, oid, exclusivelock.Options{}); !errors.Is(err, exclusivelock.ErrLocked) || !strings.Contains(err.Error(), "no fencer") {
		t.Fatalf("acquire without fencer: %v", err)
	}
	start := time.Now()
	l := acquire(t, p2, exclusivelock.Options{Fencer: c2})
	t.Logf("takeover of a holder without a watch: %v", time.Since(start))
	if bl, _ := c2.ListBlocklist(context.Background()); len(bl) != 1 {
		t.Fatalf("blocklist %v", bl)
	}
	if c := cookieOnDisk(t, p2); c != l.Cookie() {
		t.Fatalf("cookie %q", c)
	}
}

// TestDeadOwnersBroken: a holder named in Dead (this plugin's previous
// incarnation) is fenced without being asked.
func TestDeadOwnersBroken(t *testing.T) {
	dir, _, _ := newHeader(t)
	_, p1 := client(t, dir)
	s := holdRaw(t, p1)
	c2, p2 := client(t, dir)
	acquire(t, p2, exclusivelock.Options{Fencer: c2, Dead: []string{p1.Client().Addr}})
	if got := s.find(rbdnotify.OpRequestLock); len(got) != 0 {
		t.Errorf("a known-dead holder was asked: %v", got)
	}
}

// TestCooperativeHolderReleases: a holder that agrees to release (librbd's
// automatic policy answers RequestLock with 0 and releases) is waited for,
// not fenced. librbd also answers 0 without releasing when a request
// arrives while it is still taking the lock (accept_request is false
// outside STATE_LOCKED): such a holder is asked again, as librbd's own
// requester does, instead of being waited for until Options.ReleaseTimeout.
func TestCooperativeHolderReleases(t *testing.T) {
	for _, tc := range []struct {
		name string
		// ignore: requests answered 0 without releasing the lock
		ignore int32
	}{
		{"releases on the first request", 0},
		{"agrees while still taking the lock", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, _, _ := newHeader(t)
			coop := &releaser{}
			coop.ignore.Store(tc.ignore)
			holdWith(t, dir, coop, "")
			c2, p2 := client(t, dir)
			acquire(t, p2, exclusivelock.Options{Fencer: c2})
			if bl, _ := c2.ListBlocklist(context.Background()); len(bl) != 0 {
				t.Fatalf("a cooperative holder was fenced: %v", bl)
			}
			if got, want := coop.requests.Load(), tc.ignore+1; got != want {
				t.Fatalf("the holder got %d lock requests, want %d", got, want)
			}
		})
	}
}

// holdWith takes the lock the way a librbd client does, from a new client
// of the store in dir, with r as its header watch and the lock's
// description.
func holdWith(t *testing.T, dir string, r *releaser, description string) {
	t.Helper()
	_, r.p = client(t, dir)
	w, err := r.p.Watch(context.Background(), oid, r)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(context.Background()) })
	r.cookie = "auto " + strconv.FormatUint(w.Cookie(), 10)
	op := &objstore.WriteOp{}
	clslock.Lock(op, exclusivelock.LockName, clslock.LockExclusive, r.cookie, exclusivelock.LockTag, description, 0, 0)
	if err := r.p.Operate(context.Background(), oid, op); err != nil {
		t.Fatal(err)
	}
}

type releaser struct {
	p        objstore.Pool
	cookie   string
	refuse   atomic.Int32 // requests still to refuse with -EROFS (-1: all)
	ignore   atomic.Int32 // then, requests still to answer 0 without releasing
	requests atomic.Int32
}

func (r *releaser) HandleNotify(_ context.Context, n *objstore.Notification) {
	m, err := rbdnotify.Parse(n.Payload)
	if err != nil || m.Payload.Op() != rbdnotify.OpRequestLock {
		n.Ack(nil)
		return
	}
	r.requests.Add(1)
	if left := r.refuse.Load(); left != 0 {
		if left > 0 {
			r.refuse.Add(-1)
		}
		n.Ack(rbdnotify.Response(syscall.EROFS))
		return
	}
	n.Ack(rbdnotify.Response(0))
	if r.ignore.Add(-1) >= 0 {
		return
	}
	go func() {
		time.Sleep(100 * time.Millisecond)
		op := &objstore.WriteOp{}
		clslock.Unlock(op, exclusivelock.LockName, r.cookie)
		r.p.Operate(context.Background(), oid, op)
	}()
}

func (r *releaser) HandleWatchError(context.Context, error) {}

// TestRefusingHolder: a librbd holder that refuses the lock (-EROFS), as
// rbd-mirror does with an image it replays into until it notices a
// promotion, is asked again for Options.RefusedWait and the lock is taken
// once it lets go; one that goes on refusing fails Acquire after that
// long; a holder with a description (another csi-rbdj node) or a zero
// RefusedWait fails it at the first refusal. None is fenced.
func TestRefusingHolder(t *testing.T) {
	for _, tc := range []struct {
		name        string
		description string
		refuse      int32 // -1: every request
		ignore      int32 // then, agreements without releasing
		wait        time.Duration
		release     time.Duration // Options.ReleaseTimeout (0: default)
		ctxTimeout  time.Duration // 0: none
		wantErr     string        // "" : acquired
		wantReqs    int32
		minTime     time.Duration
		maxTime     time.Duration
	}{
		{name: "mirror daemon lets go", refuse: 2, wait: 20 * time.Second, wantReqs: 3, maxTime: 10 * time.Second},
		// ReleaseTimeout runs from the first agreement, not from the
		// first request: 4 s of refusals leave the 3 s intact.
		{name: "agrees after refusing", refuse: 2, ignore: 1, wait: 20 * time.Second, release: 3 * time.Second, wantReqs: 4, minTime: 5 * time.Second, maxTime: 12 * time.Second},
		{name: "refuses for longer than the wait", refuse: -1, wait: 2 * time.Second, wantErr: "still refused after 2s", minTime: 2 * time.Second, maxTime: 8 * time.Second},
		{name: "caller gives up first", refuse: -1, wait: 20 * time.Second, ctxTimeout: time.Second, wantErr: "context deadline exceeded", minTime: time.Second, maxTime: 5 * time.Second},
		{name: "csi-rbdj holder not waited for", description: "csi-rbdj node a", refuse: -1, wait: 20 * time.Second, wantErr: "refused", wantReqs: 1, maxTime: time.Second},
		{name: "no wait", refuse: 1, wantErr: "refused", wantReqs: 1, maxTime: time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, _, _ := newHeader(t)
			h := &releaser{}
			h.refuse.Store(tc.refuse)
			h.ignore.Store(tc.ignore)
			holdWith(t, dir, h, tc.description)
			c2, p2 := client(t, dir)
			ctx := context.Background()
			if tc.ctxTimeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.ctxTimeout)
				defer cancel()
			}
			start := time.Now()
			l, err := exclusivelock.Acquire(ctx, p2, oid, exclusivelock.Options{Fencer: c2, RefusedWait: tc.wait, ReleaseTimeout: tc.release})
			took := time.Since(start)
			if l != nil {
				defer l.Release(context.Background())
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("acquire: %v", err)
			case tc.wantErr != "" && (!errors.Is(err, exclusivelock.ErrLocked) || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("acquire: %v; want ErrLocked saying %q", err, tc.wantErr)
			}
			if took < tc.minTime || took > tc.maxTime {
				t.Errorf("acquire took %v, want %v to %v", took, tc.minTime, tc.maxTime)
			}
			if got := h.requests.Load(); tc.wantReqs > 0 && got != tc.wantReqs {
				t.Errorf("the holder got %d lock requests, want %d", got, tc.wantReqs)
			}
			if bl, _ := c2.ListBlocklist(context.Background()); len(bl) != 0 {
				t.Fatalf("a refusing holder was fenced: %v", bl)
			}
		})
	}
}

// removeWatchRegistration breaks a local watch for real: its registration
// disappears, as when the OSD drops a watch that timed out.
func removeWatchRegistration(t *testing.T, dir string, gid, cookie uint64) {
	t.Helper()
	regs, err := filepath.Glob(filepath.Join(dir, "pools", "*", "watch", "*", fmt.Sprintf("%d.*.%d", gid, cookie)))
	if err != nil || len(regs) != 1 {
		t.Fatalf("registration of watch %d of client %d: %v %v", cookie, gid, regs, err)
	}
	if err := os.Remove(regs[0]); err != nil {
		t.Fatal(err)
	}
}

// TestRewatch: when the owner's watch is lost, it re-registers it, moves
// the lock's cookie to the new handle, counts the gap as a header update,
// and stays the (live) owner.
func TestRewatch(t *testing.T) {
	dir, _, p := newHeader(t)
	var updates atomic.Int32
	l := acquire(t, p, exclusivelock.Options{OnHeaderUpdate: func() { updates.Add(1) }})
	oldID, oldCookie, seq := l.ClientID(), l.Cookie(), l.UpdateSeq()
	removeWatchRegistration(t, dir, oldID.GID, oldID.Handle)
	testwait.For(t, 5*time.Second, "the cookie to move", func() bool { return l.Cookie() != oldCookie })
	newID := l.ClientID()
	if newID.Handle == oldID.Handle || l.Cookie() != "auto "+strconv.FormatUint(newID.Handle, 10) {
		t.Fatalf("after re-watch: id %v cookie %q", newID, l.Cookie())
	}
	if c := cookieOnDisk(t, p); c != l.Cookie() {
		t.Fatalf("cookie on the header %q, lock says %q", c, l.Cookie())
	}
	ws, err := p.ListWatchers(context.Background(), oid)
	if err != nil || len(ws) != 1 || ws[0].Cookie != newID.Handle {
		t.Fatalf("watchers %v %v", ws, err)
	}
	if l.UpdateSeq() < seq+2 || updates.Load() < 2 || l.Err() != nil {
		t.Fatalf("seq %d -> %d, callbacks %d, err %v", seq, l.UpdateSeq(), updates.Load(), l.Err())
	}
	// Still the live owner: another client is refused.
	c2, p2 := client(t, dir)
	if _, err := exclusivelock.Acquire(context.Background(), p2, oid, exclusivelock.Options{Fencer: c2}); !errors.Is(err, exclusivelock.ErrLocked) {
		t.Fatalf("acquire after re-watch: %v", err)
	}
	if err := l.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(lockInfo(t, p).Lockers); n != 0 {
		t.Fatalf("%d holders after release", n)
	}
}

// TestRewatchAfterBreakLosesLock: if the lock was broken while the watch
// was down (another client found no watch, fenced and broke it), the
// re-watch finds out and the lock is lost.
func TestRewatchAfterBreakLosesLock(t *testing.T) {
	dir, _, p := newHeader(t)
	l := acquire(t, p, exclusivelock.Options{})
	id := l.ClientID()
	// Break it behind the owner's back (without fencing, to see the
	// re-watch's check rather than the blocklist).
	c2, p2 := client(t, dir)
	_ = c2
	op := &objstore.WriteOp{}
	clslock.BreakLock(op, exclusivelock.LockName, l.Cookie(), clslock.EntityName{Type: clslock.EntityTypeClient, Num: int64(id.GID)})
	if err := p2.Operate(context.Background(), oid, op); err != nil {
		t.Fatal(err)
	}
	removeWatchRegistration(t, dir, id.GID, id.Handle)
	testwait.For(t, 5*time.Second, "the lock to be lost", func() bool { return l.Err() != nil })
	if !errors.Is(l.Err(), exclusivelock.ErrLost) {
		t.Fatalf("err %v", l.Err())
	}
}

// TestFencedOwnerLosesLock: an owner that is blocklisted loses its lock.
func TestFencedOwnerLosesLock(t *testing.T) {
	dir, _, p := newHeader(t)
	l := acquire(t, p, exclusivelock.Options{})
	c2, _ := client(t, dir)
	if err := c2.Blocklist(context.Background(), p.Client().Addr, time.Hour); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, 5*time.Second, "the lock to be lost", func() bool { return l.Err() != nil })
	if !errors.Is(l.Err(), exclusivelock.ErrLost) || !errors.Is(l.Err(), objstore.ErrBlocklisted) {
		t.Fatalf("err %v", l.Err())
	}
	if err := l.Release(context.Background()); err != nil {
		t.Fatalf("release of a lost lock: %v", err)
	}
}

// TestProxiedResize: a librbd client's Resize request is accepted by the
// owner (ResponseMessage 0), performed once even if repeated, and its
// result announced with AsyncComplete; a failure carries its errno.
func TestProxiedResize(t *testing.T) {
	p, p2, s := headerWithSpy(t)
	var calls atomic.Int32
	release := make(chan struct{})
	l := acquire(t, p, exclusivelock.Options{Resize: func(ctx context.Context, size uint64, allowShrink bool) error {
		calls.Add(1)
		<-release
		if size < 1<<20 {
			return fmt.Errorf("shrink refused: %w", syscall.EBUSY)
		}
		return nil
	}})
	owner := l.ClientID()
	req := rbdnotify.AsyncRequestID{Client: rbdnotify.ClientID{GID: p2.Client().ID, Handle: s.w.Cookie()}, RequestID: 7}
	for range 2 { // librbd resends a request it got no completion for
		r, answered := replyOf(t, notify(t, p2, rbdnotify.Resize{Request: req, Size: 64 << 20, AllowShrink: true}), owner)
		if !answered || r.Result != 0 {
			t.Fatalf("resize accepted? %v %d", answered, r.Result)
		}
	}
	close(release)
	testwait.For(t, 5*time.Second, "AsyncComplete", func() bool { return len(s.find(rbdnotify.OpAsyncComplete)) == 1 })
	if got := s.find(rbdnotify.OpAsyncComplete)[0]; got != (rbdnotify.AsyncComplete{Request: req, Result: 0}) {
		t.Fatalf("completion %#v", got)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("resize ran %d times", n)
	}
	req.RequestID++
	notify(t, p2, rbdnotify.Resize{Request: req, Size: 4096})
	testwait.For(t, 5*time.Second, "the second AsyncComplete", func() bool { return len(s.find(rbdnotify.OpAsyncComplete)) == 2 })
	if got := s.find(rbdnotify.OpAsyncComplete)[1]; got != (rbdnotify.AsyncComplete{Request: req, Result: -int32(syscall.EBUSY)}) {
		t.Fatalf("completion %#v", got)
	}
	// A request naming the owner itself is librbd's -ERESTART.
	r, _ := replyOf(t, notify(t, p2, rbdnotify.Resize{Request: rbdnotify.AsyncRequestID{Client: owner, RequestID: 1}, Size: 1 << 30}), owner)
	if r.Result != -int32(syscall.ERESTART) {
		t.Fatalf("own request: %d", r.Result)
	}
}
