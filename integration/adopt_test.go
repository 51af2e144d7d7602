package integration

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
)

// TestStoppedQEMUAcrossRestart is issue 22's first fault: cabind restarts
// while a VM's QEMU does not answer (SIGSTOP). cabind serves at once; the
// VM stays listed, unreachable; a start of its name is refused and
// touches nothing of the live QEMU's; the VM is taken back once QEMU runs
// again. Another such VM, never continued, is still ended by a stop.
func TestStoppedQEMUAcrossRestart(t *testing.T) {
	e := needEnv(t)
	const frozenName, doomedName = "cit-frozen", "cit-doomed"
	frozen := bootOwnVM(t, e, frozenName)
	doomed := bootOwnVM(t, e, doomedName)
	t.Cleanup(func() {
		// Whatever happened, leave no stopped QEMU behind.
		syscall.Kill(frozen.pid, syscall.SIGCONT)
		syscall.Kill(doomed.pid, syscall.SIGCONT)
	})
	frozenDir := vmDirOf(t, e, frozen.pid)
	var frozenFiles []string
	e.restartDaemon(t, func() {
		for _, pid := range []int{frozen.pid, doomed.pid} {
			if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
		}
		frozenFiles = vmFiles(t, frozenDir)
	})

	// cabind answers about other VMs at once.
	start := time.Now()
	if resp := vmInfo(t, e, e.shared.name); !resp.GetSuccess() {
		t.Errorf("the shared VM after the restart: %v", resp)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("a call about another VM took %v while a stopped QEMU was being adopted", took)
	}

	// The stopped one is listed, not running, and not doubled. (The call
	// waits for the first attempt at adopting it: 10 s.)
	resp, err := concierge.NewVmConciergeClient(e.cc).GetVmInfo(testContext(t, 20*time.Second), &concierge.GetVmInfoRequest{Name: frozenName})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.GetSuccess() || resp.GetVmInfo().GetStatus() == concierge.VmStatus_VM_STATUS_RUNNING ||
		int(resp.GetVmInfo().GetPid()) != frozen.pid {
		t.Errorf("the stopped VM: %v; want it listed with its pid, not running", resp)
	}
	// cabin's own view says why.
	vm, err := cabinv1.NewVmsClient(e.cc).GetVm(testContext(t, 20*time.Second), &cabinv1.GetVmRequest{Name: frozenName})
	if err != nil || vm.GetState() != cabinv1.VmState_VM_STATE_UNREACHABLE || !strings.Contains(vm.GetProblem(), "does not answer") {
		t.Errorf("cabin.v1 GetVm of the stopped VM: %v, %v; want it unreachable, saying why", vm, err)
	}
	if res := cabinCLI(t, e, "vm", "list"); res.code != 0 || !strings.Contains(res.stdout, frozenName+" is unreachable: ") {
		t.Errorf("cabin vm list: %v; want the stopped VM unreachable, and why", res)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	start2, err := concierge.NewVmConciergeClient(e.cc).StartVm(ctx, &concierge.StartVmRequest{Name: frozenName, Cpus: 1})
	if err != nil || start2.GetSuccess() || !strings.Contains(start2.GetFailureReason(), "unreachable") {
		t.Errorf("start of the stopped VM's name: %v, %v; want a failure saying it is unreachable", start2, err)
	}
	if got := vmFiles(t, frozenDir); strings.Join(got, " ") != strings.Join(frozenFiles, " ") {
		t.Errorf("the stopped QEMU's files changed:\n%q\nwere\n%q", got, frozenFiles)
	}
	if pids := qemuPIDs(frozenDir); len(pids) != 1 || pids[0] != frozen.pid {
		t.Errorf("QEMUs %v in the stopped VM's directory, want its one, %d", pids, frozen.pid)
	}

	// Running again, it is taken back.
	if err := syscall.Kill(frozen.pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for vmInfo(t, e, frozenName).GetVmInfo().GetStatus() != concierge.VmStatus_VM_STATUS_RUNNING {
		if time.Now().After(deadline) {
			t.Fatalf("the VM was not taken back 30 s after its QEMU ran again: %v", vmInfo(t, e, frozenName))
		}
		time.Sleep(250 * time.Millisecond)
	}
	if out := mustExec(t, e, frozenName, "echo", "back"); strings.TrimSpace(out) != "back" {
		t.Errorf("exec after it was taken back: %q", out)
	}

	// The other is ended by a stop, though it never answers.
	stop, err := concierge.NewVmConciergeClient(e.cc).StopVm(testContext(t, 90*time.Second), &concierge.StopVmRequest{Name: doomedName})
	if err != nil || !stop.GetSuccess() {
		t.Fatalf("stop of the unreachable VM: %v, %v", stop, err)
	}
	if !waitGone(doomed.pid, 10*time.Second) {
		t.Errorf("the unreachable VM's QEMU (pid %d) survived its stop", doomed.pid)
	}
}

// vmDirOf is the VM directory whose QEMU is pid.
func vmDirOf(t *testing.T, e *env, pid int) string {
	t.Helper()
	for _, name := range vmDirs(t, e) {
		dir := filepath.Join(e.stateDir, "vms", name)
		if b, err := os.ReadFile(filepath.Join(dir, "qemu.pid")); err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(pid) {
			return dir
		}
	}
	t.Fatalf("no VM directory holds pid %d", pid)
	return ""
}

// vmFiles lists the files of a VM directory with their modification
// times: what a start that was refused must leave alone. The logs, which
// grow as the VM lives, by name only.
func vmFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, en := range entries {
		fi, err := en.Info()
		if err != nil {
			continue
		}
		if strings.HasSuffix(en.Name(), ".log") {
			out = append(out, en.Name())
			continue
		}
		out = append(out, en.Name()+"@"+fi.ModTime().Format(time.RFC3339Nano))
	}
	return out
}
