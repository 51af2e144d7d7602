package kata

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	pb "github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/guest/cgroup/cgrouptest"
)

// TestContainers runs containers with the real cabin-runtime, as root, in
// a child of its own (see runChild). The container's process is
// testdata/ctrprog, built static into an otherwise empty root filesystem.
func TestContainers(t *testing.T) {
	subtests := []string{"output", "output_after_wait", "stderr", "stdin", "exec", "terminal",
		"signals", "kill_all", "remove", "duplicate", "bad_input", "pause", "bounds"}
	if inChild("TestContainers") {
		containersSuite(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs containers")
	}
	rtPath, rootfs := containerFixture(t)
	runChild(t, "TestContainers", subtests, runtimeEnv+"="+rtPath, rootfsEnv+"="+rootfs)
	t.Run("not_subreaper", func(t *testing.T) { testNotSubreaper(t, rtPath, rootfs) })
	t.Run("guest_details", func(t *testing.T) { testGuestDetails(t, rtPath) })
}

// testGuestDetails: GetGuestDetails reports this machine's memory block
// size as sysfs has it, the storage drivers, and seccomp, which the
// runtime (built with libseccomp) and this kernel support; with a runtime
// that cannot run, seccomp is reported missing and the call still works.
func testGuestDetails(t *testing.T, runtime string) {
	tmp := t.TempDir()
	c := newClient(t, Config{Runtime: runtime, RuntimeRoot: filepath.Join(tmp, "runtime"), Bundles: filepath.Join(tmp, "bundles")})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := c.GetGuestDetails(ctx, &pb.GuestDetailsRequest{MemBlockSize: true, MemHotplugProbe: true})
	if err != nil {
		t.Fatalf("GetGuestDetails: %v", err)
	}
	var want uint64
	if b, err := os.ReadFile("/sys/devices/system/memory/block_size_bytes"); err == nil {
		want, _ = strconv.ParseUint(strings.TrimSpace(string(b)), 16, 64)
	}
	if d.GetMemBlockSizeBytes() != want {
		t.Errorf("mem block size %d, want %d", d.GetMemBlockSizeBytes(), want)
	}
	a := d.GetAgentDetails()
	if !a.GetSupportsSeccomp() || a.GetInitDaemon() || !slices.Equal(a.GetStorageHandlers(), []string{"9p", "local", "ephemeral", "blk", "virtio-blk", "mmioblk", "bind", "watchable-bind"}) || !slices.Equal(a.GetDeviceHandlers(), []string{"blk", "virtio-blk", "mmioblk"}) || a.GetVersion() == "" {
		t.Errorf("agent details %v; want seccomp, not init, the storage and device drivers, a version", a)
	}
	// Not asked for: not read.
	if d, err := c.GetGuestDetails(ctx, &pb.GuestDetailsRequest{}); err != nil || d.GetMemBlockSizeBytes() != 0 {
		t.Errorf("GetGuestDetails without mem_block_size: %v, %v", d, err)
	}

	c = newClient(t, Config{Runtime: filepath.Join(tmp, "no-runtime"), RuntimeRoot: filepath.Join(tmp, "runtime"), Bundles: filepath.Join(tmp, "bundles")})
	if d, err := c.GetGuestDetails(ctx, &pb.GuestDetailsRequest{}); err != nil || d.GetAgentDetails().GetSupportsSeccomp() {
		t.Errorf("GetGuestDetails without a runtime: %v, %v; want no seccomp", d, err)
	}
}

// testNotSubreaper: an agent that is neither PID 1 nor a subreaper (this
// test's process) would never learn of its containers' exits; it says so
// and leaves nothing behind, rather than hang later.
func testNotSubreaper(t *testing.T, runtime, rootfs string) {
	tmp := t.TempDir()
	h := &ctr{t: t, rootfs: rootfs, bundles: filepath.Join(tmp, "bundles")}
	h.c = newClient(t, Config{Runtime: runtime, RuntimeRoot: filepath.Join(tmp, "runtime"), Bundles: h.bundles})
	_, err := h.c.CreateContainer(h.ctx(), &pb.CreateContainerRequest{ContainerId: "orphaned", OCI: h.spec("orphaned", false, "sleep")})
	wantCode(t, "create", err, codes.FailedPrecondition, "container process")
	if entries, _ := os.ReadDir(h.bundles); len(entries) != 0 {
		t.Errorf("bundles left: %v", entries)
	}
	if entries, _ := os.ReadDir(filepath.Join(tmp, "runtime")); len(entries) != 0 {
		t.Errorf("runtime state left: %v", entries)
	}
	removeCgroups(t)
}

// ctr drives containers through a client, for one test.
type ctr struct {
	t      *testing.T
	c      pb.AgentServiceClient
	rootfs string
	// dir is below /run, for storages.
	dir     string
	bundles string
}

func containersSuite(t *testing.T) {
	childSetup(t)
	tmp := t.TempDir()
	h := &ctr{
		rootfs:  os.Getenv(rootfsEnv),
		dir:     testDir(t),
		bundles: filepath.Join(tmp, "bundles"),
	}
	h.c = newClient(t, Config{
		Runtime:     os.Getenv(runtimeEnv),
		RuntimeRoot: filepath.Join(tmp, "runtime"),
		Bundles:     h.bundles,
	})
	t.Cleanup(func() {
		// Whatever a failed test left.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := h.c.DestroySandbox(ctx, &pb.DestroySandboxRequest{}); err != nil {
			t.Errorf("destroy the sandbox: %v", err)
		}
		removeCgroups(t)
	})
	for _, name := range []string{"output", "output_after_wait", "stderr", "stdin", "exec", "terminal",
		"signals", "kill_all", "remove", "duplicate", "bad_input", "pause", "bounds"} {
		t.Run(name, func(t *testing.T) {
			hh := *h
			hh.t = t
			containerTests[name](&hh)
		})
	}
}

