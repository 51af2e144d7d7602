package integration

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cabinvm/cabin/api/concierge"
)

// TestDaemonRestart restarts cabind under running VMs: the shared VM
// survives and is re-adopted as it was, a VM that died while no daemon
// watched is reported stopped, and CIDs are not handed out twice. cabind
// runs again afterwards.
func TestDaemonRestart(t *testing.T) {
	e := needEnv(t)
	const victimName, freshName = "cit-victim", "cit-fresh"
	shared := vmInfo(t, e, e.shared.name).GetVmInfo()
	if int(shared.GetPid()) != e.shared.pid || shared.GetCid() != e.shared.cid {
		t.Fatalf("the shared VM is pid %d cid %d, booted as pid %d cid %d", shared.GetPid(), shared.GetCid(), e.shared.pid, e.shared.cid)
	}
	victim := bootOwnVM(t, e, victimName)

	e.restartDaemon(t, func() {
		if processGone(e.shared.pid) {
			t.Fatalf("the shared VM's QEMU (pid %d) died with cabind", e.shared.pid)
		}
		if err := syscall.Kill(victim.pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill the victim's QEMU: %v", err)
		}
		if !waitGone(victim.pid, 10*time.Second) {
			t.Fatalf("the victim's QEMU (pid %d) survived SIGKILL", victim.pid)
		}
	})

	t.Run("shared VM adopted", func(t *testing.T) {
		if processGone(e.shared.pid) {
			t.Fatalf("the shared VM's QEMU (pid %d) is gone", e.shared.pid)
		}
		resp := vmInfo(t, e, e.shared.name)
		info := resp.GetVmInfo()
		if !resp.GetSuccess() || info.GetStatus() != concierge.VmStatus_VM_STATUS_RUNNING ||
			int(info.GetPid()) != e.shared.pid || info.GetCid() != e.shared.cid {
			t.Errorf("GetVmInfo after the restart: %v; want running with pid %d cid %d", resp, e.shared.pid, e.shared.cid)
		}
	})

	t.Run("exec after restart", func(t *testing.T) {
		// The agent's channel reconnects to the new daemon.
		out := mustExec(t, e, e.shared.name, "hostname")
		if strings.TrimSpace(out) != e.shared.name {
			t.Errorf("hostname: %q, want %s", out, e.shared.name)
		}
	})

	t.Run("dead VM not adopted", func(t *testing.T) {
		if resp := vmInfo(t, e, victimName); resp.GetSuccess() {
			t.Errorf("GetVmInfo of the VM killed while cabind was down: %v; want success=false", resp)
		}
		if listed(t, e, victimName) {
			t.Error("ListVms shows the VM killed while cabind was down")
		}
	})

	t.Run("CIDs not reused", func(t *testing.T) {
		t.Cleanup(func() { stopVM(t, e, freshName) })
		resp, err := concierge.NewVmConciergeClient(e.cc).StartVm(testContext(t, 30*time.Second),
			&concierge.StartVmRequest{Name: freshName, Cpus: 1})
		if err != nil || !resp.GetSuccess() {
			t.Fatalf("StartVm: %v %v", err, resp)
		}
		cid := resp.GetVmInfo().GetCid()
		if cid <= max(e.shared.cid, victim.cid) {
			t.Errorf("a VM started after the restart got cid %d; the shared VM has %d and the dead one had %d", cid, e.shared.cid, victim.cid)
		}
	})
}
