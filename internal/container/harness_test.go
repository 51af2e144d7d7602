package container

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// harness runs cabin-runtime for one test against its own root.
type harness struct {
	t    *testing.T
	root string
	// wrap, if set, is the command line cabin-runtime runs under.
	wrap []string
	ids  []string // containers, deleted at the end
	pids []int    // container processes, reaped at the end
}

// newHarness skips the test if the host cannot run containers.
func newHarness(t *testing.T) *harness {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	if setupErr != nil {
		t.Fatal(setupErr)
	}
	h := &harness{t: t, root: filepath.Join(t.TempDir(), "root")}
	t.Cleanup(h.cleanup)
	return h
}

// result is one run of cabin-runtime.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
}

// run runs cabin-runtime --root ROOT args with files as its fds 3, 4, ...
func (h *harness) run(files []*os.File, args ...string) result {
	h.t.Helper()
	argv := append(append(append([]string{}, h.wrap...), runtimeBin, "--root", h.root), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.ExtraFiles = files
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		h.t.Fatalf("run cabin-runtime %v: %v", args, err)
	}
	return result{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
}

// must runs cabin-runtime and fails the test unless it succeeds.
func (h *harness) must(files []*os.File, args ...string) result {
	h.t.Helper()
	r := h.run(files, args...)
	if r.code != 0 {
		h.t.Fatalf("cabin-runtime %s: %v", strings.Join(args, " "), r)
	}
	return r
}

// state returns the container's state as the state command prints it.
func (h *harness) state(id string) State {
	h.t.Helper()
	r := h.must(nil, "state", id)
	var s State
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		h.t.Fatalf("state %s: %q: %v", id, r.stdout, err)
	}
	return s
}

// wantStatus fails the test unless the container has status.
func (h *harness) wantStatus(id, status string) State {
	h.t.Helper()
	s := h.state(id)
	if s.ID != id || s.Status != status {
		h.t.Fatalf("state %s: %+v, want status %s", id, s, status)
	}
	return s
}

// create creates container id from spec, with files as its stdio (or
// console socket), returns the init's pid, and arranges for the container
// to be deleted and its processes reaped when the test ends.
func (h *harness) create(id string, spec *specs.Spec, files []*os.File, flags ...string) int {
	h.t.Helper()
	bundle := writeBundle(h.t, spec)
	pidFile := filepath.Join(h.t.TempDir(), "init.pid")
	args := append([]string{"create", "--bundle", bundle, "--pid-file", pidFile}, flags...)
	h.must(files, append(args, id)...)
	h.ids = append(h.ids, id)
	return h.readPid(pidFile)
}

// exec starts process in container id and returns its pid.
func (h *harness) exec(id string, process *specs.Process, files []*os.File, flags ...string) int {
	h.t.Helper()
	dir := h.t.TempDir()
	procFile := filepath.Join(dir, "process.json")
	writeJSON(h.t, procFile, process)
	pidFile := filepath.Join(dir, "exec.pid")
	args := append([]string{"exec", "--process", procFile, "--pid-file", pidFile}, flags...)
	h.must(files, append(args, id)...)
	return h.readPid(pidFile)
}

// readPid reads a pid file and has the pid reaped at the end of the test.
func (h *harness) readPid(path string) int {
	h.t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		h.t.Fatal(err)
	}
	pid, err := strconv.Atoi(string(data))
	if err != nil || pid <= 0 {
		h.t.Fatalf("pid file %s: %q is not a pid", path, data)
	}
	h.pids = append(h.pids, pid)
	return pid
}

// wait waits for pid, a child of the test process by reparenting, to exit.
func (h *harness) wait(pid int) unix.WaitStatus {
	h.t.Helper()
	return h.waitAll(pid)[0]
}

// waitAll waits for all of pids to exit and returns their statuses.
func (h *harness) waitAll(pids ...int) []unix.WaitStatus {
	h.t.Helper()
	ws, err := waitPids(pids, 10*time.Second)
	if err != nil {
		h.t.Fatal(err)
	}
	return ws
}

