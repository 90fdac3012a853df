package testproc

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	if os.Getenv("TESTPROC_CHILD") == "sleep" {
		fmt.Fprintln(os.Stderr, "to stderr")
		fmt.Println("ready", os.Getenv("TESTPROC_ARG"))
		time.Sleep(time.Hour)
	}
	os.Exit(m.Run())
}

func TestKill(t *testing.T) {
	p := Start(t, Command("^$", "TESTPROC_CHILD=sleep", "TESTPROC_ARG=x"))
	line, err := bufio.NewReader(p.Stdout).ReadString('\n')
	if err != nil || line != "ready x\n" {
		t.Fatalf("child said %q, %v", line, err)
	}
	p.Kill()
	select {
	case <-p.Exited():
	default:
		t.Fatal("Kill returned before the child exited")
	}
	if err := p.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Wait after Kill = %v", err)
	}
	if got := p.Stderr.String(); got != "to stderr\n" {
		t.Errorf("stderr %q", got)
	}
}

func TestCleanupKills(t *testing.T) {
	var pid int
	t.Run("child", func(t *testing.T) {
		p := Start(t, Command("^$", "TESTPROC_CHILD=sleep"))
		pid = p.Cmd.Process.Pid
	})
	if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
		t.Fatalf("child pid %d after its test ended: %v, want ESRCH", pid, err)
	}
}

func TestCommandRunsTests(t *testing.T) {
	if os.Getenv("TESTPROC_RUN") != "" {
		fmt.Println("in the child")
		return
	}
	out, err := Command("^TestCommandRunsTests$", "TESTPROC_RUN=1").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "in the child") {
		t.Fatalf("%v: %s", err, out)
	}
}

func TestBufferKeepsTheFirstMiB(t *testing.T) {
	var b Buffer
	chunk := strings.Repeat("x", 1<<19)
	for range 4 {
		b.Write([]byte(chunk))
	}
	if b.Len() != 3<<19 {
		t.Fatalf("kept %d bytes", b.Len())
	}
}

// TestChildEnv: a test run as a helper child gets its setting; run any
// other way it is skipped at once.
func TestChildEnv(t *testing.T) {
	var skipped, ran bool
	t.Run("unset", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		ChildEnv(t, "TESTPROC_NOT_SET", "helper child of TestChildEnv")
		ran = true
	})
	if !skipped || ran {
		t.Fatalf("with the variable unset: skipped %v, ran on %v", skipped, ran)
	}
	t.Setenv("TESTPROC_SET", "x")
	if got := ChildEnv(t, "TESTPROC_SET", "helper child of TestChildEnv"); got != "x" {
		t.Fatalf("ChildEnv = %q, want x", got)
	}
}
