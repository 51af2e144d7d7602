package reaper

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startGuarded starts argv in a process group of its own, reaped by r,
// with a guard watching it.
func startGuarded(t *testing.T, r *Reaper, argv ...string) *Guard {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pid, exits, err := r.StartCmd(cmd)
	if err != nil {
		t.Fatal(err)
	}
	g := NewGuard(pid)
	go g.Watch(exits, nil)
	t.Cleanup(func() {
		g.Signal(unix.SIGKILL) // nothing, unless the test failed
		g.Wait(context.Background())
	})
	return g
}

func waitGuard(t *testing.T, g *Guard) Exit {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e, err := g.Wait(ctx)
	if err != nil {
		t.Fatalf("pid %d: %v", g.Pid(), err)
	}
	return e
}

// checkDropped checks that nothing guarded acts on g's pid any more.
func checkDropped(t *testing.T, g *Guard) {
	t.Helper()
	if !g.Exited() {
		t.Fatal("not exited")
	}
	if err := g.Signal(unix.SIGKILL); err != nil {
		t.Errorf("signal after the exit: %v", err)
	}
	if err := g.SignalGroup(unix.SIGKILL); err != nil {
		t.Errorf("group signal after the exit: %v", err)
	}
	if err := g.Do(func() error { return errors.New("ran") }); err != nil {
		t.Errorf("Do after the exit: %v", err)
	}
	g.Locked(func(exited bool) {
		if !exited {
			t.Error("Locked sees no exit")
		}
	})
}

// TestGuardSignal: signals reach a running process, singly or by its
// group, and are dropped once it is reaped.
func TestGuardSignal(t *testing.T) {
	r := startReaper(t)
	for _, group := range []bool{false, true} {
		g := startGuarded(t, r, "sleep", "10")
		if g.Exited() {
			t.Fatal("exited before a signal")
		}
		if _, ok := g.Exit(); ok {
			t.Error("an exit before the exit")
		}
		send := g.Signal
		if group {
			send = g.SignalGroup
		}
		if err := send(unix.SIGTERM); err != nil {
			t.Fatal(err)
		}
		e := waitGuard(t, g)
		if e.Pid != g.Pid() || e.Signal != unix.SIGTERM {
			t.Errorf("group %v: exit %+v, want pid %d killed by SIGTERM", group, e, g.Pid())
		}
		if got, ok := g.Exit(); !ok || got != e {
			t.Errorf("Exit() = %+v, %v; want %+v", got, ok, e)
		}
		checkDropped(t, g)
	}
}

