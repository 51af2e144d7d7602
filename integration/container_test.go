package integration

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/bootcfg"
)

// TestContainer runs OCI containers in the shared VM: with cabin run, and
// with a Kata AgentService client through cabind's relay, as a Kata
// runtime would.
func TestContainer(t *testing.T) {
	e := needEnv(t)
	vm := e.shared.name

	t.Run("cabin run", func(t *testing.T) {
		res := cabinCLI(t, e, "run", "--name", "it-run", vm, "--",
			"sh", "-c", "echo hello from $(hostname); ps -o pid,args; echo oops >&2; exit 4")
		if res.code != 4 || res.stderr != "oops\n" {
			t.Fatalf("cabin run: %v; want exit 4 and stderr \"oops\\n\"", res)
		}
		lines := strings.Split(strings.TrimSpace(res.stdout), "\n")
		if lines[0] != "hello from it-run" {
			t.Errorf("first line %q, want the container's own host name", lines[0])
		}
		// Its own pid namespace: the shell is PID 1 and nothing of the
		// VM's (the agent) is in sight.
		if !strings.Contains(res.stdout, "    1 sh -c") || strings.Contains(res.stdout, "init") {
			t.Errorf("ps in the container:\n%s", res.stdout)
		}
	})

	t.Run("a writable root of its own", func(t *testing.T) {
		// Each container writes to a layer of its own over the shared
		// busybox root: the next one sees none of it.
		res := cabinCLI(t, e, "run", "--rm", "--vm", vm, "busybox", "sh", "-c", "touch /x && echo data > /tmp/y && cat /tmp/y")
		if res.code != 0 || res.stdout != "data\n" {
			t.Errorf("cabin run: %v", res)
		}
		if res := cabinCLI(t, e, "run", "--rm", "--vm", vm, "busybox", "ls", "/x"); res.code == 0 {
			t.Errorf("a container sees another's write: %v", res)
		}
	})

	t.Run("no output lost at exit", func(t *testing.T) {
		const n = 20000
		res := cabinCLI(t, e, "run", vm, "--", "seq", "1", strconv.Itoa(n))
		lines := strings.Split(strings.TrimSuffix(res.stdout, "\n"), "\n")
		if res.code != 0 || len(lines) != n || lines[n-1] != strconv.Itoa(n) {
			t.Errorf("seq 1 %d in a container: exit %d, %d lines, last %q", n, res.code, len(lines), lines[len(lines)-1])
		}
	})

	t.Run("stdin", func(t *testing.T) {
		res := cabinCLIInput(t, e, "some input\n", "run", "-i", vm, "--", "sh", "-c", "wc -c")
		if res.code != 0 || strings.TrimSpace(res.stdout) != "11" {
			t.Errorf("cabin run -i: %v", res)
		}
	})

	t.Run("seccomp", func(t *testing.T) {
		// The default filter refuses a new user namespace, which the
		// kernel would give any process; without it the same call works.
		res := cabinCLI(t, e, "run", vm, "--", "unshare", "-U", "true")
		if res.code != 1 || !strings.Contains(res.stderr, "Operation not permitted") {
			t.Errorf("unshare -U under the default filter: %v; want refused", res)
		}
		if res := cabinCLI(t, e, "run", "--seccomp", "unconfined", vm, "--", "unshare", "-U", "true"); res.code != 0 {
			t.Errorf("unshare -U unconfined: %v", res)
		}
	})

	t.Run("kata client", func(t *testing.T) {
		ctx := toVM(testContext(t, 60*time.Second), vm)
		agent := kata.NewAgentServiceClient(e.cc)
		const id = "it-kata"
		// What a Kata runtime asks first: the agent is PID 1 with
		// seccomp, and the guest's memory comes in blocks.
		d, err := agent.GetGuestDetails(ctx, &kata.GuestDetailsRequest{MemBlockSize: true, MemHotplugProbe: true})
		if a := d.GetAgentDetails(); err != nil || !a.GetInitDaemon() || !a.GetSupportsSeccomp() || d.GetMemBlockSizeBytes() == 0 {
			t.Errorf("GetGuestDetails: %v, %v", d, err)
		}
		spec := kataSpec("sleep", "1000")
		storage := kataRootfs()
		if _, err := agent.CreateContainer(ctx, &kata.CreateContainerRequest{ContainerId: id, ExecId: id, Storages: []*kata.Storage{storage}, OCI: spec}); err != nil {
			t.Fatalf("CreateContainer: %v", err)
		}
		removed := false
		defer func() {
			if !removed {
				agent.RemoveContainer(ctx, &kata.RemoveContainerRequest{ContainerId: id})
			}
		}()
		_, err = agent.CreateContainer(ctx, &kata.CreateContainerRequest{ContainerId: id, ExecId: id, Storages: []*kata.Storage{storage}, OCI: spec})
		wantCode(t, err, codes.AlreadyExists)
		if _, err := agent.StartContainer(ctx, &kata.StartContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("StartContainer: %v", err)
		}

		// The share is mounted here at another mount point than cabin
		// run's: the kernel mounts a 9p tag once at a time, so the agent
		// binds the second from the first.
		if res := cabinCLI(t, e, "run", vm, "--", "head", "-1", "/etc/passwd"); res.code != 0 || !strings.HasPrefix(res.stdout, "root:") {
			t.Errorf("cabin run beside a Kata client's container: %v", res)
		}

		// A second process in the running container sees the first.
		if _, err := agent.ExecProcess(ctx, &kata.ExecProcessRequest{ContainerId: id, ExecId: "ps", Process: &kata.Process{
			Args: []string{"ps", "-o", "pid,args"}, Env: []string{"PATH=/bin"}, Cwd: "/", User: &kata.User{},
		}}); err != nil {
			t.Fatalf("ExecProcess: %v", err)
		}
		out := readAll(t, agent, ctx, id, "ps")
		if !strings.Contains(out, "    1 sleep 1000") {
			t.Errorf("ps in the container:\n%s", out)
		}
		w, err := agent.WaitProcess(ctx, &kata.WaitProcessRequest{ContainerId: id, ExecId: "ps"})
		if err != nil || w.GetStatus() != 0 {
			t.Errorf("WaitProcess(ps): %v, %v", w, err)
		}
		_, err = agent.WaitProcess(ctx, &kata.WaitProcessRequest{ContainerId: id, ExecId: "ps"})
		wantCode(t, err, codes.NotFound)

		// SIGTERM to an init that does not handle it becomes SIGKILL.
		if _, err := agent.SignalProcess(ctx, &kata.SignalProcessRequest{ContainerId: id, Signal: 15}); err != nil {
			t.Fatalf("SignalProcess: %v", err)
		}
		// Reported as Kata's agent does: the signal's number, and
		// cabin's trailer saying it was one.
		var trailer metadata.MD
		w, err = agent.WaitProcess(ctx, &kata.WaitProcessRequest{ContainerId: id}, grpc.Trailer(&trailer))
		if got := trailer.Get(kata.ExitSignalTrailer); err != nil || w.GetStatus() != 9 || len(got) != 1 || got[0] != "9" {
			t.Errorf("WaitProcess(init) after SIGTERM: %v, %v, trailer %v; want status 9 and trailer %s: 9", w, err, trailer, kata.ExitSignalTrailer)
		}
		if _, err := agent.RemoveContainer(ctx, &kata.RemoveContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("RemoveContainer: %v", err)
		}
		removed = true
		_, err = agent.StartContainer(ctx, &kata.StartContainerRequest{ContainerId: id})
		wantCode(t, err, codes.NotFound)
	})

	t.Run("nothing below a container's root", func(t *testing.T) {
		// A process with CAP_SYS_ADMIN and CAP_SYS_CHROOT can detach its
		// container's root and enter the root mount of its namespace. The
		// guest's agent moved its files off the rootfs that is that mount
		// (guestinit.LeaveRootfs): nothing is there, and nothing can be
		// put there.
		const dir = "/run/it-nsroot"
		copyToVM(t, e, vm, filepath.Join(e.bin, "nsroot"), dir+"/nsroot")
		defer mustExec(t, e, vm, "rm", "-r", dir)

		ctx := toVM(testContext(t, 60*time.Second), vm)
		agent := kata.NewAgentServiceClient(e.cc)
		const id = "it-nsroot"
		spec := kataSpec("/run/nsroot")
		spec.Mounts = append(spec.Mounts, &kata.Mount{Destination: "/run", Type: "bind", Source: dir, Options: []string{"rbind", "ro"}})
		// And the capabilities to read whatever it finds.
		caps := []string{"CAP_SYS_ADMIN", "CAP_SYS_CHROOT", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH"}
		spec.Process.Capabilities = &kata.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps}
		if _, err := agent.CreateContainer(ctx, &kata.CreateContainerRequest{ContainerId: id, ExecId: id, Storages: []*kata.Storage{kataRootfs()}, OCI: spec}); err != nil {
			t.Fatalf("CreateContainer: %v", err)
		}
		defer agent.RemoveContainer(ctx, &kata.RemoveContainerRequest{ContainerId: id})
		if _, err := agent.StartContainer(ctx, &kata.StartContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("StartContainer: %v", err)
		}
		out := readAll(t, agent, ctx, id, "")
		w, err := agent.WaitProcess(ctx, &kata.WaitProcessRequest{ContainerId: id})
		if err != nil || w.GetStatus() != 0 {
			t.Fatalf("nsroot: %v, %v; output:\n%s", w, err, out)
		}
		if out != "" {
			t.Errorf("in reach below a container's root:\n%s", out)
		}
		// The guest's own root is no longer the rootfs's, which is
		// world-writable.
		if got := mustExec(t, e, vm, "stat", "-c", "%a", "/"); got != "755\n" {
			t.Errorf("mode of the guest's root: %q, want 755", got)
		}
	})

	t.Run("nothing left behind", func(t *testing.T) {
		// Every container above is removed: no bundle or state is left,
		// and the rootfs share stays mounted where the agent mounts it
		// (bootcfg.RootfsMount) and bound once, for the next container
		// (other tests may have bound it first, elsewhere).
		out := mustExec(t, e, vm, "sh", "-c", "grep -c "+bootcfg.RootfsTag+" /proc/mounts; ls -A /run/cabin/bundles /run/cabin/runtime 2>/dev/null | grep -v : | grep -c .; true")
		if out != "2\n0\n" {
			t.Errorf("after the containers: mounts of the share and leftover entries:\n%s", out)
		}
	})
}

