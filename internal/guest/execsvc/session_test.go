package execsvc

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
	"github.com/cabinvm/cabin/internal/guest/cgroup"
)

// testSessions is a parent for the sessions of one test's Execs, on this
// machine's cgroup v2 hierarchy, checked empty and removed after it.
func testSessions(t *testing.T) *cgroup.Sessions {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes cgroups")
	}
	mount := ""
	// /sys/fs/cgroup on a v2 host; beside v1 controllers (hybrid), at
	// unified. A v1 hierarchy has no subtree_control.
	for _, m := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		if _, err := os.Stat(filepath.Join(m, "cgroup.subtree_control")); err == nil {
			mount = m
			break
		}
	}
	if mount == "" {
		t.Skip("no cgroup v2 hierarchy")
	}
	dir := filepath.Join(mount, fmt.Sprintf("cabin-execsvc-test-%d", os.Getpid()))
	s, err := cgroup.OpenSessions(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if left := sessionDirs(t, s); len(left) > 0 {
			t.Errorf("sessions' cgroups left: %v", left)
		}
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove the sessions' parent: %v", err)
		}
	})
	return s
}

// sessionDirs lists the cgroups below the sessions' parent.
func sessionDirs(t *testing.T, s *cgroup.Sessions) []string {
	t.Helper()
	ents, err := os.ReadDir(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, e := range ents {
		if e.IsDir() {
			dirs = append(dirs, e.Name())
		}
	}
	return dirs
}

// escapee is a script that starts a process in a session of its own,
// out of the Exec's process group, says its pid once it is there (the
// pid comes through a FIFO from within the new session), and then, unless
// told to exit, waits.
func escapee(exit bool) []string {
	script := `f=$(mktemp -u) && mkfifo "$f" && { setsid sh -c 'echo $$ > "$0"; exec sleep 1000' "$f" & } && cat "$f" && rm "$f"`
	if !exit {
		script += "; exec sleep 1000"
	}
	return sh(script)
}

// TestSessionEndsWithTheClient: when the client goes away, the Exec's
// process and what it started in a session of its own both end, and the
// session's cgroup goes.
func TestSessionEndsWithTheClient(t *testing.T) {
	for _, tty := range []bool{false, true} {
		t.Run(fmt.Sprintf("tty=%v", tty), func(t *testing.T) {
			sessions := testSessions(t)
			c := newClientWith(t, Config{Sessions: sessions})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			stream, err := c.Exec(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(startReq(&execv1.ExecStart{Argv: escapee(false), Tty: tty})); err != nil {
				t.Fatal(err)
			}
			var pid int
			var out []byte
			for !bytes.Contains(out, []byte("\n")) {
				resp, err := stream.Recv()
				if err != nil {
					t.Fatal(err)
				}
				if st := resp.GetStarted(); st != nil {
					pid = int(st.GetPid())
				}
				out = append(out, resp.GetStdout()...)
			}
			escaped, err := strconv.Atoi(strings.TrimSpace(string(out)))
			if err != nil {
				t.Fatalf("pid of the escaped process %q: %v", out, err)
			}
			t.Cleanup(func() { killIfAlive(escaped) })
			if dirs := sessionDirs(t, sessions); len(dirs) != 1 {
				t.Errorf("sessions while one Exec runs: %v", dirs)
			}

			cancel()
			waitGone(t, pid, true)
			// An orphan: its reaping is up to this system's init.
			waitGone(t, escaped, false)
			deadline := time.Now().Add(10 * time.Second)
			for len(sessionDirs(t, sessions)) > 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// TestSessionEndsWithTheExit: what the process left running is gone by
// the time its exit is reported, and the process ran in the session's
// cgroup.
func TestSessionEndsWithTheExit(t *testing.T) {
	sessions := testSessions(t)
	c := newClientWith(t, Config{Sessions: sessions})
	res := mustRun(t, c, startReq(&execv1.ExecStart{Argv: escapee(true)}))
	wantExit(t, res, 0, 0)
	escaped, err := strconv.Atoi(strings.TrimSpace(string(res.stdout)))
	if err != nil {
		t.Fatalf("pid of the escaped process %q: %v", res.stdout, err)
	}
	t.Cleanup(func() { killIfAlive(escaped) })
	if !gone(escaped, false) {
		t.Errorf("the process an Exec left running (%d) still runs after its exit", escaped)
	}

	res = mustRun(t, c, startReq(&execv1.ExecStart{Argv: []string{"cat", "/proc/self/cgroup"}}))
	if want := "/" + filepath.Base(sessions.Dir()) + "/"; !strings.Contains(string(res.stdout), want) {
		t.Errorf("an Exec's process is in the cgroup %q; want one below %s", res.stdout, sessions.Dir())
	}
}

// killIfAlive is a test's cleanup for an escapee it failed to see end:
// pid is killed if it is still that sleep, not a process that reused it.
func killIfAlive(pid int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || string(b) != "sleep\x001000\x00" {
		return
	}
	if p, err := os.FindProcess(pid); err == nil {
		p.Kill()
	}
}
