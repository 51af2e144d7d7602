package cgroup

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// v2Mount is this machine's cgroup v2 hierarchy: at /sys/fs/cgroup, or
// at /sys/fs/cgroup/unified beside v1 controllers (the hybrid layout). A
// session needs no controller, so either serves.
func v2Mount(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes cgroups")
	}
	for _, m := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		// A v1 hierarchy has no subtree_control.
		if _, err := os.Stat(filepath.Join(m, "cgroup.subtree_control")); err == nil {
			return m
		}
	}
	t.Skip("no cgroup v2 hierarchy")
	return ""
}

// testSessions is a parent of sessions for one test, removed after it.
func testSessions(t *testing.T) *Sessions {
	t.Helper()
	dir := filepath.Join(v2Mount(t), fmt.Sprintf("cabin-cgroup-test-%d", os.Getpid()))
	s, err := OpenSessions(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove the sessions' parent: %v", err)
		}
	})
	return s
}

// TestSessionEndsEverything: a process started into a session, and what
// it starts in a session of its own that leaves its process group, all end
// with Close, which removes the cgroup.
func TestSessionEndsEverything(t *testing.T) {
	sessions := testSessions(t)
	sess, err := sessions.New()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "setsid sleep 1000 & echo $!; exec sleep 1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, UseCgroupFD: true, CgroupFD: sess.FD()}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	escaped, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(escaped, syscall.SIGKILL) })
	if got := cgroupOf(t, escaped); got != cgroupOf(t, cmd.Process.Pid) || !strings.HasSuffix(got, "/"+filepath.Base(sess.Dir())) {
		t.Errorf("the escaped process is in %q, the leader in %q; want both in the session %s", got, cgroupOf(t, cmd.Process.Pid), sess.Dir())
	}
	if busy, err := populated(sess.Dir()); err != nil || !busy {
		t.Errorf("populated: %v, %v", busy, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sess.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("leader: %v, want killed", err)
	}
	// Its parent (init, or a subreaper) reaps it; gone from the cgroup
	// already, it is at most a zombie.
	waitDead(t, escaped)
	if _, err := os.Stat(sess.Dir()); !os.IsNotExist(err) {
		t.Errorf("session's cgroup after Close: %v", err)
	}
	// Once closed, Kill and Close do nothing.
	if err := sess.Kill(); err != nil {
		t.Errorf("Kill after Close: %v", err)
	}
	if err := sess.Close(ctx); err != nil {
		t.Errorf("Close again: %v", err)
	}
}

// TestSessionKill: Kill ends the processes at once and leaves the cgroup
// for Close.
func TestSessionKill(t *testing.T) {
	sessions := testSessions(t)
	a, err := sessions.New()
	if err != nil {
		t.Fatal(err)
	}
	b, err := sessions.New()
	if err != nil {
		t.Fatal(err)
	}
	if a.Dir() == b.Dir() {
		t.Fatalf("two sessions in %s", a.Dir())
	}
	cmd := exec.Command("sleep", "1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: a.FD()}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := a.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil {
		t.Error("sleep survived Kill")
	}
	if _, err := os.Stat(a.Dir()); err != nil {
		t.Errorf("Kill removed the cgroup: %v", err)
	}
	ctx := context.Background()
	for _, s := range []*Session{a, b} {
		if err := s.Close(ctx); err != nil {
			t.Error(err)
		}
	}
}

func TestOpenSessionsNeedsACgroup(t *testing.T) {
	if _, err := OpenSessions(t.TempDir()); err == nil {
		t.Error("a plain directory taken for a cgroup")
	}
}

// cgroupOf is pid's cgroup v2 path.
func cgroupOf(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p
		}
	}
	t.Fatalf("pid %d has no cgroup v2 path:\n%s", pid, b)
	return ""
}

// waitDead waits until pid has exited (a zombie has).
func waitDead(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		if i := strings.LastIndexByte(string(b), ')'); i > 0 && i+2 < len(b) && b[i+2] == 'Z' {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still runs", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
