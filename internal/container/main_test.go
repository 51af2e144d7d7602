package container

// The tests here run real containers: TestMain builds cabin-runtime as it
// is shipped (static, cgo) and a static probe program, the containers'
// process, and the tests drive the binary through its command line as the
// agent does. The test process is a child subreaper, so the containers'
// processes, reparented when the runtime exits, become its children and
// their exits can be waited for, as the agent's reaper does as PID 1.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/container/runtimebuild"
	"github.com/cabinvm/cabin/internal/guest/cgroup/cgrouptest"
)

// Set up by TestMain.
var (
	// skipReason, when set, is why the host cannot run containers.
	skipReason string
	// setupErr is a failure to build what the tests need.
	setupErr error
	// runtimeBin is the built cabin-runtime.
	runtimeBin string
	// rootfs is the containers' shared, read-only root: the probe at
	// /probe and the mount points.
	rootfs string
	// cgroupTop is the cgroup under which the tests' containers go, unless
	// a test checks the default; it is removed at the end.
	cgroupTop = fmt.Sprintf("/cabin-test-%d", os.Getpid())
	// defaultCgroupsMade lists the default parent's cgroups, deepest
	// first, that did not exist before the tests, so that they remove
	// afterwards only what they made.
	defaultCgroupsMade []string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cabin-runtime-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	skipReason, setupErr = setup(dir)
	code := m.Run()
	removeCgroups(cgroupTop, true)
	for _, p := range defaultCgroupsMade {
		removeCgroups(p, false)
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// setup checks the host and builds the programs into dir.
func setup(dir string) (skip string, err error) {
	if os.Geteuid() != 0 {
		return "containers need root", nil
	}
	if _, err := exec.LookPath("gcc"); err != nil {
		return "no gcc: cabin-runtime needs cgo", nil
	}
	if len(cgrouptest.Dirs("")) == 0 {
		return "no cgroup file system at /sys/fs/cgroup", nil
	}
	for p := cgroupParent; p != "/"; p = filepath.Dir(p) {
		if len(cgrouptest.Dirs(p)) == 0 {
			defaultCgroupsMade = append(defaultCgroupsMade, p)
		}
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "no go command to build cabin-runtime", nil
	}
	runtimeBin = filepath.Join(dir, "cabin-runtime")
	build := exec.Command(goBin, "build", "-trimpath", "-tags", runtimebuild.Tags,
		"-ldflags", runtimebuild.LDFlags, "-o", runtimeBin,
		"github.com/cabinvm/cabin/cmd/cabin-runtime")
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build cabin-runtime: %v\n%s", err, out)
	}
	rootfs = filepath.Join(dir, "rootfs")
	for _, d := range []string{"proc", "dev", "sys", "tmp"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			return "", err
		}
	}
	probe := exec.Command(goBin, "build", "-o", filepath.Join(rootfs, "probe"), "./testdata/probe")
	probe.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := probe.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build probe: %v\n%s", err, out)
	}
	// A container's process is the runtime's child until the runtime
	// exits; then it is reparented, here to the test process.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return "", fmt.Errorf("become a subreaper: %w", err)
	}
	// Can this host make the namespaces the test spec asks for?
	ns := exec.Command(filepath.Join(rootfs, "probe"), "report", "0")
	ns.SysProcAttr = &unix.SysProcAttr{Cloneflags: unix.CLONE_NEWPID | unix.CLONE_NEWNS |
		unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWNET}
	if out, err := ns.CombinedOutput(); err != nil {
		return fmt.Sprintf("cannot create namespaces: %v: %s", err, out), nil
	}
	return "", nil
}

// removeCgroups removes cgroup path in every hierarchy, and with children
// its child cgroups, which a failed test may have left with processes in
// them, frozen even: those are thawed, killed and reaped first.
func removeCgroups(path string, children bool) {
	dirs := cgrouptest.Dirs(path)
	var subs []string
	if children {
		for _, d := range dirs {
			entries, _ := os.ReadDir(d)
			for _, e := range entries {
				if e.IsDir() {
					subs = append(subs, filepath.Join(d, e.Name()))
				}
			}
		}
	}
	killed := false
	for _, d := range subs {
		os.WriteFile(filepath.Join(d, "freezer.state"), []byte("THAWED"), 0) // v1
		os.WriteFile(filepath.Join(d, "cgroup.freeze"), []byte("0"), 0)      // v2
		procs, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		for _, f := range strings.Fields(string(procs)) {
			if pid, err := strconv.Atoi(f); err == nil {
				unix.Kill(pid, unix.SIGKILL)
				killed = true
			}
		}
	}
	if killed {
		// They are the test process's children by now; once the tests
		// are over, all its children can be reaped.
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			var ws unix.WaitStatus
			if pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil); err == unix.ECHILD || pid == 0 && len(cgroupProcs(subs)) == 0 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for _, d := range append(subs, dirs...) {
		os.Remove(d)
	}
}

// cgroupProcs lists the processes in cgroups dirs.
func cgroupProcs(dirs []string) []string {
	var procs []string
	for _, d := range dirs {
		data, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		procs = append(procs, strings.Fields(string(data))...)
	}
	return procs
}
