// Package testwait lets tests wait for a condition that another goroutine
// or process brings about: it polls until the condition holds, or receives
// what the other side sends, and fails the test after a timeout.
package testwait

import (
	"testing"
	"time"
)

// interval is how often For polls: short against the timeouts tests use,
// long enough not to load a shared machine.
const interval = 10 * time.Millisecond

// For polls cond until it holds, or fails t after timeout saying what it
// waited for.
func For(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(interval)
	}
}

// Recv receives a value from ch, or fails t after timeout saying what it
// waited for (then, with a t whose Fatalf returns, it returns the zero
// value).
func Recv[T any](t testing.TB, ch <-chan T, timeout time.Duration, what string) T {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
		var zero T
		return zero
	}
}
