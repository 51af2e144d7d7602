package integration

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cabinvm/cabin/api/kata"
)

// The guest's cgroups (internal/guest/cgroup).
const (
	containersCgroup = "/sys/fs/cgroup/cabin/containers"
	execCgroup       = "/sys/fs/cgroup/cabin/exec"
)

// TestContainersCannotStarveTheVM runs a memory hog in a container of the
// shared VM, then a fork bomb in another beside it, then the bomb alone,
// and execs into the VM throughout: every exec must succeed, the agent
// must go on answering, and once the containers are removed the VM must
// be as it was. What it waits for it reads from the kernel, not from
// cabin's cgroups, so that it runs the same against an agent without
// them, where the execs fail; cabin's limits are checked after.
func TestContainersCannotStarveTheVM(t *testing.T) {
	e := needEnv(t)
	vm := e.shared.name
	ctx := toVM(testContext(t, 5*time.Minute), vm)
	agent := kata.NewAgentServiceClient(e.cc)

	vals := fields(t, mustExec(t, e, vm, "sh", "-c", "sed -n 's/MemTotal: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo; "+
		"cat /proc/sys/kernel/threads-max; sed -n 's/oom_kill //p' /proc/vmstat; cut -d' ' -f4 /proc/loadavg | cut -d/ -f2"))
	memTotal, threadsMax, ooms, tasks := vals[0]<<10, vals[1], vals[2], vals[3]

	// Removed on the way out, whatever happens: the VM is shared.
	run := func(id, script string) {
		t.Helper()
		t.Cleanup(func() { removeContainer(t, agent, vm, id) })
		if _, err := agent.CreateContainer(ctx, &kata.CreateContainerRequest{ContainerId: id, ExecId: id,
			Storages: []*kata.Storage{kataRootfs()}, OCI: kataSpec("sh", "-c", script)}); err != nil {
			t.Fatalf("CreateContainer %s: %v", id, err)
		}
		if _, err := agent.StartContainer(ctx, &kata.StartContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("StartContainer %s: %v", id, err)
		}
	}

	// dd holds its block in memory while it copies; together they want
	// more than the VM has, and each that the OOM killer ends is started
	// again. The init loops on wait, a builtin: it needs no fork to go on,
	// and reaps the orphans that come to it.
	const block = 96 << 20
	run("it-hog", fmt.Sprintf("for i in $(seq %d); do (while :; do dd if=/dev/zero of=/dev/null bs=%d count=1000000 2>/dev/null; done) & done; while :; do wait; done",
		memTotal/block+2, block))
	waitFor(t, e, vm, "the memory hog to meet the OOM killer", "/proc/vmstat", func(s string) bool {
		return field(s, "oom_kill") > ooms
	})
	execThroughout(t, e, vm, "the memory hog", 8*time.Second)

	// Beside the hog, the bomb mostly meets the OOM killer too, which
	// could end it all: its init sets it off again whenever its last
	// process is gone. Its stderr is read, or its processes would stop
	// on a full pipe; it says when a fork is refused for want of tasks.
	run("it-bomb", "b() { b | b & }; while :; do b; wait; done")
	var refused atomic.Int64 // when the bomb last said so, in UnixNano
	read := make(chan struct{})
	go func() {
		defer close(read)
		var tail []byte
		for {
			resp, err := agent.ReadStderr(ctx, &kata.ReadStreamRequest{ContainerId: "it-bomb", Len: 64 << 10})
			if err != nil || len(resp.GetData()) == 0 {
				return // removed, or the test is over
			}
			tail = append(tail, resp.GetData()...)
			if strings.Contains(string(tail), "Resource temporarily unavailable") {
				refused.Store(time.Now().UnixNano())
			}
			tail = tail[max(0, len(tail)-64):]
		}
	}()
	waitFor(t, e, vm, "the fork bomb to spread", "/proc/loadavg", func(s string) bool {
		f := strings.Fields(s)
		_, total, _ := strings.Cut(f[3], "/")
		n, _ := strconv.ParseInt(total, 10, 64)
		return n > tasks+200
	})
	execThroughout(t, e, vm, "the memory hog and the fork bomb", 8*time.Second)

	// Alone, the bomb takes every task it may have: the case, in
	// which no process could start anywhere in the VM.
	removeContainer(t, agent, vm, "it-hog")
	alone := time.Now().UnixNano()
	deadline := time.Now().Add(90 * time.Second)
	for refused.Load() < alone {
		if time.Now().After(deadline) {
			t.Fatal("the fork bomb had no fork refused in 90s")
		}
		time.Sleep(200 * time.Millisecond)
	}
	execThroughout(t, e, vm, "the fork bomb at its limit", 8*time.Second)
	// The agent answers its other services too.
	if _, err := agent.GetGuestDetails(ctx, &kata.GuestDetailsRequest{}); err != nil {
		t.Errorf("GetGuestDetails during the bomb: %v", err)
	}

	// The bomb is held by cabin's limits: below the VM's, on the
	// containers' parent and each container (the kernel counts a refused
	// fork in the forking process's cgroup); and the agent is the OOM
	// killer's last choice.
	vals = fields(t, mustExec(t, e, vm, "sh", "-c", "cd "+containersCgroup+" && cat pids.max memory.max pids.current it-bomb/pids.max /proc/1/oom_score_adj && "+
		"sed -n 's/oom_kill //p' memory.events && sed -n 's/max //p' it-bomb/pids.events"))
	pidsMax, memMax, pidsNow, bombMax, agentAdj, cgOOMs, cgRefused := vals[0], vals[1], vals[2], vals[3], vals[4], vals[5], vals[6]
	t.Logf("containers: pids.max %d of %d tasks (%d used), memory.max %d MiB of %d MiB; %d OOM kills, %d forks refused",
		pidsMax, threadsMax, pidsNow, memMax>>20, memTotal>>20, cgOOMs, cgRefused)
	if pidsMax <= 0 || pidsMax >= threadsMax || memMax <= 0 || memMax >= memTotal || bombMax != pidsMax || agentAdj != -997 {
		t.Errorf("limits %v: want pids and memory below the VM's, the bomb's pids.max the parent's, and the agent's oom_score_adj -997", vals)
	}
	if cgOOMs == 0 || cgRefused == 0 {
		t.Errorf("the hogs were not held by the containers' cgroups: %d OOM kills there, %d forks refused", cgOOMs, cgRefused)
	}

	begin := time.Now()
	removeContainer(t, agent, vm, "it-bomb")
	<-read
	t.Logf("the bomb's container removed in %v", time.Since(begin).Round(time.Millisecond))

	// As it was: no container's cgroup left, nothing counted against the
	// parent, and a container runs again.
	left := mustExec(t, e, vm, "sh", "-c", "find "+containersCgroup+" -mindepth 1 -type d; cat "+containersCgroup+"/pids.current")
	if strings.TrimSpace(left) != "0" {
		t.Errorf("after the hogs, the containers' cgroup holds:\n%s", left)
	}
	if res := cabinCLI(t, e, "run", vm, "--", "sh", "-c", "echo fine"); res.code != 0 || res.stdout != "fine\n" {
		t.Errorf("cabin run after the hogs: %v", res)
	}
}

