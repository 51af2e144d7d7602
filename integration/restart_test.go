package integration

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
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

	// Streams open when cabind stops: an exec that would run for a
	// minute, and an events watch. Each ends with a status that says why.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	execStream, err := execv1.NewExecClient(e.cc).Exec(toVM(ctx, e.shared.name))
	if err != nil {
		t.Fatal(err)
	}
	start := &execv1.ExecStart{Argv: []string{"sleep", "60"}}
	if err := execStream.Send(&execv1.ExecRequest{Kind: &execv1.ExecRequest_Start{Start: start}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := execStream.Recv(); err != nil || resp.GetStarted() == nil {
		t.Fatalf("exec: %v, %v; want started", resp, err)
	}
	watch, err := cabinv1.NewEventsClient(e.cc).Watch(ctx, &cabinv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Header(); err != nil {
		t.Fatal(err)
	}

	e.restartDaemon(t, func() {
		for what, recv := range map[string]func() error{
			"exec":   func() error { return drain(execStream.Recv) },
			"events": func() error { return drain(watch.Recv) },
		} {
			if err := recv(); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "cabind is stopping") {
				t.Errorf("%s stream when cabind stopped: %v; want Unavailable saying cabind is stopping", what, err)
			}
		}
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

// drain receives until recv fails, and returns why.
func drain[T any](recv func() (T, error)) error {
	for {
		if _, err := recv(); err != nil {
			return err
		}
	}
}
