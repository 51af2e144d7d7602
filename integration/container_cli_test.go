package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/cabinvm/cabin/api/kata"
)

// TestContainerCLI drives the container verbs of the built cabin binary
// on the shared VM: run -d, ps, logs (-f, -t, --tail, across a cabind
// restart), exec, cp both ways, stats, stop, rm; and hostile input.
func TestContainerCLI(t *testing.T) {
	e := needEnv(t)
	vm := e.shared.name
	const id = "it-ticker"
	t.Cleanup(func() { cabinCLI(t, e, "rm", "-f", id, "it-follow", "it-flood", "it-auto", "it-force", "it-logmax") })

	// It says hello on both streams, then ticks; SIGTERM ends it with 5.
	res := cabinCLI(t, e, "run", "-d", "--vm", vm, "--name", id, "-e", "CIT_FROM_RUN=1", "-w", "/tmp", "busybox", "sh", "-c",
		"echo out1; echo err1 >&2; trap 'echo got-term; exit 5' TERM; while :; do sleep 1; done")
	if res.code != 0 || strings.TrimSpace(res.stdout) != id {
		t.Fatalf("run -d: %v; want its id", res)
	}

	t.Run("ps", func(t *testing.T) {
		res := cabinCLI(t, e, "ps")
		if res.code != 0 || !strings.Contains(res.stdout, id) || !strings.Contains(res.stdout, "Up ") {
			t.Fatalf("ps: %v", res)
		}
		var cs []map[string]any
		res = cabinCLI(t, e, "ps", "--json", "--vm", vm)
		if err := json.Unmarshal([]byte(res.stdout), &cs); err != nil {
			t.Fatalf("ps --json: %v, %v", res, err)
		}
		found := false
		for _, c := range cs {
			if c["id"] == id {
				found = true
				if c["state"] != "CONTAINER_STATE_RUNNING" || c["vm"] != vm || c["image"] != "busybox" || c["logs_kept"] != true {
					t.Errorf("ps --json: %v", c)
				}
			}
		}
		if !found {
			t.Errorf("ps --json does not list %s: %s", id, res.stdout)
		}
	})

	t.Run("logs", func(t *testing.T) {
		res := waitCLI(t, e, func(r cliResult) bool { return strings.Contains(r.stdout, "out1") }, "logs", id)
		if res.stdout != "out1\n" || res.stderr != "err1\n" {
			t.Errorf("logs: %v", res)
		}
		res = cabinCLI(t, e, "logs", "-t", "--tail", "1", id)
		if f := strings.Fields(res.stdout + res.stderr); res.code != 0 || len(f) != 2 {
			t.Errorf("logs -t --tail 1: %v", res)
		} else if _, err := time.Parse(time.RFC3339Nano, f[0]); err != nil {
			t.Errorf("logs -t: %q is not a time", f[0])
		}
		// --vm asks Logs straight away, without listing (decisions §33);
		// a container not there reads as when listed first.
		res = cabinCLI(t, e, "logs", "--vm", vm, id)
		if res.code != 0 || res.stdout != "out1\n" || res.stderr != "err1\n" {
			t.Errorf("logs --vm: %v", res)
		}
		res = cabinCLI(t, e, "logs", "--vm", vm, "it-nosuch")
		if res.code != 1 || !strings.Contains(res.stderr, `no container "it-nosuch" in VM `+vm) {
			t.Errorf("logs --vm of no container: %v", res)
		}
		res = cabinCLI(t, e, "logs", "it-nosuch")
		if res.code != 1 || !strings.Contains(res.stderr, `no container "it-nosuch" in your running VMs`) {
			t.Errorf("logs of no container: %v", res)
		}
	})

	t.Run("logs kept within --log-max-size", func(t *testing.T) {
		// 40000 numbered lines, 229 KB, into a log of two 64 KiB files:
		// the last 64-128 KiB of it are kept, whole lines in order, and
		// --tail finds the very last ones.
		res := cabinCLI(t, e, "run", "-d", "--log-max-size", "64K", "--vm", vm, "--name", "it-logmax", "busybox", "seq", "1", "40000")
		if res.code != 0 {
			t.Fatalf("run -d --log-max-size: %v", res)
		}
		// -f waits for the end of the output, all of it drained into
		// the log (it reads along, so it may get more than is kept).
		if res := cabinCLI(t, e, "logs", "-f", "it-logmax"); res.code != 0 || !strings.HasSuffix(res.stdout, "\n40000\n") {
			t.Fatalf("logs -f: %d bytes, %v", len(res.stdout), res.stderr)
		}
		res = cabinCLI(t, e, "logs", "it-logmax")
		if res.code != 0 || len(res.stdout) < 64<<10-32<<10 || len(res.stdout) > 128<<10 || !strings.HasSuffix(res.stdout, "\n39999\n40000\n") {
			t.Errorf("logs: %d bytes ending %q, %v; want 64-128 KiB ending with 40000", len(res.stdout), res.stdout[max(0, len(res.stdout)-20):], res.stderr)
		}
		if !strings.Contains(res.stderr, "not kept") {
			t.Errorf("logs: stderr %q; want the dropped output said", res.stderr)
		}
		if res := cabinCLI(t, e, "logs", "--tail", "3", "it-logmax"); res.stdout != "39998\n39999\n40000\n" {
			t.Errorf("logs --tail 3: %v", res)
		}
		if res := cabinCLI(t, e, "rm", "it-logmax"); res.code != 0 {
			t.Errorf("rm: %v", res)
		}
	})

	t.Run("logs -f follows to the end", func(t *testing.T) {
		res := cabinCLI(t, e, "run", "-d", "--vm", vm, "--name", "it-follow", "busybox", "sh", "-c", "echo a; sleep 2; echo b")
		if res.code != 0 {
			t.Fatalf("run -d: %v", res)
		}
		res = cabinCLI(t, e, "logs", "-f", "it-follow")
		if res.code != 0 || res.stdout != "a\nb\n" {
			t.Errorf("logs -f: %v; want both lines, then the end", res)
		}
		res = waitCLI(t, e, func(r cliResult) bool { return strings.Contains(r.stdout, "Exited (0)") }, "ps", "-a")
		if !strings.Contains(res.stdout, "it-follow") {
			t.Errorf("ps -a: %v", res)
		}
	})

	t.Run("exec", func(t *testing.T) {
		res := cabinCLI(t, e, "exec", id, "--", "sh", "-c", "echo in $(hostname); exit 4")
		if res.code != 4 || res.stdout != "in "+id+"\n" {
			t.Errorf("exec: %v; want exit 4 and the container's hostname", res)
		}
		res = cabinCLIInput(t, e, "typed\n", "exec", "-i", id, "cat")
		if res.code != 0 || res.stdout != "typed\n" {
			t.Errorf("exec -i cat: %v", res)
		}
		// A user by name, from the container's own /etc/passwd.
		res = cabinCLI(t, e, "exec", "-u", "nobody", id, "--", "sh", "-c", "echo $(id -u):$(id -g)")
		if res.code != 0 || res.stdout != "65534:65534\n" {
			t.Errorf("exec -u nobody: %v", res)
		}
		// Without flags: the container's own environment and directory.
		res = cabinCLI(t, e, "exec", id, "--", "sh", "-c", `echo "$(pwd) $HOME $CIT_FROM_RUN"`)
		if want := "/tmp /root 1\n"; res.code != 0 || res.stdout != want {
			t.Errorf("exec's environment: %v; want %q, the container's", res, want)
		}
		res = cabinCLI(t, e, "exec", "-u", "cit-no-such-user", id, "true")
		if res.code != 1 || !strings.Contains(res.stderr, `"cit-no-such-user"`) {
			t.Errorf("exec -u of an unknown user: %v; want refused naming it", res)
		}
		res = cabinCLI(t, e, "exec", "it-nobody", "true")
		if res.code != 1 || !strings.Contains(res.stderr, `no container "it-nobody"`) {
			t.Errorf("exec into nothing: %v", res)
		}
		// The VM's own name: the old form, with a note.
		res = cabinCLI(t, e, "exec", vm, "--", "hostname")
		if res.code != 0 || strings.TrimSpace(res.stdout) != vm || !strings.Contains(res.stderr, "cabin vm exec") {
			t.Errorf("exec VM: %v; want the VM's hostname and a note", res)
		}
	})

	t.Run("cp", func(t *testing.T) {
		dir := t.TempDir()
		src := filepath.Join(dir, "in")
		data := bytes.Repeat([]byte("cabin cp\n"), 200000)
		if err := os.WriteFile(src, data, 0o640); err != nil {
			t.Fatal(err)
		}
		if res := cabinCLI(t, e, "cp", src, id+":/tmp/"); res.code != 0 {
			t.Fatalf("cp in: %v", res)
		}
		res := cabinCLI(t, e, "exec", id, "--", "sh", "-c", "wc -c < /tmp/in; stat -c %a /tmp/in")
		if f := strings.Fields(res.stdout); res.code != 0 || len(f) != 2 || f[0] != "1800000" || f[1] != "640" {
			t.Errorf("the file in the container: %v", res)
		}
		if res := cabinCLI(t, e, "cp", id+":/tmp/in", filepath.Join(dir, "out")); res.code != 0 {
			t.Fatalf("cp out: %v", res)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "out")); err != nil || !bytes.Equal(b, data) {
			t.Errorf("cp out: %d bytes, %v", len(b), err)
		}
		// .. stops at the container's root.
		if res := cabinCLI(t, e, "cp", id+":/tmp/../../../../tmp/in", "-"); res.code != 0 || res.stdout != string(data) {
			t.Errorf("cp of a path with ..: exit %d, %d bytes, %q; want the container's /tmp/in", res.code, len(res.stdout), res.stderr)
		}
		if res := cabinCLI(t, e, "cp", id+":/nope", dir); res.code != 1 {
			t.Errorf("cp of a missing file: %v", res)
		}
	})

	t.Run("stats", func(t *testing.T) {
		res := cabinCLI(t, e, "stats", "--no-stream", "--json", id)
		var rows []map[string]any
		if err := json.Unmarshal([]byte(res.stdout), &rows); err != nil || res.code != 0 || len(rows) != 1 {
			t.Fatalf("stats --json: %v, %v", res, err)
		}
		s := rows[0]
		if s["pids"].(float64) < 2 || s["memory_usage_bytes"].(float64) <= 0 || s["cpu_percent"].(float64) < 0 {
			t.Errorf("stats: %v; want a shell and its sleep, some memory", s)
		}
	})

	t.Run("logs survive a cabind restart", func(t *testing.T) {
		e.restartDaemon(t, nil)
		res := waitCLI(t, e, func(r cliResult) bool { return r.code == 0 }, "logs", id)
		if res.stdout != "out1\n" || res.stderr != "err1\n" {
			t.Errorf("logs after the restart: %v", res)
		}
	})

	t.Run("rm refused while running", func(t *testing.T) {
		res := cabinCLI(t, e, "rm", id)
		if res.code != 1 || !strings.Contains(res.stderr, "-f") {
			t.Errorf("rm of a running container: %v", res)
		}
		if res := cabinCLI(t, e, "ps", "-q"); !strings.Contains(res.stdout, id) {
			t.Errorf("gone after a refused rm: %v", res)
		}
	})

	t.Run("stop", func(t *testing.T) {
		res := cabinCLI(t, e, "stop", "-t", "30", id)
		if res.code != 0 || strings.TrimSpace(res.stdout) != id {
			t.Fatalf("stop: %v", res)
		}
		res = cabinCLI(t, e, "ps", "-a", "--format", "{{.Id}} {{.State}} {{.ExitCode}}")
		if !strings.Contains(res.stdout, id+" CONTAINER_STATE_STOPPED 5") {
			t.Errorf("after stop (its trap exits 5): %v", res)
		}
		if res := cabinCLI(t, e, "logs", id); !strings.Contains(res.stdout, "got-term") {
			t.Errorf("logs after stop: %v", res)
		}
		if res := cabinCLI(t, e, "rm", id); res.code != 0 {
			t.Errorf("rm of a stopped container: %v", res)
		}
		if res := cabinCLI(t, e, "logs", id); res.code != 1 {
			t.Errorf("logs of a removed container: %v", res)
		}
	})

	t.Run("rm -f", func(t *testing.T) {
		if res := cabinCLI(t, e, "run", "-d", "--vm", vm, "--name", "it-force", "busybox", "sleep", "600"); res.code != 0 {
			t.Fatalf("run -d: %v", res)
		}
		if res := cabinCLI(t, e, "rm", "-f", "it-force"); res.code != 0 {
			t.Errorf("rm -f: %v", res)
		}
		if res := cabinCLI(t, e, "ps", "-aq"); strings.Contains(res.stdout, "it-force") {
			t.Errorf("listed after rm -f: %v", res)
		}
	})

	t.Run("run -d --rm goes at its exit", func(t *testing.T) {
		if res := cabinCLI(t, e, "run", "-d", "--rm", "--vm", vm, "--name", "it-auto", "busybox", "true"); res.code != 0 {
			t.Fatalf("run -d --rm: %v", res)
		}
		waitCLI(t, e, func(r cliResult) bool { return r.code == 0 && !strings.Contains(r.stdout, "it-auto") }, "ps", "-aq")
	})

	t.Run("a flood is bounded and the agent serves", func(t *testing.T) {
		res := cabinCLI(t, e, "run", "-d", "--vm", vm, "--name", "it-flood", "busybox", "sh", "-c", "yes flood | head -c 20000000; echo; echo done")
		if res.code != 0 {
			t.Fatalf("run -d: %v", res)
		}
		waitCLI(t, e, func(r cliResult) bool { return strings.Contains(r.stdout, "it-flood CONTAINER_STATE_STOPPED") },
			"ps", "-a", "--format", "{{.Id}} {{.State}}")
		res = cabinCLI(t, e, "logs", "it-flood")
		if res.code != 0 || len(res.stdout) > 2<<20 || !strings.HasSuffix(res.stdout, "\ndone\n") || !strings.Contains(res.stderr, "not kept") {
			t.Errorf("logs of the flood: exit %d, %d bytes, ends %q, stderr %q", res.code, len(res.stdout), res.stdout[max(len(res.stdout)-20, 0):], res.stderr)
		}
		cabinCLI(t, e, "rm", "it-flood")
	})

	t.Run("hostile", func(t *testing.T) {
		for _, args := range [][]string{{"stop", "it-ghost"}, {"rm", "it-ghost"}, {"logs", "it-ghost"}, {"stats", "--no-stream", "it-ghost"},
			{"cp", "it-ghost:/x", "-"}} {
			if res := cabinCLI(t, e, args...); res.code != 1 || !strings.Contains(res.stderr, "it-ghost") {
				t.Errorf("%q: %v; want exit 1 naming it", args, res)
			}
		}
		for _, args := range [][]string{{"logs", "../x"}, {"stop", "-t", "-3", "x"}, {"cp", "a", "b"}, {"logs", "--tail", "-1", "x"}} {
			if res := cabinCLI(t, e, args...); res.code != 2 {
				t.Errorf("%q: %v; want a usage error", args, res)
			}
		}
		if res := cabinCLI(t, e, "run", "-d", "--vm", vm, "--name", "it-force", "busybox", "sleep", "600"); res.code != 0 {
			t.Fatalf("run -d: %v", res)
		}
		agent := kata.NewAgentServiceClient(e.cc)
		ctx := toVM(testContext(t, time.Minute), vm)
		_, err := agent.SignalProcess(ctx, &kata.SignalProcessRequest{ContainerId: "it-force", Signal: 65})
		wantCode(t, err, codes.InvalidArgument, "signal")
		_, err = agent.WaitProcess(ctx, &kata.WaitProcessRequest{ContainerId: "it-force", ExecId: "it-no-such-exec"})
		wantCode(t, err, codes.NotFound, "it-no-such-exec")
		_, err = agent.ReadStdout(ctx, &kata.ReadStreamRequest{ContainerId: "it-force", Len: 10})
		wantCode(t, err, codes.FailedPrecondition, "kept")
		if res := cabinCLI(t, e, "rm", "-f", "it-force"); res.code != 0 {
			t.Errorf("rm -f: %v", res)
		}
	})
}

