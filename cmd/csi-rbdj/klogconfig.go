package main

// klog's global configuration: the only calls of klog's package-level
// functions in the tree besides InitFlags. hack/logcheck.conf exempts this
// file, and only it, from logcheck's contextual check; everything else logs
// through a logger from its context or its owner.

import (
	"io"

	"k8s.io/klog/v2"
)

// flushLogs writes out what klog still buffers (before the process exits).
func flushLogs() { klog.Flush() }

// logToFile sends klog's output to w instead of stderr (the demo keeps the
// controller's log in a file so that its own output stays readable).
func logToFile(w io.Writer) {
	klog.LogToStderr(false)
	klog.SetOutput(w)
}
