// Package testproc runs the test binary again as a helper child process,
// for tests that crash, kill or share state with another process: the child
// runs the tests that match a pattern (or none, for a TestMain that looks
// at an environment variable), with extra environment variables, and is
// killed by its PID and reaped when the test ends.
package testproc

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Command returns the test binary as a command that runs the tests matching
// run ("^$": none) with env added to the environment.
func Command(run string, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run="+run)
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// ChildEnv returns environment variable name, which the parent test sets
// (Command's env) to run a test as its helper child. Run any other way
// (name unset) the test is skipped, with why (whose child it is).
func ChildEnv(t testing.TB, name, why string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Skip(why)
	}
	return v
}

// reapTimeout bounds how long the end of a test waits for a killed child
// (one stuck in the kernel, say on a dead FUSE mount, may never exit).
const reapTimeout = 30 * time.Second

// Proc is a child started by Start.
type Proc struct {
	Cmd *exec.Cmd
	// Stdout is a pipe from the child's stdout, unless Cmd.Stdout was set.
	// Read what is needed before Wait: Wait closes it once the child exits.
	Stdout io.ReadCloser
	// Stderr holds what the child wrote to stderr, unless Cmd.Stderr was
	// set; it is logged if the test fails.
	Stderr *Buffer

	waitOnce sync.Once
	waitErr  error
	exited   chan struct{}
}

// Start starts cmd (from Command; its stdin is the caller's to set). At
// the end of the test the child is sent SIGKILL and reaped, which is waited
// for up to 30 seconds.
func Start(t testing.TB, cmd *exec.Cmd) *Proc {
	t.Helper()
	p := &Proc{Cmd: cmd, exited: make(chan struct{})}
	if cmd.Stdout == nil {
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		p.Stdout = stdout
	}
	if cmd.Stderr == nil {
		p.Stderr = &Buffer{}
		cmd.Stderr = p.Stderr
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		go p.Wait()
		select {
		case <-p.exited:
		case <-time.After(reapTimeout):
			t.Errorf("child pid %d did not exit", pid)
		}
		if t.Failed() && p.Stderr != nil && p.Stderr.Len() > 0 {
			t.Logf("child pid %d stderr:\n%s", pid, p.Stderr.String())
		}
	})
	return p
}

// Wait waits for the child to exit (once; later calls return the same
// error) and releases its resources.
func (p *Proc) Wait() error {
	p.waitOnce.Do(func() {
		p.waitErr = p.Cmd.Wait()
		close(p.exited)
	})
	return p.waitErr
}

// Exited is closed once Wait has seen the child exit.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Kill sends the child SIGKILL and waits for it.
func (p *Proc) Kill() {
	_ = p.Cmd.Process.Signal(syscall.SIGKILL)
	_ = p.Wait()
}

// Buffer is a bytes.Buffer safe for concurrent use that keeps the first
// MiB written to it and drops the rest.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b.Len() > 1<<20 {
		return len(p), nil
	}
	return s.b.Write(p)
}

func (s *Buffer) Len() int       { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Len() }
func (s *Buffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }
