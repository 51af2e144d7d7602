package container

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/guest/cgroup/cgrouptest"
)

// TestCreateStart runs a process through create and start: it waits for
// start, sees itself as PID 1 with the spec's host name, gets its stdio
// from fds 3, 4 and 5, and its exit status reaches the test. The spec has
// no cgroupsPath, so the container goes in /cabin/containers/ID, and a
// relative root.
func TestCreateStart(t *testing.T) {
	h := newHarness(t)
	const id = "create-start"
	spec := testSpec(id, "report", "7")
	spec.Linux.CgroupsPath = ""
	bundle := writeBundle(t, spec)
	// A root relative to the bundle, as OCI bundles usually have it.
	spec.Root.Path = "rootfs"
	writeJSON(t, filepath.Join(bundle, specFile), spec)
	if err := os.Mkdir(filepath.Join(bundle, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"proc", "dev", "sys", "tmp"} {
		os.Mkdir(filepath.Join(bundle, "rootfs", d), 0o755)
	}
	if err := os.Link(filepath.Join(rootfs, "probe"), filepath.Join(bundle, "rootfs", "probe")); err != nil {
		t.Skipf("cannot link the probe into the bundle: %v", err)
	}

	p := newPipes(t)
	pidFile := filepath.Join(t.TempDir(), "init.pid")
	h.must(p.child, "create", "--bundle", bundle, "--pid-file", pidFile, id)
	t.Cleanup(func() { h.run(nil, "delete", "--force", id) })
	p.handedOver()
	pid := h.readPid(pidFile)

	if s := h.wantStatus(id, "created"); s.Pid != pid {
		t.Errorf("state pid %d, pid file %d", s.Pid, pid)
	}
	if dirs := cgrouptest.Dirs(cgroupParent + "/" + id); len(dirs) == 0 {
		t.Errorf("no cgroup %s/%s", cgroupParent, id)
	}
	// The init waits for start: nothing is written yet.
	p.stdout.quiet(t, 100*time.Millisecond)

	h.must(nil, "start", id)
	if _, err := p.stdin.WriteString("hello\n"); err != nil {
		t.Fatal(err)
	}
	p.stdin.Close()
	out := p.stdout.all(t, 5*time.Second)
	want := "pid=1\nhost=boxy\nargs=report,7\nstdin=hello\n\n"
	if out != want {
		t.Errorf("stdout %q, want %q", out, want)
	}
	if e := p.stderr.all(t, 5*time.Second); e != "to-stderr\n" {
		t.Errorf("stderr %q", e)
	}
	if ws := h.wait(pid); !ws.Exited() || ws.ExitStatus() != 7 {
		t.Errorf("init exit %v, want status 7", ws)
	}
	if s := h.wantStatus(id, "stopped"); s.Pid != 0 {
		t.Errorf("stopped container has pid %d", s.Pid)
	}
	// start again: the container has run.
	if r := h.run(nil, "start", id); r.code != 1 || !strings.Contains(r.stderr, "stopped") {
		t.Errorf("start of a stopped container: %v", r)
	}

	h.must(nil, "delete", id)
	if _, err := os.Stat(filepath.Join(h.root, id)); !os.IsNotExist(err) {
		t.Errorf("state directory after delete: %v", err)
	}
	if dirs := cgrouptest.Dirs(cgroupParent + "/" + id); len(dirs) != 0 {
		t.Errorf("cgroups after delete: %v", dirs)
	}
	if r := h.run(nil, "state", id); r.code != 3 {
		t.Errorf("state after delete: %v, want exit 3", r)
	}
}

// TestExec starts a second process in a running container: it shares the
// container's namespaces, has its own stdio, and its exit is observable.
func TestExec(t *testing.T) {
	h := newHarness(t)
	const id = "exec"
	initPid, _ := h.startTrap(id)

	p := newPipes(t)
	pid := h.exec(id, probeProcess("report", "5"), p.child)
	p.handedOver()
	p.stdin.WriteString("abc")
	p.stdin.Close()
	out := p.stdout.all(t, 5*time.Second)
	fields := strings.Split(out, "\n")
	if len(fields) < 4 || fields[1] != "host=boxy" || fields[2] != "args=report,5" || fields[3] != "stdin=abc" {
		t.Fatalf("exec'd process wrote %q", out)
	}
	// In the container's PID namespace, and not its init.
	if n, err := strconv.Atoi(strings.TrimPrefix(fields[0], "pid=")); err != nil || n <= 1 {
		t.Errorf("exec'd process sees itself as %s", fields[0])
	}
	if ws := h.wait(pid); !ws.Exited() || ws.ExitStatus() != 5 {
		t.Errorf("exec'd process exit %v, want status 5", ws)
	}
	h.wantStatus(id, "running")

	h.must(nil, "delete", "--force", id)
	if ws := h.wait(initPid); !ws.Signaled() || ws.Signal() != unix.SIGKILL {
		t.Errorf("init after delete --force: %v, want killed", ws)
	}
	if r := h.run(p.child, "exec", "--process", "/nonexistent", "--pid-file", "/tmp/x.pid", id); r.code != 2 {
		t.Errorf("exec with a missing process file: %v, want exit 2", r)
	}
}

// TestTerminal runs the init and an exec'd process on terminals whose
// masters come over the console socket.
func TestTerminal(t *testing.T) {
	h := newHarness(t)
	const id = "terminal"
	spec := testSpec(id, "tty")
	spec.Process.Terminal = true
	spec.Process.ConsoleSize = &specs.Box{Height: 24, Width: 80}
	ours, theirs := consoleSocket(t)
	pid := h.create(id, spec, []*os.File{theirs}, "--terminal")
	master := receiveMaster(t, ours)
	h.must(nil, "start", id)
	readUntil(t, master, "tty=true size=80x24")
	master.WriteString("hi\n")
	readUntil(t, master, "got=hi")
	if ws := h.wait(pid); !ws.Exited() || ws.ExitStatus() != 0 {
		t.Errorf("init exit %v", ws)
	}
	h.must(nil, "delete", id)

	// exec --terminal, into a container whose init has none.
	const id2 = "terminal-exec"
	initIO := newPipes(t)
	h.create(id2, testSpec(id2, "trap"), initIO.child)
	initIO.handedOver()
	h.must(nil, "start", id2)
	initIO.stdout.expect(t, "ready")
	proc := probeProcess("tty")
	proc.Terminal = true
	proc.ConsoleSize = &specs.Box{Height: 50, Width: 132}
	ours2, theirs2 := consoleSocket(t)
	epid := h.exec(id2, proc, []*os.File{theirs2}, "--terminal")
	master2 := receiveMaster(t, ours2)
	readUntil(t, master2, "tty=true size=132x50")
	master2.WriteString("there\n")
	readUntil(t, master2, "got=there")
	if ws := h.wait(epid); !ws.Exited() || ws.ExitStatus() != 0 {
		t.Errorf("exec'd process exit %v", ws)
	}
}

// TestKill signals the init, then every process; signals to a stopped
// container are not errors.
func TestKill(t *testing.T) {
	h := newHarness(t)
	const id = "kill"
	initPid, initIO := h.startTrap(id)
	pid, p := h.execTrap(id)

	// Without --all only the init gets it; names and numbers both work.
	h.must(nil, "kill", id, "USR1")
	initIO.stdout.expect(t, "usr1")
	h.must(nil, "kill", id, strconv.Itoa(int(unix.SIGUSR1)))
	initIO.stdout.expect(t, "usr1")
	p.stdout.quiet(t, 200*time.Millisecond)

	h.must(nil, "kill", "--all", id, "SIGUSR1")
	initIO.stdout.expect(t, "usr1")
	p.stdout.expect(t, "usr1")

	h.must(nil, "kill", id, "term")
	ws := h.waitAll(initPid, pid)
	if !ws[0].Exited() || ws[0].ExitStatus() != 3 {
		t.Errorf("init after SIGTERM: %v, want exit 3", ws[0])
	}
	// The init's exit ends its PID namespace.
	if !ws[1].Signaled() || ws[1].Signal() != unix.SIGKILL {
		t.Errorf("exec'd process after the init's exit: %v, want killed", ws[1])
	}
	h.wantStatus(id, "stopped")
	h.must(nil, "kill", id, "KILL")
	h.must(nil, "kill", "--all", id, "KILL")
	for _, op := range []string{"pause", "resume"} {
		if r := h.run(nil, op, id); r.code != 1 || !strings.Contains(r.stderr, "stopped") {
			t.Errorf("%s of a stopped container: %v, want exit 1", op, r)
		}
	}
	h.must(nil, "delete", id)
}

// TestKillAll kills every process with SIGKILL.
func TestKillAll(t *testing.T) {
	h := newHarness(t)
	const id = "kill-all"
	initPid, _ := h.startTrap(id)
	pid, _ := h.execTrap(id)

	h.must(nil, "kill", "--all", id, "9")
	for i, ws := range h.waitAll(initPid, pid) {
		if !ws.Signaled() || ws.Signal() != unix.SIGKILL {
			t.Errorf("process %d after kill --all KILL: %v", i, ws)
		}
	}
	h.wantStatus(id, "stopped")
	h.must(nil, "delete", id)
}

// TestDelete refuses to delete a container with processes unless forced.
func TestDelete(t *testing.T) {
	h := newHarness(t)
	const id = "delete"
	p := newPipes(t)
	pid := h.create(id, testSpec(id, "trap"), p.child)
	p.handedOver()

	r := h.run(nil, "delete", id)
	if r.code != 1 || !strings.Contains(r.stderr, "is created") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("delete of a created container: %v, want exit 1 saying it is created", r)
	}
	h.must(nil, "start", id)
	p.stdout.expect(t, "ready")
	r = h.run(nil, "delete", id)
	if r.code != 1 || !strings.Contains(r.stderr, "is running") {
		t.Errorf("delete of a running container: %v, want exit 1 saying it is running", r)
	}
	h.wantStatus(id, "running")

	h.must(nil, "delete", "--force", id)
	if ws := h.wait(pid); !ws.Signaled() || ws.Signal() != unix.SIGKILL {
		t.Errorf("init after delete --force: %v", ws)
	}
	if r := h.run(nil, "state", id); r.code != 3 {
		t.Errorf("state after delete: %v, want exit 3", r)
	}
	if dirs := cgrouptest.Dirs(cgroupTop + "/" + id); len(dirs) != 0 {
		t.Errorf("cgroups after delete: %v", dirs)
	}
	if r := h.run(nil, "delete", "--force", id); r.code != 3 {
		t.Errorf("second delete --force: %v, want exit 3", r)
	}
}

// TestPauseResume freezes and thaws a container's processes, and deletes
// a paused container by force.
func TestPauseResume(t *testing.T) {
	h := newHarness(t)
	if !freezerAvailable() {
		t.Skip("no cgroup freezer on this host")
	}
	const id = "pause"
	p := newPipes(t)
	pid := h.create(id, testSpec(id, "tick"), p.child)
	p.handedOver()
	h.must(nil, "start", id)
	p.stdout.expect(t, "t")

	h.must(nil, "pause", id)
	h.wantStatus(id, "paused")
	h.must(nil, "pause", id) // already paused: nothing to do
	p.stdout.drain(50 * time.Millisecond)
	p.stdout.quiet(t, 200*time.Millisecond)

	h.must(nil, "resume", id)
	h.wantStatus(id, "running")
	p.stdout.expect(t, "t")
	h.must(nil, "resume", id) // running already: nothing to do

	h.must(nil, "pause", id)
	h.must(nil, "delete", "--force", id)
	if ws := h.wait(pid); !ws.Signaled() || ws.Signal() != unix.SIGKILL {
		t.Errorf("init after delete --force of a paused container: %v", ws)
	}
	if dirs := cgrouptest.Dirs(cgroupTop + "/" + id); len(dirs) != 0 {
		t.Errorf("cgroups after delete: %v", dirs)
	}
}

// freezerAvailable tells whether libcontainer can freeze a cgroup here:
// on cgroup v2 every cgroup but the root has cgroup.freeze (Linux 5.2);
// on v1 it needs the freezer hierarchy.
func freezerAvailable() bool {
	if fileExists("/sys/fs/cgroup/cgroup.controllers") {
		m, _ := filepath.Glob("/sys/fs/cgroup/*/cgroup.freeze")
		return len(m) > 0
	}
	return fileExists("/sys/fs/cgroup/freezer/cgroup.procs")
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// TestSeccomp runs the probe under a seccomp filter: a call refused with
// the errno the filter names, a call refused only for one argument value,
// and the rest allowed. TestBadInput has filters that cannot be made.
func TestSeccomp(t *testing.T) {
	h := newHarness(t)
	const id = "seccomp"
	spec := testSpec(id, "syscalls")
	eacces := uint(unix.EACCES)
	spec.Linux.Seccomp = &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Architectures: []specs.Arch{specs.ArchX86_64},
		Syscalls: []specs.LinuxSyscall{
			{Names: []string{"mkdir", "mkdirat"}, Action: specs.ActErrno, ErrnoRet: &eacces},
			{Names: []string{"fchmodat"}, Action: specs.ActErrno, Args: []specs.LinuxSeccompArg{
				{Index: 2, Value: 0o777, Op: specs.OpEqualTo},
			}},
		},
	}
	p := newPipes(t)
	pid := h.create(id, spec, p.child)
	p.handedOver()
	h.must(nil, "start", id)
	out := p.stdout.all(t, 5*time.Second)
	if want := "mkdir=EACCES\nchmod644=ok\nchmod777=EPERM\n"; out != want {
		t.Errorf("under the filter the probe wrote %q, want %q (stderr %q)", out, want, p.stderr.all(t, time.Second))
	}
	if ws := h.wait(pid); !ws.Exited() || ws.ExitStatus() != 0 {
		t.Errorf("probe exit %v", ws)
	}
	h.must(nil, "delete", id)
}
