package main

import (
	"testing"

	"github.com/cabinvm/cabin/api/concierge"
)

func TestVMStop(t *testing.T) {
	d := startDaemon(t)
	d.concierge.getVMInfo = func(req *concierge.GetVmInfoRequest) (*concierge.GetVmInfoResponse, error) {
		return &concierge.GetVmInfoResponse{Success: req.GetName() != "ghost"}, nil
	}
	var got *concierge.StopVmRequest
	d.concierge.stopVM = func(req *concierge.StopVmRequest) (*concierge.SuccessFailureResponse, error) {
		got = req
		if req.GetName() != "web" {
			return &concierge.SuccessFailureResponse{FailureReason: "no VM named " + req.GetName()}, nil
		}
		return &concierge.SuccessFailureResponse{Success: true}, nil
	}
	r := d.run(t, nil, "--owner", "alice", "vm", "stop", "web")
	if r.code != 0 || r.stdout != "stopped web\n" {
		t.Errorf("got %+v", r)
	}
	if got.GetOwnerId() != "alice" {
		t.Errorf("StopVm owner_id = %q, want alice", got.GetOwnerId())
	}
	r = d.run(t, nil, "vm", "stop", "db")
	if r.code != 1 || r.stderr != "cabin: stop db: no VM named db\n" {
		t.Errorf("got %+v", r)
	}
	// Concierge's StopVm would succeed for a VM that does not exist; the
	// CLI says it does not.
	got = nil
	r = d.run(t, nil, "vm", "stop", "ghost")
	if r.code != 1 || r.stderr != "cabin: no VM named ghost\n" || got != nil {
		t.Errorf("stop of a VM that does not exist: %+v, StopVm called with %v", r, got)
	}
}
