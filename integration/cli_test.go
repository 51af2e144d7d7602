package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// cliResult is how a run of the cabin CLI went.
type cliResult struct {
	stdout, stderr string
	code           int
}

// cabinCLI runs the built cabin binary against the test's cabind, chosen
// with $CABIN_SOCKET as a user would.
func cabinCLI(t *testing.T, e *env, args ...string) cliResult {
	t.Helper()
	return cabinCLIInput(t, e, "", args...)
}

// cabinCLIInput is cabinCLI with stdin as the command's standard input.
func cabinCLIInput(t *testing.T, e *env, stdin string, args ...string) cliResult {
	t.Helper()
	cmd := exec.CommandContext(testContext(t, 60*time.Second), filepath.Join(e.bin, "cabin"), args...)
	cmd.Env = append(os.Environ(), "CABIN_SOCKET="+e.socket)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	res := cliResult{stdout: out.String(), stderr: errOut.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		res.code = exit.ExitCode()
	case err != nil:
		t.Fatalf("cabin %q: %v", args, err)
	}
	return res
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
}

// TestCLI drives the shared VM with the cabin command.
func TestCLI(t *testing.T) {
	e := needEnv(t)
	name := e.shared.name

	t.Run("exec exit code", func(t *testing.T) {
		res := cabinCLI(t, e, "vm", "exec", name, "--", "sh", "-c", "echo hello from $(hostname); echo oops >&2; exit 3")
		if res.code != 3 || res.stdout != "hello from "+name+"\n" || res.stderr != "oops\n" {
			t.Errorf("cabin exec: %v; want exit 3 with the command's output", res)
		}
	})

	t.Run("exec start failures exit 127 and 126", func(t *testing.T) {
		res := cabinCLI(t, e, "vm", "exec", name, "--", "cabin-no-such-command")
		if res.code != 127 || !strings.Contains(res.stderr, "cabin-no-such-command") {
			t.Errorf("a missing command: %v; want exit 127 naming it", res)
		}
		res = cabinCLI(t, e, "vm", "exec", name, "--", "/proc/version")
		if res.code != 126 || !strings.Contains(res.stderr, "/proc/version") {
			t.Errorf("a file that is not a program: %v; want exit 126 naming it", res)
		}
		res = cabinCLI(t, e, "vm", "exec", "-u", "cabin-no-such-user", name, "--", "true")
		if res.code != 126 || !strings.Contains(res.stderr, "cabin-no-such-user") {
			t.Errorf("an unknown user: %v; want exit 126 naming it", res)
		}
	})

	t.Run("exec -e -w -u", func(t *testing.T) {
		res := cabinCLI(t, e, "vm", "exec", "-e", "GREETING=hi there", "-w", "/proc", "-u", "4242:4343", name,
			"--", "sh", "-c", `echo "$GREETING|$(pwd)|$(id -u):$(id -g)"`)
		if want := "hi there|/proc|4242:4343\n"; res.code != 0 || res.stdout != want {
			t.Errorf("cabin exec -e -w -u: %v; want %q", res, want)
		}
	})

	t.Run("a start that times out says why, and so do its logs", func(t *testing.T) {
		// A guest that boots but never reports: the timeout, whatever
		// the kernel's speed (cabin's minimal one boots in about 1.2 s).
		kernel, initrd := silentGuest(t, e)
		res := cabinCLI(t, e, "vm", "start", "cit-timeout", "--timeout", "1", "--kernel", kernel, "--initrd", initrd)
		if res.code != 1 || !strings.Contains(res.stderr, "did not report within the start timeout (1s)") {
			t.Errorf("cabin vm start --timeout 1: %v; want the timeout named", res)
		}
		res = cabinCLI(t, e, "vm", "logs", "cit-timeout")
		if res.code != 0 || !strings.Contains(res.stdout, "cabind: the guest agent did not report within the start timeout (1s)") {
			t.Errorf("cabin vm logs: %v; want cabind's note", res)
		}
		// Its last run stays listed, with why it ended, until removed.
		res = cabinCLI(t, e, "vm", "list", "-a")
		if res.code != 0 || !regexp.MustCompile(`(?m)^cit-timeout\s+stopped`).MatchString(res.stdout) ||
			!strings.Contains(res.stdout, "cit-timeout stopped ") {
			t.Errorf("cabin vm list -a: %v; want the stopped VM and why", res)
		}
		if res = cabinCLI(t, e, "vm", "list"); strings.Contains(res.stdout, "cit-timeout") {
			t.Errorf("cabin vm list without -a lists a stopped VM: %v", res)
		}
		res = cabinCLI(t, e, "vm", "info", "cit-timeout")
		if res.code != 0 || !regexp.MustCompile(`(?m)^REASON\s+the guest agent did not report`).MatchString(res.stdout) {
			t.Errorf("cabin vm info of the stopped VM: %v", res)
		}
		if res = cabinCLI(t, e, "vm", "rm", name); res.code != 1 || !strings.Contains(res.stderr, "stop it first") {
			t.Errorf("cabin vm rm of a running VM: %v; want refused", res)
		}
		if res = cabinCLI(t, e, "vm", "rm", "cit-timeout"); res.code != 0 {
			t.Errorf("cabin vm rm: %v", res)
		}
		if res = cabinCLI(t, e, "vm", "list", "-a"); strings.Contains(res.stdout, "cit-timeout") {
			t.Errorf("removed, yet listed: %v", res)
		}
		if res = cabinCLI(t, e, "vm", "rm", "cit-timeout"); res.code != 1 || !strings.Contains(res.stderr, "no VM named cit-timeout") {
			t.Errorf("cabin vm rm twice: %v", res)
		}
	})

	t.Run("version and info", func(t *testing.T) {
		res := cabinCLI(t, e, "version")
		for _, re := range []string{`(?m)^cabin\s+\S+ \(go`, `(?m)^cabind\s+\S+ \(go`, `(?m)^agent\s+[^-\s]`, `(?m)^guest kernel\s+\d+\.\d+`, `(?m)^qemu\s+QEMU emulator version`, `(?m)^accelerator\s+(kvm|tcg)$`} {
			if res.code != 0 || !regexp.MustCompile(re).MatchString(res.stdout) {
				t.Errorf("cabin version: %v; want a line matching %s", res, re)
			}
		}
		res = cabinCLI(t, e, "--version")
		if res.code != 0 || !strings.HasPrefix(res.stdout, "cabin ") {
			t.Errorf("cabin --version: %v", res)
		}
		res = cabinCLI(t, e, "info", "--json")
		var info struct {
			Accel       string `json:"accel"`
			AccelReason string `json:"accel_reason"`
			StateDir    string `json:"state_dir"`
			Free        uint64 `json:"state_dir_free_bytes"`
			CPUs        int    `json:"host_cpus"`
			Running     int    `json:"vms_running"`
			Cache       int64  `json:"image_cache_bytes"`
		}
		if err := json.Unmarshal([]byte(res.stdout), &info); err != nil || res.code != 0 {
			t.Fatalf("cabin info --json: %v (%v)", res, err)
		}
		if info.Accel == "" || info.AccelReason == "" || info.StateDir != e.stateDir || info.Free == 0 || info.CPUs < 1 || info.Running < 1 || info.Cache <= 0 {
			t.Errorf("cabin info --json: %+v", info)
		}
		res = cabinCLI(t, e, "info")
		if res.code != 0 || !regexp.MustCompile(`(?m)^ACCELERATOR\s+(kvm|tcg): \S`).MatchString(res.stdout) {
			t.Errorf("cabin info: %v", res)
		}
	})

	t.Run("vm list --json", func(t *testing.T) {
		res := cabinCLI(t, e, "vm", "list", "--json")
		if res.code != 0 {
			t.Fatalf("cabin vm list --json: %v", res)
		}
		var vms []struct {
			Name  string `json:"name"`
			State string `json:"state"`
			PID   int    `json:"pid"`
			CID   int64  `json:"cid"`
			CPUs  int    `json:"cpus"`
		}
		if err := json.Unmarshal([]byte(res.stdout), &vms); err != nil {
			t.Fatalf("cabin vm list --json: %v\n%s", err, res.stdout)
		}
		for _, v := range vms {
			if v.Name != name {
				continue
			}
			if v.State != "VM_STATE_RUNNING" || v.PID != e.shared.pid || v.CID != e.shared.cid || v.CPUs != 1 {
				t.Errorf("listed %+v; want state VM_STATE_RUNNING, pid %d, cid %d, one cpu", v, e.shared.pid, e.shared.cid)
			}
			return
		}
		t.Errorf("%s is not in the list:\n%s", name, res.stdout)
	})

	t.Run("vm info", func(t *testing.T) {
		res := cabinCLI(t, e, "vm", "info", name)
		if res.code != 0 {
			t.Fatalf("cabin vm info: %v", res)
		}
		for _, re := range []string{
			`(?m)^NAME\s+` + name + `$`,
			`(?m)^STATE\s+running$`,
			fmt.Sprintf(`(?m)^PID\s+%d$`, e.shared.pid),
			fmt.Sprintf(`(?m)^CID\s+%d$`, e.shared.cid),
		} {
			if !regexp.MustCompile(re).MatchString(res.stdout) {
				t.Errorf("cabin vm info output does not match %s:\n%s", re, res.stdout)
			}
		}
	})

	t.Run("vm logs", func(t *testing.T) {
		// The agent logs its readiness after telling the host, and the
		// console is copied to the log asynchronously: poll.
		deadline := time.Now().Add(20 * time.Second)
		for {
			res := cabinCLI(t, e, "vm", "logs", name)
			if res.code != 0 {
				t.Fatalf("cabin vm logs: %v", res)
			}
			if strings.Contains(res.stdout, "cabin-agent ready") {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the log holds no \"cabin-agent ready\":\n%s", res.stdout)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	// Names the daemon rejects: the CLI exits 1 and passes on its message.
	for _, args := range [][]string{
		{"vm", "info", "a/b"},
		{"vm", "logs", ".."},
		{"vm", "exec", "a/b", "--", "true"},
	} {
		t.Run("bad name "+strings.Join(args, " "), func(t *testing.T) {
			res := cabinCLI(t, e, args...)
			if res.code != 1 || !strings.Contains(res.stderr, "name") {
				t.Errorf("cabin %q: %v; want exit 1 and a message naming the field name", args, res)
			}
		})
	}
}
