package kata

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/reaper"
)

// The tests that need root run in a child of the test binary: a child
// subreaper, as PID 1 is for the VM, with a reap-all reaper as the agent
// has, in mount and UTS namespaces of its own so that what they mount and
// the hostname they set stay there. Reaping every child is also why the
// child cannot run go build and the like: their waits would race with the
// reaper. The parent builds what the child needs and passes it in the
// environment.
const (
	// suiteEnv names the test the child runs as a suite.
	suiteEnv = "CABIN_KATA_SUITE"
	// runtimeEnv and rootfsEnv are the built cabin-runtime and the
	// containers' root filesystem.
	runtimeEnv = "CABIN_KATA_RUNTIME"
	rootfsEnv  = "CABIN_KATA_ROOTFS"
)

// inChild tells whether this process is the child running suite.
func inChild(suite string) bool { return os.Getenv(suiteEnv) == suite }

// suitePID is the pid of the test process that runs the suites: this
// one's parent in a child (runChild starts it), else this one.
func suitePID() int {
	if os.Getenv(suiteEnv) != "" {
		return os.Getppid()
	}
	return os.Getpid()
}

// runChild runs suite (a test's name) in the child and checks that each of
// subtests passed there.
func runChild(t *testing.T, suite string, subtests []string, env ...string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+suite+"$", "-test.v", "-test.count=1")
	cmd.Env = append(append(os.Environ(), env...), suiteEnv+"="+suite)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWUTS}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s in a child subreaper: %v\n%s", suite, err, out)
	}
	// Guard against a child that ran nothing.
	for _, name := range subtests {
		if want := "--- PASS: " + suite + "/" + name + " "; !bytes.Contains(out, []byte(want)) {
			t.Errorf("%s/%s did not pass:\n%s", suite, name, out)
			return
		}
	}
	if testing.Verbose() {
		t.Logf("child:\n%s", out)
	}
}

// childReaper is the child's reap-all reaper; newClient's services use
// it, since another reaper in the same process would never see its exits.
var childReaper *reaper.Reaper

// childSetup makes the child what the agent is: a subreaper with a
// reap-all reaper, whose mounts do not propagate back to the host.
func childSetup(t *testing.T) *reaper.Reaper {
	t.Helper()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("become a subreaper: %v", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		t.Fatalf("make mounts private: %v", err)
	}
	r := reaper.New(true, testLog())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; childReaper = nil })
	childReaper = r
	return r
}

// testDir makes a directory of this test's below /run, where storages
// must be, and removes it at the end.
func testDir(t *testing.T) string {
	t.Helper()
	dir := fmt.Sprintf("/run/cabin-kata-test-%d", os.Getpid())
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("%s left behind: %v", dir, err)
			os.RemoveAll(dir)
		}
	})
	return dir
}

// mountedAt returns the filesystem type and options of the mount at p,
// or "" when nothing is mounted there.
func mountedAt(t *testing.T, p string) (fstype, options string) {
	t.Helper()
	ms, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) { return m.Mountpoint != p, false })
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) == 0 {
		return "", ""
	}
	// The last mount there is the one in sight.
	m := ms[len(ms)-1]
	return m.FSType, m.Options + "," + m.VFSOptions
}
