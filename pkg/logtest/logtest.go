// Package logtest lets tests check what a component logs through the
// logger it took from its context (klog.FromContext): Context hands out a
// context whose logger carries given values and records every line.
package logtest

import (
	"context"
	"strings"
	"testing"

	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
)

// Logs is what a Context's logger recorded.
type Logs func() string

// Context returns a context whose logger carries keysAndValues and records
// what it logs (also printed through t).
func Context(t testing.TB, keysAndValues ...any) (context.Context, Logs) {
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
	ctx := klog.NewContext(context.Background(), logger.WithValues(keysAndValues...))
	return ctx, func() string { return logger.GetSink().(ktesting.Underlier).GetBuffer().String() }
}

// Line returns the first recorded line containing msg, or "".
func (l Logs) Line(msg string) string {
	for _, line := range strings.Split(l(), "\n") {
		if strings.Contains(line, msg) {
			return line
		}
	}
	return ""
}

// CheckOnce fails t unless each of msgs was logged with key=value exactly
// once in its line (a value from the context's logger, not repeated by the
// component).
func (l Logs) CheckOnce(t testing.TB, key, value string, msgs ...string) {
	t.Helper()
	for _, msg := range msgs {
		line := l.Line(msg)
		if line == "" {
			t.Errorf("%q not logged; logs:\n%s", msg, l())
			continue
		}
		if strings.Count(line, key+"=") != 1 || !strings.Contains(line, key+`="`+value+`"`) {
			t.Errorf("%q not logged with %s=%q exactly once: %s", msg, key, value, line)
		}
	}
}