var containerTests = map[string]func(*ctr){
	"output":            (*ctr).testOutput,
	"output_after_wait": (*ctr).testOutputAfterWait,
	"stderr":            (*ctr).testStderr,
	"stdin":             (*ctr).testStdin,
	"exec":              (*ctr).testExec,
	"terminal":          (*ctr).testTerminal,
	"signals":           (*ctr).testSignals,
	"kill_all":          (*ctr).testKillAll,
	"remove":            (*ctr).testRemove,
	"duplicate":         (*ctr).testDuplicate,
	"bad_input":         (*ctr).testBadInput,
	"pause":             (*ctr).testPause,
	"bounds":            (*ctr).testBounds,
}

// cgroupParent holds the test containers' cgroups: one per run of the
// tests (the top test process's pid, which its child suites share), so
// that two runs on one host keep out of each other's way.
var cgroupParent = fmt.Sprintf("cabin-kata-test-%d", suitePID())

// removeCgroups removes what is left of cgroupParent in every hierarchy.
func removeCgroups(t *testing.T) {
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*/" + cgroupParent)
	if d := "/sys/fs/cgroup/" + cgroupParent; isDir(d) {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		if err := os.Remove(d); err != nil && !os.IsNotExist(err) {
			t.Logf("cgroup %s: %v", d, err)
		}
	}
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// ctrPattern is ctrprog's Pattern.
func ctrPattern(n int) []byte {
	b := make([]byte, 0, n+32)
	for i := 0; len(b) < n; i++ {
		b = fmt.Appendf(b, "%08d\n", i)
	}
	return b[:n]
}

// testOutput: much output, written by a process that exits as soon as it
// has, all arrives, then the end; the exit status once, then the process
// is forgotten.
func (h *ctr) testOutput() {
	id := "out"
	const n = 3 << 20
	h.run(id, false, "write", fmt.Sprint(n))
	if got := h.readAll(id, "", false); !bytes.Equal(got, ctrPattern(n)) {
		h.t.Errorf("stdout: %d bytes, want %d, equal prefix %v", len(got), n, bytes.HasPrefix(ctrPattern(n), got))
	}
	if st := h.wait(id, ""); st != 0 {
		h.t.Errorf("status %d", st)
	}
	_, err := h.c.WaitProcess(h.ctx(), &pb.WaitProcessRequest{ContainerId: id})
	wantCode(h.t, "second wait", err, codes.NotFound, "process")
	// Waited for and read to the end: gone.
	if b := h.readAll(id, "", true); len(b) != 0 {
		h.t.Errorf("stderr %q", b)
	}
	_, err = h.read(id, "", false)
	wantCode(h.t, "read once forgotten", err, codes.NotFound, "process")
	h.remove(id)
}

// testOutputAfterWait: output the process wrote before exiting can be read
// after WaitProcess.
func (h *ctr) testOutputAfterWait() {
	id := "late"
	h.run(id, false, "write", "40000")
	if st := h.wait(id, id); st != 0 {
		h.t.Errorf("status %d", st)
	}
	if got := h.readAll(id, id, false); !bytes.Equal(got, ctrPattern(40000)) {
		h.t.Errorf("stdout after wait: %d bytes", len(got))
	}
	h.remove(id)
}

func (h *ctr) testStderr() {
	id := "stderr"
	h.run(id, false, "stderr", "boom")
	if got := string(h.readAll(id, "", true)); got != "boom" {
		h.t.Errorf("stderr %q", got)
	}
	if got := h.readAll(id, "", false); len(got) != 0 {
		h.t.Errorf("stdout %q", got)
	}
	if st := h.wait(id, ""); st != 3 {
		h.t.Errorf("status %d", st)
	}
	h.remove(id)
}

func (h *ctr) testStdin() {
	id := "stdin"
	h.run(id, false, "cat")
	resp, err := h.c.WriteStdin(h.ctx(), &pb.WriteStreamRequest{ContainerId: id, Data: []byte("hello\n")})
	if err != nil || resp.GetLen() != 6 {
		h.t.Fatalf("write stdin: %v, %v", resp, err)
	}
	if _, err := h.c.CloseStdin(h.ctx(), &pb.CloseStdinRequest{ContainerId: id}); err != nil {
		h.t.Fatal(err)
	}
	if got := string(h.readAll(id, "", false)); got != "hello\neof\n" {
		h.t.Errorf("stdout %q", got)
	}
	if st := h.wait(id, ""); st != 0 {
		h.t.Errorf("status %d", st)
	}
	_, err = h.c.WriteStdin(h.ctx(), &pb.WriteStreamRequest{ContainerId: id, Data: []byte("late")})
	wantCode(h.t, "stdin once waited", err, codes.NotFound, "process")
	h.remove(id)
}

func (h *ctr) testExec() {
	id := "exec"
	h.run(id, false, "sleep")
	h.readUntil(id, "", "ready")
	h.exec(id, "e1", false, "write", "100000")
	if got := h.readAll(id, "e1", false); !bytes.Equal(got, ctrPattern(100000)) {
		h.t.Errorf("exec stdout: %d bytes", len(got))
	}
	if st := h.wait(id, "e1"); st != 0 {
		h.t.Errorf("e1 status %d", st)
	}
	h.exec(id, "e2", false, "sleep")
	h.readUntil(id, "e2", "ready")
	for _, eid := range []string{"e2", id} {
		_, err := h.c.ExecProcess(h.ctx(), &pb.ExecProcessRequest{ContainerId: id, ExecId: eid, Process: h.spec(id, false, "exit", "0").Process})
		wantCode(h.t, "exec as "+eid, err, codes.AlreadyExists, "")
	}
	if _, err := h.c.SignalProcess(h.ctx(), &pb.SignalProcessRequest{ContainerId: id, ExecId: "e2", Signal: 9}); err != nil {
		h.t.Fatal(err)
	}
	if st := h.wait(id, "e2"); st != 128+9 {
		h.t.Errorf("e2 status %d, want 137", st)
	}
	// Waited for, its id is free again.
	h.exec(id, "e2", false, "exit", "4")
	if st := h.wait(id, "e2"); st != 4 {
		h.t.Errorf("second e2 status %d", st)
	}
	// The init still runs.
	_, err := h.c.WaitProcess(h.ctx(), &pb.WaitProcessRequest{ContainerId: id, ExecId: "e1"})
	wantCode(h.t, "wait e1 again", err, codes.NotFound, "process")
	h.remove(id)
}

// testTerminal: a container's init and an exec'd process on terminals:
// their size, resizes, input and its end, and output.
func (h *ctr) testTerminal() {
	h.run("tty", true, "tty")
	h.checkTerminal("tty", "")
	h.remove("tty")
	h.run("tty-exec", false, "sleep")
	h.readUntil("tty-exec", "", "ready")
	h.exec("tty-exec", "t2", true, "tty")
	h.checkTerminal("tty-exec", "t2")
	h.remove("tty-exec")
}

func (h *ctr) checkTerminal(id, eid string) {
	h.t.Helper()
	if got := h.readUntil(id, eid, "ready"); !strings.Contains(got, "tty true size 24 80") {
		h.t.Errorf("%s/%s start: %q", id, eid, got)
	}
	if _, err := h.c.TtyWinResize(h.ctx(), &pb.TtyWinResizeRequest{ContainerId: id, ExecId: eid, Row: 30, Column: 100}); err != nil {
		h.t.Fatal(err)
	}
	h.readUntil(id, eid, "size 30 100")
	if _, err := h.c.WriteStdin(h.ctx(), &pb.WriteStreamRequest{ContainerId: id, ExecId: eid, Data: []byte("hi\n")}); err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.c.CloseStdin(h.ctx(), &pb.CloseStdinRequest{ContainerId: id, ExecId: eid}); err != nil {
		h.t.Fatal(err)
	}
	// The terminal is both streams.
	if got := string(h.readAll(id, eid, true)); !strings.Contains(got, `line "hi"`) || !strings.HasSuffix(got, "bye\r\n") {
		h.t.Errorf("%s/%s output %q", id, eid, got)
	}
	if st := h.wait(id, eid); st != 0 {
		h.t.Errorf("%s/%s status %d", id, eid, st)
	}
}

// testSignals: SIGTERM to an init that does not catch it kills it; one
// that does gets it; signals after the exit are not errors.
func (h *ctr) testSignals() {
	h.run("sig-term", false, "sleep")
	h.readUntil("sig-term", "", "ready")
	if _, err := h.c.SignalProcess(h.ctx(), &pb.SignalProcessRequest{ContainerId: "sig-term", Signal: 15}); err != nil {
		h.t.Fatal(err)
	}
	if st := h.wait("sig-term", ""); st != 128+9 {
		h.t.Errorf("uncaught SIGTERM: status %d, want 137 (SIGKILL)", st)
	}

	h.run("sig-trap", false, "trap")
	h.readUntil("sig-trap", "", "ready")
	if _, err := h.c.SignalProcess(h.ctx(), &pb.SignalProcessRequest{ContainerId: "sig-trap", ExecId: "sig-trap", Signal: 15}); err != nil {
		h.t.Fatal(err)
	}
	if got := string(h.readAll("sig-trap", "", false)); !strings.Contains(got, "term") {
		h.t.Errorf("stdout %q", got)
	}
	// Exited (its output ended) but not waited for.
	if _, err := h.c.SignalProcess(h.ctx(), &pb.SignalProcessRequest{ContainerId: "sig-trap", Signal: 15}); err != nil {
		h.t.Errorf("signal after the exit: %v", err)
	}
	if st := h.wait("sig-trap", ""); st != 7 {
		h.t.Errorf("caught SIGTERM: status %d, want 7", st)
	}
	_, err := h.c.SignalProcess(h.ctx(), &pb.SignalProcessRequest{ContainerId: "sig-trap", ExecId: "nope", Signal: 15})
	wantCode(h.t, "unknown exec", err, codes.NotFound, "process")
	h.remove("sig-term")
	h.remove("sig-trap")
}

// testKillAll: SIGKILL with an empty exec id kills every process of the
// container.
func (h *ctr) testKillAll() {
	id := "killall"
	h.run(id, false, "trap")
	h.readUntil(id, "", "ready")
	h.exec(id, "e1", false, "trap")
	h.readUntil(id, "e1", "ready")
	if _, err := h.c.SignalProcess(h.ctx(), &pb.SignalProcessRequest{ContainerId: id, Signal: 9}); err != nil {
		h.t.Fatal(err)
	}
	for _, eid := range []string{"e1", ""} {
		if st := h.wait(id, eid); st != 128+9 {
			h.t.Errorf("%q status %d, want 137", eid, st)
		}
	}
	h.remove(id)
}

// testRemove: removal kills, deletes and releases; a storage shared by two
// containers goes with the second.
func (h *ctr) testRemove() {
	shared := &pb.Storage{Driver: "ephemeral", MountPoint: filepath.Join(h.dir, "shared")}
	for _, id := range []string{"rm-a", "rm-b"} {
		h.create(id, h.spec(id, false, "sleep"), shared)
		h.start(id)
	}
	if fstype, _ := mountedAt(h.t, shared.MountPoint); fstype != "tmpfs" {
		h.t.Fatalf("storage not mounted (%q)", fstype)
	}
	h.remove("rm-a")
	for name, err := range containerCalls(h.c, h.ctx(), "rm-a") {
		wantCode(h.t, name+" after remove", err, codes.NotFound, "container")
	}
	if _, err := os.Stat(filepath.Join(h.bundles, "rm-a")); !os.IsNotExist(err) {
		h.t.Errorf("bundle left: %v", err)
	}
	if fstype, _ := mountedAt(h.t, shared.MountPoint); fstype != "tmpfs" {
		h.t.Errorf("storage unmounted while rm-b uses it (%q)", fstype)
	}
	// Timeout 0: no limit.
	if _, err := h.c.RemoveContainer(h.ctx(), &pb.RemoveContainerRequest{ContainerId: "rm-b"}); err != nil {
		h.t.Fatal(err)
	}
	if fstype, _ := mountedAt(h.t, shared.MountPoint); fstype != "" {
		h.t.Errorf("storage still mounted (%q)", fstype)
	}
	if _, err := os.Lstat(shared.MountPoint); !os.IsNotExist(err) {
		h.t.Errorf("mount point left: %v", err)
	}
	// Created, never started.
	h.create("rm-c", h.spec("rm-c", false, "sleep"))
	h.remove("rm-c")
}

func (h *ctr) testDuplicate() {
	id := "dup"
	h.create(id, h.spec(id, false, "exit", "5"))
	_, err := h.c.CreateContainer(h.ctx(), &pb.CreateContainerRequest{ContainerId: id, OCI: h.spec(id, false, "sleep")})
	wantCode(h.t, "second create", err, codes.AlreadyExists, "")
	h.start(id)
	if st := h.wait(id, ""); st != 5 {
		h.t.Errorf("status %d: the first container's is 5", st)
	}
	h.remove(id)
}

// testBadInput: refused creates, by the agent or by the runtime, leave no
// container, bundle or storage.
func (h *ctr) testBadInput() {
	id := "bad"
	st := &pb.Storage{Driver: "ephemeral", MountPoint: filepath.Join(h.dir, "bad")}
	_, err := h.c.CreateContainer(h.ctx(), &pb.CreateContainerRequest{ContainerId: id, OCI: h.spec(id, false, "sleep"),
		Storages: []*pb.Storage{st, {Driver: "local", MountPoint: "/run/../etc"}}})
	wantCode(h.t, "bad storage", err, codes.InvalidArgument, "storages[1].mount_point: ")
	h.checkNothing(id, st.MountPoint)

	// The runtime refuses this one, after the storage was mounted.
	spec := h.spec(id, false, "sleep")
	spec.Root.Path = "/nonexistent-rootfs"
	_, err = h.c.CreateContainer(h.ctx(), &pb.CreateContainerRequest{ContainerId: id, OCI: spec, Storages: []*pb.Storage{st}})
	if err == nil || !strings.Contains(err.Error(), "cabin-runtime create") {
		h.t.Errorf("create with a missing root: %v", err)
	}
	h.checkNothing(id, st.MountPoint)

	// And the id is free.
	h.create(id, h.spec(id, false, "exit", "0"), st)
	h.remove(id)
	h.checkNothing(id, st.MountPoint)
}

func (h *ctr) checkNothing(id, mountPoint string) {
	h.t.Helper()
	if _, err := h.c.StartContainer(h.ctx(), &pb.StartContainerRequest{ContainerId: id}); err == nil {
		h.t.Errorf("container %s exists", id)
	}
	if _, err := os.Stat(filepath.Join(h.bundles, id)); !os.IsNotExist(err) {
		h.t.Errorf("bundle left: %v", err)
	}
	if fstype, _ := mountedAt(h.t, mountPoint); fstype != "" {
		h.t.Errorf("%s mounted (%s)", mountPoint, fstype)
	}
	if _, err := os.Lstat(mountPoint); !os.IsNotExist(err) {
		h.t.Errorf("%s left: %v", mountPoint, err)
	}
}

func (h *ctr) testPause() {
	id := "pause"
	h.run(id, false, "sleep")
	h.readUntil(id, "", "ready")
	_, err := h.c.StartContainer(h.ctx(), &pb.StartContainerRequest{ContainerId: id})
	wantCode(h.t, "second start", err, codes.FailedPrecondition, "")
	if _, err := h.c.PauseContainer(h.ctx(), &pb.PauseContainerRequest{ContainerId: id}); err != nil {
		h.t.Fatal(err)
	}
	_, err = h.c.ExecProcess(h.ctx(), &pb.ExecProcessRequest{ContainerId: id, ExecId: "e1", Process: h.spec(id, false, "exit", "0").Process})
	wantCode(h.t, "exec while paused", err, codes.FailedPrecondition, "")
	_, err = h.c.PauseContainer(h.ctx(), &pb.PauseContainerRequest{ContainerId: id})
	wantCode(h.t, "second pause", err, codes.FailedPrecondition, "")
	if _, err := h.c.ResumeContainer(h.ctx(), &pb.ResumeContainerRequest{ContainerId: id}); err != nil {
		h.t.Fatal(err)
	}
	h.exec(id, "e1", false, "exit", "0")
	if st := h.wait(id, "e1"); st != 0 {
		h.t.Errorf("status %d", st)
	}
	h.remove(id)
}

// testBounds: with Bounds, a container gets its cgroup below the parent
// and the parent's limits where its spec sets none, keeps those it sets,
// has its sizeless tmpfs sized and its oom_score_adj raised; the runtime
// applies all of it.
func (h *ctr) testBounds() {
	tmp := h.t.TempDir()
	parent := "/" + cgroupParent + "/bounded"
	b := h
	b.c = newClient(h.t, Config{
		Runtime:     os.Getenv(runtimeEnv),
		RuntimeRoot: filepath.Join(tmp, "runtime"),
		Bundles:     filepath.Join(tmp, "bundles"),
		// The floor is above 0 here: lowering a score takes
		// CAP_SYS_RESOURCE, which a test may be run without.
		Bounds: &Bounds{CgroupParent: parent, Memory: 64 << 20, Pids: 50, MinOOMScoreAdj: 10},
	})
	h.t.Cleanup(func() {
		for _, d := range cgrouptest.Dirs(parent) {
			if err := os.Remove(d); err != nil {
				h.t.Errorf("cgroup %s: %v", d, err)
			}
		}
	})
	const id = "bounded"
	spec := h.spec(id, false, "sleep")
	spec.Linux.CgroupsPath = ""
	spec.Linux.Resources = &pb.LinuxResources{Pids: &pb.LinuxPids{Limit: 10}}
	spec.Process.OOMScoreAdj = 5
	b.create(id, spec)
	b.start(id)
	b.readUntil(id, "", "ready")

	cg := cgrouptest.Dirs(parent + "/" + id)
	if len(cg) == 0 {
		h.t.Fatalf("no cgroup %s/%s", parent, id)
	}
	pid := 0
	for _, d := range cg {
		// v1 spells the memory limit its own way.
		for file, want := range map[string]string{"pids.max": "10", "memory.max": "67108864", "memory.limit_in_bytes": "67108864"} {
			if got, err := os.ReadFile(filepath.Join(d, file)); err == nil && strings.TrimSpace(string(got)) != want {
				h.t.Errorf("%s/%s: %q, want %s", d, file, got, want)
			}
		}
		if procs, err := os.ReadFile(filepath.Join(d, "cgroup.procs")); err == nil && pid == 0 {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(procs)))
		}
	}
	if pid == 0 {
		h.t.Fatalf("no process in %v", cg)
	}
	if got, _ := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid)); strings.TrimSpace(string(got)) != "10" {
		h.t.Errorf("oom_score_adj %q, want 10", got)
	}
	mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		h.t.Fatal(err)
	}
	var tmpLine string
	for line := range strings.SplitSeq(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == "/tmp" {
			tmpLine = line
		}
	}
	// Half the container's memory limit.
	if !strings.Contains(tmpLine, "size=32768k") {
		h.t.Errorf("the container's /tmp: %q, want size=32768k", tmpLine)
	}
	b.remove(id)
}
