package integration

import (
	"sync"
	"syscall"
	"testing"
	"time"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
)

func isStartingUp(ev *cabinv1.Event) bool { return ev.GetVmStartingUp() != nil }
func isStarted(ev *cabinv1.Event) bool    { return ev.GetVmStarted() != nil }
func isStopped(ev *cabinv1.Event) bool    { return ev.GetVmStopped() != nil }
func isStopEvent(ev *cabinv1.Event) bool {
	return ev.GetVmStopping() != nil || ev.GetVmStopped() != nil
}

// TestLifecycle takes a VM of its own through its life: two concurrent
// starts, the started signal, an idempotent start, and a stop.
func TestLifecycle(t *testing.T) {
	e := needEnv(t)
	t.Parallel()
	const name = "cit-life"
	ctx := testContext(t, 2*bootTimeout)
	c := concierge.NewVmConciergeClient(e.cc)
	w, err := watchEvents(ctx, e.cc, name)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	t.Cleanup(func() {
		if listed(t, e, name) {
			stopVM(t, e, name)
		}
	})

	// Two concurrent starts of a new name start one VM.
	var resps [2]*concierge.StartVmResponse
	var errs [2]error
	var wg sync.WaitGroup
	for i := range resps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resps[i], errs[i] = c.StartVm(ctx, &concierge.StartVmRequest{Name: name, Cpus: 1})
		}()
	}
	wg.Wait()
	for i := range resps {
		if errs[i] != nil || !resps[i].GetSuccess() {
			t.Fatalf("concurrent StartVm %d: %v %v", i, errs[i], resps[i])
		}
	}
	pid, cid := int(resps[0].GetVmInfo().GetPid()), resps[0].GetVmInfo().GetCid()
	if pid == 0 || cid == 0 {
		t.Fatalf("StartVm answered pid %d cid %d", pid, cid)
	}
	if p, c := int(resps[1].GetVmInfo().GetPid()), resps[1].GetVmInfo().GetCid(); p != pid || c != cid {
		t.Errorf("concurrent starts answered pid %d cid %d and pid %d cid %d: two VMs", pid, cid, p, c)
	}

	ev, err := w.next(bootTimeout, func(ev *cabinv1.Event) bool { return isStarted(ev) || isStopped(ev) })
	if err != nil {
		t.Fatal(err)
	}
	started := ev.GetVmStarted()
	if started == nil {
		t.Fatalf("the VM stopped while starting: %s", w.summary())
	}
	if started.GetVmInfo().GetPid() != int32(pid) || started.GetVmInfo().GetCid() != cid {
		t.Errorf("VmStartedSignal has pid %d cid %d, want %d and %d", started.GetVmInfo().GetPid(), started.GetVmInfo().GetCid(), pid, cid)
	}
	if n := w.count(isStartingUp); n != 1 {
		t.Errorf("%d VmStartingUp signals for two concurrent starts, want 1: %s", n, w.summary())
	}
	if su := w.seen[0].GetVmStartingUp(); su == nil || su.GetCid() != cid {
		t.Errorf("the first event is %s, want VmStartingUp with cid %d", eventKind(w.seen[0]), cid)
	}

	// Starting a running VM is idempotent.
	again, err := c.StartVm(ctx, &concierge.StartVmRequest{Name: name, Cpus: 1})
	if err != nil || !again.GetSuccess() {
		t.Fatalf("StartVm of a running VM: %v %v", err, again)
	}
	if again.GetStatus() != concierge.VmStatus_VM_STATUS_RUNNING || int(again.GetVmInfo().GetPid()) != pid {
		t.Errorf("StartVm of a running VM: status %v pid %d, want VM_STATUS_RUNNING and pid %d",
			again.GetStatus(), again.GetVmInfo().GetPid(), pid)
	}

	// StopVm: stopping, then stopped on request, and the process is gone.
	resp, err := c.StopVm(ctx, &concierge.StopVmRequest{Name: name})
	if err != nil || !resp.GetSuccess() {
		t.Fatalf("StopVm: %v %v", err, resp)
	}
	if !processGone(pid) {
		t.Errorf("StopVm succeeded but QEMU pid %d still runs", pid)
	}
	if ev, err = w.next(10*time.Second, isStopEvent); err != nil {
		t.Fatal(err)
	}
	if ev.GetVmStopping() == nil {
		t.Errorf("first stop event is %s, want VmStopping", eventKind(ev))
	} else if ev, err = w.next(10*time.Second, isStopped); err != nil {
		t.Fatal(err)
	}
	if got := ev.GetVmStopped().GetReason(); ev.GetVmStopped() == nil || got != concierge.VmStopReason_STOP_VM_REQUESTED {
		t.Errorf("stopped with %s, want reason STOP_VM_REQUESTED", eventKind(ev))
	}
	if n := w.count(isStartingUp); n != 1 {
		t.Errorf("%d VmStartingUp signals in the VM's life, want 1: %s", n, w.summary())
	}
	if listed(t, e, name) {
		t.Error("ListVms still shows the stopped VM")
	}
	if resp := vmInfo(t, e, name); resp.GetSuccess() {
		t.Errorf("GetVmInfo of the stopped VM succeeded: %v", resp)
	}
}

// TestVMExitsOnItsOwn kills a VM's QEMU behind cabind's back.
func TestVMExitsOnItsOwn(t *testing.T) {
	e := needEnv(t)
	t.Parallel()
	const name = "cit-crash"
	vm := bootOwnVM(t, e, name)
	w, err := watchEvents(testContext(t, 30*time.Second), e.cc, name)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	if err := syscall.Kill(vm.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ev, err := w.next(10*time.Second, isStopped)
	if err != nil {
		t.Fatal(err)
	}
	if got := ev.GetVmStopped(); got.GetReason() != concierge.VmStopReason_VM_EXITED || got.GetCid() != vm.cid {
		t.Errorf("got %s cid %d, want reason VM_EXITED and cid %d", eventKind(ev), got.GetCid(), vm.cid)
	}
	if listed(t, e, name) {
		t.Error("ListVms still shows the dead VM")
	}
	if resp := vmInfo(t, e, name); resp.GetSuccess() {
		t.Errorf("GetVmInfo of the dead VM succeeded: %v", resp)
	}
}