// TestGuardDoBeforeExit: an action runs, and its error is returned, while
// the process is running.
func TestGuardDoBeforeExit(t *testing.T) {
	r := startReaper(t)
	g := startGuarded(t, r, "sleep", "10")
	want := errors.New("from the action")
	if err := g.Do(func() error { return want }); err != want {
		t.Errorf("Do: %v, want the action's error", err)
	}
	g.Locked(func(exited bool) {
		if exited {
			t.Error("Locked sees an exit")
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := g.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait with a cancelled context: %v", err)
	}
	g.Signal(unix.SIGKILL)
	waitGuard(t, g)
}

// TestGuardReusedPid: once the exit of a guard's pid is in, a signal is
// dropped, though a live process has that pid again. The pid is given to
// a new child by steering the kernel's pid allocation (ns_last_pid),
// which needs root; TestGuardStalePid covers the same without.
func TestGuardReusedPid(t *testing.T) {
	r := startReaper(t)
	pid, exits, err := r.StartCmd(exec.Command("true"))
	if err != nil {
		t.Fatal(err)
	}
	g := NewGuard(pid)
	g.Watch(exits, nil) // returns once the reaper has reaped it
	var reuser *Guard
	for range 50 {
		err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0)
		if err != nil {
			t.Skipf("cannot have pid %d reused: %v (needs root, and /proc/sys writable)", pid, err)
		}
		q := startGuarded(t, r, "sleep", "10")
		if q.Pid() == pid {
			reuser = q
			break
		}
		// Another process or thread took the pid first.
		q.Signal(unix.SIGKILL)
		waitGuard(t, q)
	}
	if reuser == nil {
		t.Skipf("pid %d was taken by others every time", pid)
	}
	checkDropped(t, g)
	select {
	case <-reuser.Done():
		e, _ := reuser.Exit()
		t.Fatalf("the process that reused pid %d got the signal: %+v", pid, e)
	case <-time.After(200 * time.Millisecond):
	}
	reuser.Signal(unix.SIGKILL)
	if e := waitGuard(t, reuser); e.Signal != unix.SIGKILL {
		t.Errorf("reuser: %+v", e)
	}
}

// TestGuardStalePid is TestGuardReusedPid without root: the guard's pid
// is held by a live process while the guard has an exit for it, as when
// the pid was reaped and reused.
func TestGuardStalePid(t *testing.T) {
	r := startReaper(t)
	live := startGuarded(t, r, "sleep", "10")
	exits := make(chan Exit, 1)
	exits <- Exit{Pid: live.Pid(), Code: 0}
	g := NewGuard(live.Pid())
	g.Watch(exits, nil)
	checkDropped(t, g)
	select {
	case <-live.Done():
		e, _ := live.Exit()
		t.Fatalf("the live process got the signal: %+v", e)
	case <-time.After(200 * time.Millisecond):
	}
	live.Signal(unix.SIGKILL)
	waitGuard(t, live)
}

// TestGuardOrdersActionsAfterExit: an action waits while the exit is
// being recorded (onExit runs), and is then dropped.
func TestGuardOrdersActionsAfterExit(t *testing.T) {
	exits := make(chan Exit, 1)
	g := NewGuard(noSuchPid)
	inExit, release := make(chan struct{}), make(chan struct{})
	go g.Watch(exits, func(e Exit) {
		if !g.Exited() {
			t.Error("onExit runs before the exit is recorded")
		}
		close(inExit)
		<-release
	})
	exits <- Exit{Pid: noSuchPid, Code: 2}
	<-inExit
	ran := make(chan bool, 1)
	go func() {
		did := false
		g.Do(func() error { did = true; return nil })
		ran <- did
	}()
	select {
	case <-ran:
		t.Fatal("an action ran while onExit held the lock")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if <-ran {
		t.Error("an action ran after the exit")
	}
	if e, ok := g.Exit(); !ok || e.Code != 2 {
		t.Errorf("Exit() = %+v, %v", e, ok)
	}
}

// TestKillRefusesGroups: a pid gone wrong (os.Process.Release leaves -1
// behind) must never become kill(-1), a signal to every process, nor
// signal the agent (PID 1) or its own group. Signal 0 keeps the test
// harmless should the refusal fail.
func TestKillRefusesGroups(t *testing.T) {
	for _, pid := range []int{-100, -1, 0, 1} {
		if err := Kill(pid, 0); !errors.Is(err, errRefused) {
			t.Errorf("Kill(%d): %v, want refused", pid, err)
		}
		if err := KillGroup(pid, 0); !errors.Is(err, errRefused) {
			t.Errorf("KillGroup(%d): %v, want refused", pid, err)
		}
	}
	// Not reaped, so only the refusal stops it.
	if err := NewGuard(1).Signal(0); !errors.Is(err, errRefused) {
		t.Errorf("guard of pid 1: %v, want refused", err)
	}
	// A process that is gone is not an error.
	if err := Kill(noSuchPid, unix.SIGKILL); err != nil {
		t.Errorf("Kill of no process: %v", err)
	}
	if err := KillGroup(noSuchPid, unix.SIGKILL); err != nil {
		t.Errorf("KillGroup of no group: %v", err)
	}
}
