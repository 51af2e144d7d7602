package reaper

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// noSuchPid is above PID_MAX_LIMIT (4 Mi): no process ever has it, so the
// retention can be tested with made-up exits.
const noSuchPid = 5 << 20

func keptCount(r *Reaper) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.kept)
}

// keepFake records exits as the reaping of orphans would, without
// processes: r is never run.
func keepFake(r *Reaper, exits ...Exit) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range exits {
		r.keep(e)
	}
}

func received(t *testing.T, ch <-chan Exit) (Exit, bool) {
	t.Helper()
	select {
	case e := <-ch:
		return e, true
	default:
		return Exit{}, false
	}
}

func TestClaimKeptBound(t *testing.T) {
	r := New(true, testLog())
	const n = KeepExits + 20
	for i := range n {
		keepFake(r, Exit{Pid: noSuchPid + i, Code: i % 256})
	}
	if got := keptCount(r); got != KeepExits {
		t.Fatalf("%d exits kept, want the bound %d", got, KeepExits)
	}
	// The oldest went first.
	if _, err := r.Claim(noSuchPid); !errors.Is(err, ErrExitLost) {
		t.Errorf("claim of a dropped exit: %v, want ErrExitLost", err)
	}
	ch, err := r.Claim(noSuchPid + n - 1)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := received(t, ch); !ok || e.Code != (n-1)%256 {
		t.Errorf("newest kept exit: %+v, %v", e, ok)
	}
	// Claimed once, it is gone.
	if _, err := r.Claim(noSuchPid + n - 1); !errors.Is(err, ErrExitLost) {
		t.Errorf("second claim: %v, want ErrExitLost", err)
	}
	if got := keptCount(r); got != KeepExits-1 {
		t.Errorf("%d kept after a claim, want %d", got, KeepExits-1)
	}
}

func TestClaimKeptAge(t *testing.T) {
	r := New(true, testLog())
	now := time.Now()
	r.now = func() time.Time { return now }
	keepFake(r, Exit{Pid: noSuchPid, Code: 1})
	now = now.Add(KeepFor / 2)
	keepFake(r, Exit{Pid: noSuchPid + 1, Code: 2})
	now = now.Add(KeepFor/2 + time.Second)
	if _, err := r.Claim(noSuchPid); !errors.Is(err, ErrExitLost) {
		t.Errorf("claim of an exit older than KeepFor: %v, want ErrExitLost", err)
	}
	ch, err := r.Claim(noSuchPid + 1)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := received(t, ch); !ok || e.Code != 2 {
		t.Errorf("younger exit: %+v, %v", e, ok)
	}
}

// TestClaimKeepsNewestPerPid: a pid reused by orphans keeps only its last
// exit.
func TestClaimKeepsNewestPerPid(t *testing.T) {
	r := New(true, testLog())
	keepFake(r, Exit{Pid: noSuchPid, Code: 1}, Exit{Pid: noSuchPid, Code: 2})
	if got := keptCount(r); got != 1 {
		t.Fatalf("%d kept, want 1", got)
	}
	ch, err := r.Claim(noSuchPid)
	if err != nil {
		t.Fatal(err)
	}
	if e, _ := received(t, ch); e.Code != 2 {
		t.Errorf("got %+v, want the newest exit", e)
	}
}

// TestClaimStaleKeptExit: a kept exit whose pid is in use again belongs to
// an earlier process; the claim waits for the living one instead.
func TestClaimStaleKeptExit(t *testing.T) {
	r := New(true, testLog())
	pid := os.Getpid() // alive, and never reaped: r does not run
	keepFake(r, Exit{Pid: pid, Code: 9})
	ch, err := r.Claim(pid)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := received(t, ch); ok {
		t.Errorf("stale exit delivered: %+v", e)
	}
	if got := keptCount(r); got != 0 {
		t.Errorf("stale exit still kept (%d)", got)
	}
	if _, err := r.Claim(pid); !errors.Is(err, ErrClaimed) {
		t.Errorf("second claim: %v, want ErrClaimed", err)
	}
}

func TestClaimBadPid(t *testing.T) {
	r := New(false, testLog())
	for _, pid := range []int{0, -1} {
		if _, err := r.Claim(pid); !errors.Is(err, ErrNoPid) {
			t.Errorf("claim %d: %v", pid, err)
		}
	}
	if _, err := r.Claim(noSuchPid); !errors.Is(err, ErrExitLost) {
		t.Errorf("claim of a pid that does not exist: %v, want ErrExitLost", err)
	}
}

// TestClaimChild: without reap-all, a claimed child is waited for like a
// started one, including one that has already exited.
func TestClaimChild(t *testing.T) {
	r := startReaper(t)
	for i, script := range []string{"exit 4", "sleep 0.2; exit 5"} {
		cmd := exec.Command("sh", "-c", script)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pid := cmd.Process.Pid
		cmd.Process.Release()
		if i == 0 {
			waitZombie(t, pid)
		}
		ch, err := r.Claim(pid)
		if err != nil {
			t.Fatal(err)
		}
		if e := await(t, ch); e.Code != 4+i {
			t.Errorf("%q gave %+v", script, e)
		}
	}
}

// testReapAllClaimAfterReap (run by TestReapAll, in a subreaper) starts
// children nobody registers, lets the reaper reap them as orphans, and
// claims them afterwards, as the agent claims a container process whose pid
// it reads once the process may have ended.
func testReapAllClaimAfterReap(t *testing.T) {
	r := startReapAll(t)
	var pids []int
	for i := range 5 {
		cmd := exec.Command("sh", "-c", "exit "+strconv.Itoa(10+i))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pids = append(pids, cmd.Process.Pid)
		cmd.Process.Release()
	}
	for _, pid := range pids {
		waitReaped(t, pid)
	}
	for i, pid := range pids {
		ch, err := r.Claim(pid)
		if err != nil {
			t.Fatalf("claim %d: %v", pid, err)
		}
		if e := await(t, ch); e.Pid != pid || e.Code != 10+i {
			t.Errorf("claim %d gave %+v", pid, e)
		}
	}
}

// testReapAllClaimOrphan claims a grandchild while it runs, once its
// parent is gone and it is this subreaper's.
func testReapAllClaimOrphan(t *testing.T) {
	r := startReapAll(t)
	out, err := startOrphan(t, r, "sleep 0.3; exit 6")
	if err != nil {
		t.Fatal(err)
	}
	ch, err := r.Claim(out)
	if err != nil {
		t.Fatal(err)
	}
	if e := await(t, ch); e.Code != 6 {
		t.Errorf("orphan gave %+v", e)
	}
}

// waitReaped waits until pid is gone.
func waitReaped(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, state, err := procStat(pid)
		if errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d not reaped: state %q, %v", pid, state, err)
		}
		time.Sleep(time.Millisecond)
	}
}
