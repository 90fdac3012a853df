package objstore

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/testwait"
)

// recorder is a WatchHandler that records its calls and runs hook (if set)
// inside each.
type recorder struct {
	mu    sync.Mutex
	calls []string
	ctxs  []context.Context
	hook  func(ctx context.Context, what string)
}

func (r *recorder) record(ctx context.Context, what string) {
	r.mu.Lock()
	r.calls = append(r.calls, what)
	r.ctxs = append(r.ctxs, ctx)
	hook := r.hook
	r.mu.Unlock()
	if hook != nil {
		hook(ctx, what)
	}
}

func (r *recorder) HandleNotify(ctx context.Context, n *Notification) {
	r.record(ctx, string(n.Payload))
}
func (r *recorder) HandleWatchError(ctx context.Context, err error) {
	r.record(ctx, "lost:"+err.Error())
}

func note(s string) *Notification { return NewNotification(1, 1, 1, []byte(s), nil) }

func TestDispatcher(t *testing.T) {
	type key struct{}
	for _, c := range []struct {
		name string
		run  func(t *testing.T, d *Dispatcher, r *recorder)
	}{
		{"events run in order, one at a time, with the watch context's values", func(t *testing.T, d *Dispatcher, r *recorder) {
			var running, overlap int
			var mu sync.Mutex
			r.hook = func(context.Context, string) {
				mu.Lock()
				running++
				if running > 1 {
					overlap++
				}
				mu.Unlock()
				time.Sleep(time.Millisecond)
				mu.Lock()
				running--
				mu.Unlock()
			}
			for _, s := range []string{"a", "b", "c"} {
				if !d.Notify(note(s)) {
					t.Fatal("notify refused")
				}
			}
			d.Lost(errors.New("gone"))
			testwait.For(t, 5*time.Second, "the four handler calls", func() bool { r.mu.Lock(); defer r.mu.Unlock(); return len(r.calls) == 4 })
			d.Wait(context.Background())
			if got := r.calls; got[0] != "a" || got[1] != "b" || got[2] != "c" || got[3] != "lost:gone" || overlap != 0 {
				t.Fatalf("calls %v overlap %d", got, overlap)
			}
			if v := r.ctxs[0].Value(key{}); v != "v" {
				t.Fatalf("handler context value %v", v)
			}
			if r.ctxs[0].Err() == nil {
				t.Fatal("handler context not cancelled after Wait")
			}
		}},
		{"Wait from outside waits for the running call", func(t *testing.T, d *Dispatcher, r *recorder) {
			entered, release := make(chan struct{}), make(chan struct{})
			r.hook = func(context.Context, string) { close(entered); <-release }
			d.Notify(note("x"))
			<-entered
			waited := make(chan struct{})
			go func() { d.Wait(context.Background()); close(waited) }()
			select {
			case <-waited:
				t.Fatal("Wait returned during a handler call")
			case <-time.After(50 * time.Millisecond):
			}
			close(release)
			<-waited
		}},
		{"Wait with the call's context does not wait for itself", func(t *testing.T, d *Dispatcher, r *recorder) {
			done := make(chan bool, 1)
			r.hook = func(ctx context.Context, _ string) {
				in := d.InCallback(ctx)
				d.Wait(ctx)
				done <- in
			}
			d.Notify(note("x"))
			select {
			case in := <-done:
				if !in {
					t.Fatal("InCallback false inside the call")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Wait from the handler deadlocked")
			}
			d.Wait(context.Background())
		}},
		{"a handler context used after its call is not inside it", func(t *testing.T, d *Dispatcher, r *recorder) {
			d.Notify(note("x"))
			testwait.For(t, 5*time.Second, "the handler call", func() bool { r.mu.Lock(); defer r.mu.Unlock(); return len(r.calls) == 1 })
			r.mu.Lock()
			ctx := r.ctxs[0]
			r.mu.Unlock()
			testwait.For(t, 5*time.Second, "the call to end", func() bool { return !d.InCallback(ctx) })
			// A second call is running: the stale context must not skip it.
			entered, release := make(chan struct{}), make(chan struct{})
			r.hook = func(context.Context, string) { close(entered); <-release }
			d.Notify(note("y"))
			<-entered
			if d.InCallback(ctx) {
				t.Fatal("an earlier call's context counts as the running call's")
			}
			other := NewDispatcher(context.Background(), r, nil)
			defer other.Wait(context.Background())
			if other.InCallback(ctx) {
				t.Fatal("another dispatcher's call context counts as inside")
			}
			close(release)
			d.Wait(ctx) // must wait (not inside): returns once the call ended
		}},
		{"a loss is reported once and ends notifications; Stop reports the first call", func(t *testing.T, d *Dispatcher, r *recorder) {
			if stopped, lost := d.State(); stopped || lost != nil {
				t.Fatalf("new dispatcher: stopped %v, lost %v", stopped, lost)
			}
			gone := errors.New("gone")
			if !d.Lost(gone) {
				t.Fatal("first loss refused")
			}
			if d.Lost(errors.New("again")) || d.Notify(note("late")) {
				t.Fatal("an event was queued after the loss")
			}
			testwait.For(t, 5*time.Second, "the handler call", func() bool { r.mu.Lock(); defer r.mu.Unlock(); return len(r.calls) == 1 })
			if stopped, lost := d.State(); stopped || lost != gone {
				t.Fatalf("after the loss: stopped %v, lost %v", stopped, lost)
			}
			if !d.Stop() || d.Stop() {
				t.Fatal("Stop does not report the first call alone")
			}
			if stopped, lost := d.State(); !stopped || lost != gone {
				t.Fatalf("after Stop: stopped %v, lost %v", stopped, lost)
			}
			d.Wait(context.Background())
			if len(r.calls) != 1 || r.calls[0] != "lost:gone" {
				t.Fatalf("calls %v", r.calls)
			}
		}},
		{"events after Stop are refused and queued ones dropped", func(t *testing.T, d *Dispatcher, r *recorder) {
			entered, release := make(chan struct{}), make(chan struct{})
			r.hook = func(_ context.Context, what string) {
				if what == "first" {
					close(entered)
					<-release
				}
			}
			d.Notify(note("first"))
			<-entered
			d.Notify(note("queued"))
			d.Stop()
			if d.Notify(note("late")) || d.Lost(errors.New("late")) {
				t.Fatal("an event was queued after Stop")
			}
			close(release)
			d.Wait(context.Background())
			if len(r.calls) != 1 {
				t.Fatalf("calls after Stop: %v", r.calls)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := &recorder{}
			exited := make(chan struct{})
			d := NewDispatcher(context.WithValue(context.Background(), key{}, "v"), r, func() { close(exited) })
			c.run(t, d, r)
			d.Wait(context.Background())
			select {
			case <-exited:
			case <-time.After(5 * time.Second):
				t.Fatal("onExit not called")
			}
		})
	}
}
