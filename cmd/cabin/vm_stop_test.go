package main

import (
	"testing"

	"github.com/cabinvm/cabin/api/concierge"
)

func TestVMStop(t *testing.T) {
	d := startDaemon(t)
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
}