// TestExecSessionEnds: an exec's process tree ends with the exec, even a
// process that left its process group with setsid: when the client dies,
// and when the exec's process exits.
func TestExecSessionEnds(t *testing.T) {
	e := needEnv(t)
	vm := e.shared.name
	// The escapee says its pid from inside its new session, through a
	// FIFO, so that it is out of the exec's process group by then.
	const escape = `f=$(mktemp -u) && mkfifo "$f" && { setsid sh -c 'echo $$ > "$0"; exec sleep 1000' "$f" & } && cat "$f" && rm "$f"`

	t.Run("client killed", func(t *testing.T) {
		cmd := exec.CommandContext(testContext(t, 60*time.Second), filepath.Join(e.bin, "cabin"), "vm", "exec", vm, "--", "sh", "-c", escape+"; exec sleep 1000")
		cmd.Env = append(cmd.Environ(), "CABIN_SOCKET="+e.socket)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		n, err := out.Read(buf)
		if err != nil {
			t.Fatalf("the escapee's pid: %v", err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
		if err != nil {
			t.Fatalf("the escapee's pid %q: %v", buf[:n], err)
		}
		// It said its pid just before it became sleep.
		for i := 0; !sleeping(t, e, vm, pid); i++ {
			if i == 50 {
				t.Fatalf("the escapee %d does not run", pid)
			}
			time.Sleep(100 * time.Millisecond)
		}
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		deadline := time.Now().Add(15 * time.Second)
		for !gone(t, e, vm, pid) {
			if time.Now().After(deadline) {
				t.Fatalf("the escapee %d still runs after its exec's client died", pid)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	t.Run("process exited", func(t *testing.T) {
		res, err := execArgs(testContext(t, 30*time.Second), e.cc, vm, "sh", "-c", escape)
		if err != nil || res.code != 0 {
			t.Fatalf("exec: %v, %v", res, err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(res.stdout)))
		if err != nil {
			t.Fatalf("the escapee's pid %q: %v", res.stdout, err)
		}
		// Gone by the time the exit was reported.
		if !gone(t, e, vm, pid) {
			t.Errorf("the escapee %d runs on after its exec ended", pid)
		}
	})

	// Each exec's cgroup goes with it: the one left is the asking exec's.
	if out := mustExec(t, e, vm, "sh", "-c", "ls "+execCgroup+" | grep -c '^[0-9]'"); out != "1\n" {
		t.Errorf("exec sessions' cgroups: %q, want only the asking one's", out)
	}
}

// execThroughout execs into the VM one command after another for d, now
// and then through the CLI as the user did, and fails t unless
// every one succeeds; it logs how long they took.
func execThroughout(t *testing.T, e *env, vm, during string, d time.Duration) {
	t.Helper()
	// It forks, in the exec's session.
	argv := []string{"sh", "-c", "cat /proc/loadavg >/dev/null && echo ok"}
	var took []time.Duration
	for i, end := 0, time.Now().Add(d); time.Now().Before(end); i++ {
		begin := time.Now()
		var out string
		if i%4 == 3 {
			res := cabinCLI(t, e, append([]string{"vm", "exec", vm, "--"}, argv...)...)
			if res.code != 0 {
				t.Fatalf("cabin exec %d during %s: %v", i, during, res)
			}
			out = res.stdout
		} else {
			res, err := execArgs(testContext(t, 30*time.Second), e.cc, vm, argv...)
			if err != nil || res.code != 0 {
				t.Fatalf("exec %d during %s: %v, %v (stderr %q)", i, during, res, err, res.stderr)
			}
			out = string(res.stdout)
		}
		took = append(took, time.Since(begin))
		if out != "ok\n" {
			t.Fatalf("exec %d during %s: output %q", i, during, out)
		}
	}
	slices.Sort(took)
	t.Logf("during %s: %d execs, all succeeded, in min %v, median %v, max %v", during,
		len(took), took[0].Round(time.Millisecond), took[len(took)/2].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond))
}

// sleeping tells whether pid in the VM is still the escapee's sleep.
func sleeping(t *testing.T, e *env, vm string, pid int) bool {
	t.Helper()
	res, err := execArgs(testContext(t, 30*time.Second), e.cc, vm, "cat", fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatalf("exec: %v", err)
	}
	return res.code == 0 && string(res.stdout) == "sleep\x001000\x00"
}

// gone tells whether pid in the VM has exited (a zombie has: PID 1 reaps
// it in its own time).
func gone(t *testing.T, e *env, vm string, pid int) bool {
	t.Helper()
	script := `s=$(cat /proc/$1/stat 2>/dev/null) || exit 0; case "$s" in *") Z "*) exit 0;; esac; exit 1`
	res, err := execArgs(testContext(t, 30*time.Second), e.cc, vm, "sh", "-c", script, "sh", strconv.Itoa(pid))
	if err != nil {
		t.Fatalf("exec: %v", err)
	}
	return res.code == 0
}

// waitFor waits until file in the VM satisfies ok, execing into the VM to
// look.
func waitFor(t *testing.T, e *env, vm, what, file string, ok func(string) bool) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		out := mustExec(t, e, vm, "cat", file)
		if ok(out) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %s says\n%s", what, file, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// field is the number after key in s, a "key value" per line (vmstat,
// cgroup events); -1 when there is none.
func field(s, key string) int64 {
	for line := range strings.SplitSeq(s, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == key {
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return -1
}

// removeContainer removes the container id, if it is there, with its
// processes.
func removeContainer(t *testing.T, agent kata.AgentServiceClient, vm, id string) {
	t.Helper()
	ctx := toVM(testContext(t, 3*time.Minute), vm)
	_, err := agent.RemoveContainer(ctx, &kata.RemoveContainerRequest{ContainerId: id, Timeout: 120})
	if err != nil && status.Code(err) != codes.NotFound {
		t.Errorf("RemoveContainer %s: %v", id, err)
	}
}

// fields parses the whitespace-separated integers in s.
func fields(t *testing.T, s string) []int64 {
	t.Helper()
	var out []int64
	for _, f := range strings.Fields(s) {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		out = append(out, n)
	}
	return out
}
