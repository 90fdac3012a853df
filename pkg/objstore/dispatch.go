package objstore

import (
	"context"
	"sync"
)

// Dispatcher is the part of a watch that backends share: it calls the
// watch's handler for queued events one at a time, from a goroutine it owns,
// so that the backend's own callback thread (librados', a socket reader)
// only queues and never waits for a handler. It also keeps the watch's
// state: established, lost (reported to the handler once, after which no
// notification is delivered) or closed (stopped).
//
// Each handler call gets a context that carries a token of that call.
// Watch.Close passes its context to Wait, which therefore knows without
// looking at goroutine identities whether it is called from inside one of
// this watch's handler calls (then it must not wait for that call: it would
// wait for itself).
type Dispatcher struct {
	h      WatchHandler
	base   context.Context
	cancel context.CancelFunc
	onExit func()

	mu      sync.Mutex
	queue   []func(ctx context.Context)
	stopped bool
	lost    error          // the loss reported, if any
	current *dispatchToken // the running handler call, if any

	kick chan struct{}
	stop chan struct{}
	done chan struct{}
}

// dispatchToken marks the context of one handler call.
type dispatchToken struct{ d *Dispatcher }

type dispatchKey struct{}

// NewDispatcher starts a dispatcher for h. Handler calls get a context
// derived from ctx without its cancellation (a watch outlives the call that
// registered it, but keeps its values, e.g. the logger), cancelled when the
// dispatcher stops (Stop, Wait: the watch is closed). onExit, if not nil, runs when the dispatcher's goroutine
// ends (a backend that counts its goroutines passes its WaitGroup's Done).
func NewDispatcher(ctx context.Context, h WatchHandler, onExit func()) *Dispatcher {
	base, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d := &Dispatcher{
		h: h, base: base, cancel: cancel, onExit: onExit,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	go d.run()
	return d
}

// Notify queues a HandleNotify call; false if the dispatcher was stopped or
// the watch lost.
func (d *Dispatcher) Notify(n *Notification) bool {
	return d.enqueue(nil, func(ctx context.Context) { d.h.HandleNotify(ctx, n) })
}

// Lost marks the watch lost with err and queues a HandleWatchError call;
// false, and nothing reported, if the dispatcher was stopped or the watch
// was lost already: a loss is reported once.
func (d *Dispatcher) Lost(err error) bool {
	return d.enqueue(err, func(ctx context.Context) { d.h.HandleWatchError(ctx, err) })
}

// State reports whether the dispatcher was stopped (the watch closed) and
// the loss reported, if any.
func (d *Dispatcher) State() (stopped bool, lost error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stopped, d.lost
}

// enqueue queues f unless the dispatcher was stopped or the watch lost; a
// non-nil lost marks the watch lost.
func (d *Dispatcher) enqueue(lost error, f func(ctx context.Context)) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped || d.lost != nil {
		return false
	}
	if lost != nil {
		d.lost = lost
	}
	d.queue = append(d.queue, f)
	select {
	case d.kick <- struct{}{}:
	default:
	}
	return true
}

// Stop drops the queued events: no handler call starts after it returns. It
// does not wait for a running call (see Wait). It reports whether this call
// stopped the dispatcher (false if it was stopped already), so that the
// watch's Close unregisters it once.
func (d *Dispatcher) Stop() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return false
	}
	d.stopped = true
	d.queue = nil
	d.cancel()
	close(d.stop)
	return true
}

// Wait stops the dispatcher and waits until its goroutine has ended, that
// is until a running handler call has returned, unless ctx is the context
// of that very call (Close called from the watch's own handler): then it
// returns at once and the goroutine ends when the call returns.
func (d *Dispatcher) Wait(ctx context.Context) {
	d.Stop()
	if d.InCallback(ctx) {
		return
	}
	<-d.done
}

// InCallback reports whether ctx is (derived from) the context of this
// dispatcher's running handler call.
func (d *Dispatcher) InCallback(ctx context.Context) bool {
	if ctx == nil {
		return false
	}
	t, _ := ctx.Value(dispatchKey{}).(*dispatchToken)
	if t == nil || t.d != d {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.current == t
}

// run calls the handler for queued events, one at a time.
func (d *Dispatcher) run() {
	defer func() {
		close(d.done)
		if d.onExit != nil {
			d.onExit()
		}
	}()
	for {
		select {
		case <-d.stop:
			return
		case <-d.kick:
		}
		for {
			d.mu.Lock()
			if len(d.queue) == 0 || d.stopped {
				d.mu.Unlock()
				break
			}
			f := d.queue[0]
			d.queue = d.queue[1:]
			t := &dispatchToken{d: d}
			d.current = t
			d.mu.Unlock()
			f(context.WithValue(d.base, dispatchKey{}, t))
			d.mu.Lock()
			d.current = nil
			d.mu.Unlock()
		}
	}
}