// reaping reaps pids in the background, for a test whose next step
// waits for them to die, and returns their statuses when all have.
func (h *harness) reaping(pids ...int) <-chan []unix.WaitStatus {
	c := make(chan []unix.WaitStatus, 1)
	go func() {
		ws, _ := waitPids(pids, 15*time.Second)
		c <- ws
	}()
	return c
}

// cleanup deletes the test's containers and reaps their processes, at the
// same time, as delete --force waits for processes that may need reaping.
func (h *harness) cleanup() {
	reaped := h.reaping(h.pids...)
	for _, id := range h.ids {
		h.run(nil, "delete", "--force", id)
	}
	<-reaped
}

// waitPids reaps pids, children of the test process by reparenting, as
// they exit, all of them at once: the init of a PID namespace does not
// finish dying until the namespace's other processes are reaped, and
// those whose parent was the runtime are the test process's to reap, as
// they are the agent's reaper's in the guest. WNOHANG polls keep a
// process that never exits from hanging the test. A pid that is no
// child (reaped already) counts as done, with status 0.
func waitPids(pids []int, timeout time.Duration) ([]unix.WaitStatus, error) {
	statuses := make([]unix.WaitStatus, len(pids))
	done := make([]bool, len(pids))
	left := len(pids)
	deadline := time.Now().Add(timeout)
	for {
		for i, pid := range pids {
			if done[i] {
				continue
			}
			got, err := unix.Wait4(pid, &statuses[i], unix.WNOHANG, nil)
			if got == pid || err == unix.ECHILD {
				done[i] = true
				left--
			} else if err != nil && err != unix.EINTR {
				return statuses, fmt.Errorf("wait for %d: %w", pid, err)
			}
		}
		if left == 0 {
			return statuses, nil
		}
		if time.Now().After(deadline) {
			return statuses, fmt.Errorf("wait for %v: %d still running after %v", pids, left, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testSpec is a container spec running the probe with args: its own PID,
// mount, UTS, IPC and network namespaces, a read-only root, host name
// "boxy", and a cgroup under cgroupTop.
func testSpec(id string, args ...string) *specs.Spec {
	caps := []string{"CAP_KILL", "CAP_NET_BIND_SERVICE"}
	return &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Args: append([]string{"/probe"}, args...),
			Env:  []string{"PATH=/"},
			Cwd:  "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
			NoNewPrivileges: true,
		},
		Root:     &specs.Root{Path: rootfs, Readonly: true},
		Hostname: "boxy",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "mode=755", "size=1m"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "size=1m"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: cgroupTop + "/" + id,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.IPCNamespace}, {Type: specs.NetworkNamespace},
			},
			MaskedPaths:   []string{"/proc/kcore"},
			ReadonlyPaths: []string{"/proc/sys"},
		},
	}
}

// probeProcess is an exec'd process running the probe with args.
func probeProcess(args ...string) *specs.Process {
	return &specs.Process{Args: append([]string{"/probe"}, args...), Env: []string{"PATH=/"}, Cwd: "/"}
}

// writeBundle writes spec as a bundle's config.json and returns the bundle.
func writeBundle(t *testing.T, spec *specs.Spec) string {
	t.Helper()
	dir := t.TempDir()
	writeJSON(t, filepath.Join(dir, specFile), spec)
	return dir
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// startTrap creates and starts container id running the probe's trap
// mode, and returns the init's pid and stdio once it is ready.
func (h *harness) startTrap(id string) (int, *pipes) {
	h.t.Helper()
	p := newPipes(h.t)
	pid := h.create(id, testSpec(id, "trap"), p.child)
	p.handedOver()
	h.must(nil, "start", id)
	p.stdout.expect(h.t, "ready")
	return pid, p
}

// execTrap execs the probe's trap mode in running container id, and
// returns its pid and stdio once it is ready.
func (h *harness) execTrap(id string) (int, *pipes) {
	h.t.Helper()
	p := newPipes(h.t)
	pid := h.exec(id, probeProcess("trap"), p.child)
	p.handedOver()
	p.stdout.expect(h.t, "ready")
	return pid, p
}
