package container

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCgroupV2 runs a container's life on cgroup v2, as in the guest, on a
// host with the hybrid layout (v1 controllers, v2 at
// /sys/fs/cgroup/unified): each run of cabin-runtime gets a mount
// namespace with the v2 hierarchy mounted at /sys/fs/cgroup, where
// libcontainer looks, so it drives the v2 manager: device rules as an eBPF
// program, cgroup.freeze for pause and kill --all, cgroup.kill for
// delete --force.
func TestCgroupV2(t *testing.T) {
	h := newHarness(t)
	if fileExists("/sys/fs/cgroup/cgroup.controllers") {
		t.Skip("the host is on cgroup v2: the other tests cover it")
	}
	if !fileExists("/sys/fs/cgroup/unified/cgroup.procs") {
		t.Skip("no cgroup v2 hierarchy at /sys/fs/cgroup/unified")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("no unshare(1) to give cabin-runtime a cgroup v2 view")
	}
	h.wrap = []string{unshare, "--mount", "--propagation", "private", "--",
		"/bin/sh", "-c", `mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec "$0" "$@"`}

	const id = "v2"
	initIO := newPipes(t)
	initPid := h.create(id, testSpec(id, "trap"), initIO.child)
	initIO.handedOver()
	unified := filepath.Join("/sys/fs/cgroup/unified", cgroupTop, id)
	if !fileExists(filepath.Join(unified, "cgroup.freeze")) {
		t.Fatalf("no v2 cgroup %s", unified)
	}
	if fileExists(filepath.Join("/sys/fs/cgroup/freezer", cgroupTop, id)) {
		t.Errorf("a v1 freezer cgroup was made: libcontainer used v1")
	}
	h.must(nil, "start", id)
	initIO.stdout.expect(t, "ready")
	pid, p := h.execTrap(id)

	h.must(nil, "kill", "--all", id, "USR1")
	initIO.stdout.expect(t, "usr1")
	p.stdout.expect(t, "usr1")

	h.must(nil, "pause", id)
	h.wantStatus(id, "paused")
	if data, _ := os.ReadFile(filepath.Join(unified, "cgroup.freeze")); string(data) != "1\n" {
		t.Errorf("cgroup.freeze %q after pause", data)
	}
	// Signals wait for the thaw; kill --all leaves a paused container so.
	h.must(nil, "kill", "--all", id, "USR1")
	p.stdout.quiet(t, 100*time.Millisecond)
	h.wantStatus(id, "paused")
	h.must(nil, "resume", id)
	initIO.stdout.expect(t, "usr1")
	p.stdout.expect(t, "usr1")

	h.must(nil, "pause", id)
	// Reaped meanwhile, as the agent's reaper does: the init's death
	// waits for the exec'd process to be reaped, and delete for the init.
	reaped := h.reaping(initPid, pid)
	h.must(nil, "delete", "--force", id)
	for i, ws := range <-reaped {
		if !ws.Signaled() || ws.Signal() != unix.SIGKILL {
			t.Errorf("process %d after delete --force: %v", i, ws)
		}
	}
	if fileExists(unified) {
		t.Errorf("cgroup %s left after delete", unified)
	}
}