// kataSpec is the OCI spec of a container running args, as a Kata
// runtime would send it, on the root filesystem kataRootfs mounts.
func kataSpec(args ...string) *kata.Spec {
	return &kata.Spec{
		Version: "1.2.0",
		Process: &kata.Process{
			Args: args,
			Env:  []string{"PATH=/bin"},
			Cwd:  "/",
			User: &kata.User{},
		},
		Root: &kata.Root{Path: "/run/kata-containers/rootfs/busybox", Readonly: true},
		Mounts: []*kata.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "mode=755"}},
		},
		Linux: &kata.Linux{Namespaces: []*kata.LinuxNamespace{{Type: "pid"}, {Type: "mount"}, {Type: "ipc"}, {Type: "uts"}}},
	}
}

// kataRootfs is the storage that mounts cabin's root filesystem share.
func kataRootfs() *kata.Storage {
	return &kata.Storage{
		Driver: "9p", Source: bootcfg.RootfsTag, Fstype: "9p",
		Options: []string{"trans=virtio", "ro"}, MountPoint: "/run/kata-containers/rootfs",
	}
}

// readAll reads a process's stdout through AgentService until the empty
// read that marks its end.
func readAll(t *testing.T, agent kata.AgentServiceClient, ctx context.Context, id, execID string) string {
	t.Helper()
	var b strings.Builder
	for {
		resp, err := agent.ReadStdout(ctx, &kata.ReadStreamRequest{ContainerId: id, ExecId: execID, Len: 4096})
		if err != nil {
			t.Fatalf("ReadStdout(%s): %v", execID, err)
		}
		if len(resp.GetData()) == 0 {
			return b.String()
		}
		b.Write(resp.GetData())
		if b.Len() > 1<<20 {
			t.Fatalf("ReadStdout(%s): more than 1 MiB", execID)
		}
	}
}
