package integration

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A test that panics ends the test binary at once: no TestMain teardown,
// no t.Cleanup, no watchdog. The cabinds and the daemonized QEMUs of the
// run would live on, and their temporary directories stay. So TestMain
// starts a reaper: the test binary run again as a process of its own,
// reading the directories of this run from a pipe. When the pipe ends
// without the word that the run ended cleanly (the test binary died,
// whatever killed it), it SIGKILLs every process whose command line
// names one of those directories (cabind's --state-dir and --socket,
// QEMU's -D and -pidfile) and removes the directories.

// reaperEnv names the variable that makes the test binary a reaper.
const reaperEnv = "CABIN_INTEGRATION_REAPER"

// reaperDone is the line that tells the reaper the run cleaned up itself.
const reaperDone = "done"

// theReaper is the pipe to this run's reaper; nil when none runs.
var theReaper struct {
	mu sync.Mutex
	w  *os.File
}

// startReaper starts the reaper; a failure only costs the clean-up after
// a panic, so it is reported, not fatal.
func startReaper() {
	cmd, err := reaperCommand()
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: no reaper: %v\n", err)
		return
	}
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: no reaper: %v\n", err)
		return
	}
	cmd.Stdin, cmd.Stderr = r, os.Stderr
	// Its own session: a ^C to the test run is the watchdog's to handle,
	// and must not take the reaper with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		fmt.Fprintf(os.Stderr, "integration: no reaper: %v\n", err)
		return
	}
	r.Close()
	go cmd.Wait()
	theReaper.mu.Lock()
	theReaper.w = w
	theReaper.mu.Unlock()
}

// reaperCommand is the test binary run as a reaper.
func reaperCommand() (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), reaperEnv+"=1")
	return cmd, nil
}

// reapAfter has the reaper clean dir up should the test binary die
// before it does.
func reapAfter(dir string) {
	theReaper.mu.Lock()
	defer theReaper.mu.Unlock()
	if theReaper.w != nil && filepath.IsAbs(dir) && !strings.Contains(dir, "\n") {
		fmt.Fprintln(theReaper.w, dir)
	}
}

// stopReaper tells the reaper the run cleaned up itself.
func stopReaper() {
	theReaper.mu.Lock()
	defer theReaper.mu.Unlock()
	if theReaper.w != nil {
		fmt.Fprintln(theReaper.w, reaperDone)
		theReaper.w.Close()
		theReaper.w = nil
	}
}

// runReaper is the reaper's whole life: it returns when the test binary
// is gone, having cleaned up after it unless told it had.
func runReaper() {
	var dirs []string
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		line := sc.Text()
		if line == reaperDone {
			return
		}
		// Never a directory that would match everyone's processes.
		if d := filepath.Clean(line); filepath.IsAbs(d) && strings.Count(d, "/") >= 2 {
			dirs = append(dirs, d)
		}
	}
	if len(dirs) == 0 {
		return
	}
	pids := processesNaming(dirs)
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pid := range pids {
		waitGone(pid, 5*time.Second)
	}
	for _, d := range dirs {
		os.RemoveAll(d)
	}
	fmt.Fprintf(os.Stderr, "integration reaper: the test binary died without its teardown: killed %d processes, removed %s\n",
		len(pids), strings.Join(dirs, " "))
}

// processesNaming returns the processes, but this one, with an argument
// that is one of dirs or lies under one.
func processesNaming(dirs []string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if namesAny(strings.Split(string(b), "\x00"), dirs) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// namesAny says whether an argument of argv is one of dirs or a path
// under one, alone or as the value of a key=value or --flag=value.
func namesAny(argv, dirs []string) bool {
	for _, a := range argv {
		for _, d := range dirs {
			if i := strings.Index(a, d); i >= 0 {
				rest := a[i+len(d):]
				before := a[:i]
				if (rest == "" || rest[0] == '/' || rest[0] == ',') &&
					(before == "" || strings.HasSuffix(before, "=")) {
					return true
				}
			}
		}
	}
	return false
}

func TestReaperNamesAny(t *testing.T) {
	dirs := []string{"/tmp/cit123"}
	for _, c := range []struct {
		argv []string
		want bool
	}{
		{[]string{"cabind", "--state-dir", "/tmp/cit123/state"}, true},
		{[]string{"qemu-system-x86_64", "-D", "/tmp/cit123/state/vms/a/qemu.log"}, true},
		{[]string{"qemu-system-x86_64", "-chardev", "socket,id=qmp,path=/tmp/cit123/state/vms/a/qmp.sock,server=on"}, true},
		{[]string{"cabind", "--socket=/tmp/cit123/cabind.sock"}, true},
		{[]string{"ls", "/tmp/cit123"}, true},
		{[]string{"cabind", "--state-dir", "/tmp/cit1234/state"}, false},
		{[]string{"cabind", "--state-dir", "/var/tmp/cit123/state"}, false},
		{[]string{"sleep", "100"}, false},
	} {
		if got := namesAny(c.argv, dirs); got != c.want {
			t.Errorf("namesAny(%q) = %v, want %v", c.argv, got, c.want)
		}
	}
}

// TestReaperAfterADeath plays a test binary that dies with a process of
// its run still going: the reaper kills it and removes the directory,
// and leaves alone a process that names another directory.
func TestReaperAfterADeath(t *testing.T) {
	sleepPath, err := exec.LookPath("sleep")
	if err != nil {
		t.Skipf("needs sleep: %v", err)
	}
	dir := t.TempDir()
	runDir := filepath.Join(dir, "run")
	otherDir := filepath.Join(dir, "other")
	for _, d := range []string{runDir, otherDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// A sleep whose argv[0] is a path in d: it names d in its command
	// line as cabind and QEMU name their directories.
	start := func(d string) *exec.Cmd {
		cmd := exec.Command("sh", "-c", `exec -a "$1" "$0" 1000`, sleepPath, filepath.Join(d, "marker"))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	ours, theirs := start(runDir), start(otherDir)

	reaper, in := startTestReaper(t)
	fmt.Fprintln(in, runDir)
	// The pipe ends without reaperDone: the test binary died.
	in.Close()
	if err := reaper.Wait(); err != nil {
		t.Fatalf("reaper: %v", err)
	}
	if err := ours.Wait(); err == nil {
		t.Error("the run's process was not killed")
	}
	if _, err := os.Stat(runDir); !os.IsNotExist(err) {
		t.Errorf("the run's directory is left: %v", err)
	}
	if err := theirs.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("another directory's process was killed: %v", err)
	}
	if _, err := os.Stat(otherDir); err != nil {
		t.Errorf("another directory was removed: %v", err)
	}
}

// TestReaperAfterACleanEnd: told the run ended cleanly, the reaper
// touches nothing.
func TestReaperAfterACleanEnd(t *testing.T) {
	dir := t.TempDir()
	reaper, in := startTestReaper(t)
	fmt.Fprintln(in, dir)
	fmt.Fprintln(in, reaperDone)
	in.Close()
	if err := reaper.Wait(); err != nil {
		t.Fatalf("reaper: %v", err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("the directory was removed after a clean end: %v", err)
	}
}

// startTestReaper starts a reaper for a test, with the pipe it reads.
func startTestReaper(t *testing.T) (*exec.Cmd, io.WriteCloser) {
	t.Helper()
	reaper, err := reaperCommand()
	if err != nil {
		t.Fatal(err)
	}
	in, err := reaper.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := reaper.Start(); err != nil {
		t.Fatal(err)
	}
	return reaper, in
}
