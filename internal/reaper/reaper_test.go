package reaper

import (
	"context"
	"io"
	"log/slog"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

func testLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func startReaper(t *testing.T) *Reaper {
	t.Helper()
	r := New(false, testLog())
	runReaper(t, r)
	return r
}

// runReaper runs r until the test ends.
func runReaper(t *testing.T, r *Reaper) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func run(t *testing.T, r *Reaper, args ...string) <-chan Exit {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	_, ch, err := r.StartCmd(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

func await(t *testing.T, ch <-chan Exit) Exit {
	t.Helper()
	select {
	case e := <-ch:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no exit delivered")
		return Exit{}
	}
}

func TestExitCodeAndSignal(t *testing.T) {
	r := startReaper(t)
	if e := await(t, run(t, r, "sh", "-c", "exit 3")); e.Code != 3 || e.Signal != 0 || e.ShellCode() != 3 {
		t.Errorf("exit 3 gave %+v", e)
	}
	if e := await(t, run(t, r, "sh", "-c", "kill -TERM $$")); e.Signal != syscall.SIGTERM || e.ShellCode() != 128+15 {
		t.Errorf("kill -TERM gave %+v", e)
	}
}

// TestFastExitsAreNotLost starts many children that exit at once, so some
// exit before Start returns.
func TestFastExitsAreNotLost(t *testing.T) {
	r := startReaper(t)
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		ch := run(t, r, "true")
		wg.Add(1)
		go func() {
			defer wg.Done()
			if e := await(t, ch); e.Code != 0 {
				t.Errorf("true gave %+v", e)
			}
		}()
	}
	wg.Wait()
}

// TestLeavesOtherChildrenAlone checks that a Reaper not in reap-all mode
// does not steal the exit of a child someone else waits for.
func TestLeavesOtherChildrenAlone(t *testing.T) {
	r := startReaper(t)
	other := exec.Command("sh", "-c", "sleep 0.2; exit 7")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	ours := run(t, r, "sleep", "0.1")
	await(t, ours)
	err := other.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 7 {
		t.Fatalf("other child's Wait = %v, want exit status 7", err)
	}
}

func TestStartError(t *testing.T) {
	r := startReaper(t)
	if _, err := r.Start(func() (int, error) { return 0, nil }); err != ErrNoPid {
		t.Errorf("pid 0: %v", err)
	}
	cmd := exec.Command("/nonexistent/binary")
	if _, err := r.Start(func() (int, error) { return 0, cmd.Start() }); err == nil {
		t.Error("failed start was accepted")
	}
}

// TestStartCmd: the pid StartCmd returns is the process's, which its exit
// names too (cmd.Process.Pid reads -1 once released); a command that
// cannot start is an error with nothing registered.
func TestStartCmd(t *testing.T) {
	r := startReaper(t)
	cmd := exec.Command("sh", "-c", "exit 3")
	pid, exits, err := r.StartCmd(cmd)
	if err != nil || pid <= 0 {
		t.Fatalf("StartCmd: pid %d, %v", pid, err)
	}
	if cmd.Process.Pid != -1 {
		t.Errorf("cmd.Process.Pid %d after StartCmd; want -1, released", cmd.Process.Pid)
	}
	select {
	case e := <-exits:
		if e.Pid != pid || e.Code != 3 {
			t.Errorf("exit %+v; want pid %d, code 3", e, pid)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit")
	}
	pid, exits, err = r.StartCmd(exec.Command("/nonexistent/cabin-test"))
	if err == nil || pid != 0 || exits != nil {
		t.Errorf("StartCmd of a missing program: pid %d, exits %v, err %v", pid, exits, err)
	}
}
