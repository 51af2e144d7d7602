package reaper

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// reapAllEnv makes the test binary run TestReapAll's checks itself, as a
// child subreaper: reap-all mode waits for every child, so it must not run
// in the process that runs the other tests, and orphans only come to a
// subreaper (or PID 1).
const reapAllEnv = "CABIN_TEST_REAP_ALL"

// TestReapAll runs a reap-all Reaper (PID 1's) in a child of the test that
// is a subreaper, as PID 1 is for the whole VM.
func TestReapAll(t *testing.T) {
	if os.Getenv(reapAllEnv) != "" {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			t.Fatalf("become a subreaper: %v", err)
		}
		t.Run("exit before registration", testReapAllEarlyExit)
		t.Run("orphan", testReapAllOrphan)
		t.Run("claim after reap", testReapAllClaimAfterReap)
		t.Run("claim orphan", testReapAllClaimOrphan)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestReapAll$", "-test.v")
	cmd.Env = append(os.Environ(), reapAllEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("reap-all checks in a child subreaper: %v\n%s", err, out)
	}
	// Guard against a child that ran nothing.
	for _, want := range []string{
		"--- PASS: TestReapAll/exit_before_registration", "--- PASS: TestReapAll/orphan",
		"--- PASS: TestReapAll/claim_after_reap", "--- PASS: TestReapAll/claim_orphan",
	} {
		if !bytes.Contains(out, []byte(want)) {
			t.Fatalf("child output lacks %q:\n%s", want, out)
		}
	}
}

func startReapAll(t *testing.T) *Reaper {
	t.Helper()
	r := New(true, testLog())
	runReaper(t, r)
	return r
}

// testReapAllEarlyExit starts children that have exited, and that the
// reaper has been woken for, before Start registers them: their exits
// must still reach the caller, not be taken for an orphan's.
func testReapAllEarlyExit(t *testing.T) {
	r := startReapAll(t)
	for i := range 20 {
		cmd := exec.Command("sh", "-c", "exit "+strconv.Itoa(i))
		ch, err := r.Start(func() (int, error) {
			if err := cmd.Start(); err != nil {
				return 0, err
			}
			pid := cmd.Process.Pid
			cmd.Process.Release()
			// Its SIGCHLD has been sent by the time it is a zombie.
			waitZombie(t, pid)
			return pid, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if e := await(t, ch); e.Code != i || e.Signal != 0 {
			t.Fatalf("exit %d gave %+v", i, e)
		}
	}
}

// testReapAllOrphan: a grandchild whose parent exits comes to the
// subreaper, and the reaper collects it though nobody waits for it.
func testReapAllOrphan(t *testing.T) {
	r := startReapAll(t)
	orphan, err := startOrphan(t, r, "sleep 0.5")
	if err != nil {
		t.Fatal(err)
	}
	// sh is gone; its child is ours now, and still sleeping.
	if ppid, _, err := procStat(orphan); err != nil || ppid != os.Getpid() {
		t.Fatalf("orphan %d: parent %d, %v; want this subreaper, %d", orphan, ppid, err, os.Getpid())
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, state, err := procStat(orphan)
		if errors.Is(err, os.ErrNotExist) {
			return // reaped
		}
		if time.Now().After(deadline) {
			t.Fatalf("orphan %d not reaped: state %q, %v", orphan, state, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startOrphan runs script in the background of a shell that exits at once,
// and returns the script's pid once the shell is gone: the script is then
// an orphan of this subreaper's.
func startOrphan(t *testing.T, r *Reaper, script string) (int, error) {
	t.Helper()
	rd, wr, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer rd.Close()
	cmd := exec.Command("sh", "-c", "("+script+") >/dev/null & echo $!")
	cmd.Stdout = wr
	_, ch, err := r.StartCmd(cmd)
	wr.Close()
	if err != nil {
		return 0, err
	}
	line, err := bufio.NewReader(rd).ReadString('\n')
	if err != nil {
		return 0, err
	}
	orphan, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return 0, fmt.Errorf("grandchild pid %q: %w", line, err)
	}
	if e := await(t, ch); e.Code != 0 {
		return 0, fmt.Errorf("sh gave %+v", e)
	}
	return orphan, nil
}

// waitZombie waits until pid has exited and not yet been reaped.
func waitZombie(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, state, err := procStat(pid)
		switch {
		case err == nil && state == "Z":
			return
		case errors.Is(err, os.ErrNotExist):
			t.Fatalf("pid %d was reaped before Start registered it", pid)
		case time.Now().After(deadline):
			t.Fatalf("pid %d did not exit: state %q, %v", pid, state, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// procStat reads pid's parent and state from /proc/<pid>/stat.
func procStat(pid int) (ppid int, state string, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, "", err
	}
	// The command name may hold anything; fields resume after its last ")".
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, "", fmt.Errorf("malformed /proc/%d/stat: %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, "", fmt.Errorf("malformed /proc/%d/stat: %q", pid, b)
	}
	ppid, err = strconv.Atoi(f[1])
	return ppid, f[0], err
}
