package main

import (
	"strings"
	"testing"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
)

func TestMemMiB(t *testing.T) {
	for in, want := range map[string]int{"512": 512, "512M": 512, "2G": 2048, "2g": 2048, "1536MiB": 1536, "1T": 1 << 20, " 256 ": 256} {
		var m memMiB
		if err := m.Set(in); err != nil || int(m) != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, m, err, want)
		}
	}
	for _, in := range []string{"", "1.5G", "-1", "1K", "1025K", "lots", "2X", "99999999999T"} {
		var m memMiB
		if err := m.Set(in); err == nil {
			t.Errorf("Set(%q) = %d, want an error", in, m)
		}
	}
}

func TestVMStartMemoryUnits(t *testing.T) {
	d := startDaemon(t)
	d.vms.startVM = func(*cabinv1.StartVmRequest) (*concierge.StartVmResponse, error) {
		return &concierge.StartVmResponse{Success: true, Status: concierge.VmStatus_VM_STATUS_RUNNING}, nil
	}
	if r := d.run(t, nil, "vm", "start", "web", "--memory", "2G"); r.code != 0 {
		t.Fatalf("vm start --memory 2G: %+v", r)
	}
	calls := d.vms.calls()
	if len(calls) != 1 || calls[0].GetMemoryMib() != 2048 {
		t.Fatalf("calls %v, want one with memory_mib 2048", calls)
	}
	if r := d.run(t, nil, "vm", "start", "web", "--memory", "1.5G"); r.code != 2 || !strings.Contains(r.stderr, "1.5G") {
		t.Errorf("--memory 1.5G: %+v; want a usage error naming it", r)
	}
}