// TestContainerCLIQEMUKilled: a VM whose QEMU is killed while a logs -f
// follows one of its containers ends the follow with an error, and the
// container verbs then leave that VM out, naming it.
func TestContainerCLIQEMUKilled(t *testing.T) {
	e := needEnv(t)
	const name = "cit-ctrkill"
	vm := bootOwnVM(t, e, name)
	if res := cabinCLI(t, e, "run", "-d", "--vm", name, "--name", "it-doomed", "busybox", "sh", "-c", "echo first; sleep 600"); res.code != 0 {
		t.Fatalf("run -d: %v", res)
	}
	waitCLI(t, e, func(r cliResult) bool { return strings.Contains(r.stdout, "first") }, "logs", "it-doomed")
	cmd := exec.CommandContext(testContext(t, time.Minute), filepath.Join(e.bin, "cabin"), "logs", "-f", "it-doomed")
	cmd.Env = append(os.Environ(), "CABIN_SOCKET="+e.socket)
	var out, errOut lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	untilTrue(t, func() bool { return strings.Contains(out.String(), "first") })
	if err := syscall.Kill(vm.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if err == nil || cmd.ProcessState.ExitCode() != 1 {
		t.Errorf("logs -f when the VM died: %v, stderr %q; want exit 1", err, errOut.String())
	}
	res := waitCLI(t, e, func(r cliResult) bool { return r.code == 1 }, "logs", "it-doomed")
	if !strings.Contains(res.stderr, "it-doomed") {
		t.Errorf("logs of a container of a dead VM: %v", res)
	}
}

// waitCLI runs cabin with args until ok accepts its result, and returns
// it; the test's deadline bounds it.
func waitCLI(t *testing.T, e *env, ok func(cliResult) bool, args ...string) cliResult {
	t.Helper()
	ctx := testContext(t, 2*time.Minute)
	for {
		res := cabinCLI(t, e, args...)
		if ok(res) {
			return res
		}
		select {
		case <-ctx.Done():
			t.Fatalf("cabin %q never gave what was waited for; last: %v", args, res)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// untilTrue waits until cond holds; the test's deadline bounds it.
func untilTrue(t *testing.T, cond func() bool) {
	t.Helper()
	ctx := testContext(t, time.Minute)
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatal("the condition never held")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// lockedBuffer is a buffer a test reads while a command writes it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
