package cabinv1

import (
	"context"
	"testing"

	pb "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/internal/vmm"
	"github.com/cabinvm/cabin/internal/vmm/vmmtest"
)

// cabin.v1 reports a suspended VM as such, where concierge, as upstream,
// says RUNNING.
func TestSuspendedState(t *testing.T) {
	e := vmmtest.New(t)
	e.Start(t, vmm.Spec{Key: vmm.Key{Name: "vm"}})
	s := NewVms(e.M)
	ctx := context.Background()
	state := func() pb.VmState {
		t.Helper()
		v, err := s.GetVm(ctx, &pb.GetVmRequest{Name: "vm"})
		if err != nil {
			t.Fatal(err)
		}
		return v.GetState()
	}
	if got := state(); got != pb.VmState_VM_STATE_RUNNING {
		t.Fatalf("running VM: %v", got)
	}
	if err := e.M.Suspend(ctx, vmm.Key{Name: "vm"}); err != nil {
		t.Fatal(err)
	}
	if got := state(); got != pb.VmState_VM_STATE_SUSPENDED {
		t.Errorf("suspended VM: %v", got)
	}
	list, err := s.ListVms(ctx, &pb.ListVmsRequest{})
	if err != nil || len(list.GetVms()) != 1 || list.GetVms()[0].GetState() != pb.VmState_VM_STATE_SUSPENDED {
		t.Errorf("ListVms: %v, %v", list, err)
	}
	if err := e.M.Resume(ctx, vmm.Key{Name: "vm"}); err != nil {
		t.Fatal(err)
	}
	if got := state(); got != pb.VmState_VM_STATE_RUNNING {
		t.Errorf("resumed VM: %v", got)
	}
}
