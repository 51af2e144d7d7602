package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	cabinv1edge "github.com/cabinvm/cabin/internal/edge/cabinv1"
	conciergeedge "github.com/cabinvm/cabin/internal/edge/concierge"
	"github.com/cabinvm/cabin/internal/hostcgroup"
	"github.com/cabinvm/cabin/internal/vmm"
	"github.com/cabinvm/cabin/internal/vmm/vmmtest"
)

// recordedCPU records the restrictions asked of it.
type recordedCPU struct{ calls []string }

func (r *recordedCPU) Restrict(_ context.Context, class hostcgroup.Class, state hostcgroup.State) error {
	r.calls = append(r.calls, string(class)+" "+string(state))
	return nil
}

func (r *recordedCPU) RestrictQuota(_ context.Context, class hostcgroup.Class, percent int) error {
	r.calls = append(r.calls, fmt.Sprintf("%s quota %d", class, percent))
	return nil
}

// conciergeOverFakes serves the real concierge edge over fake VMs on a
// unix socket, for the CLI to drive.
func conciergeOverFakes(t *testing.T, cpu *recordedCPU) (*vmmtest.Env, string) {
	t.Helper()
	e := vmmtest.New(t)
	dir, err := os.MkdirTemp("", "c")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "d.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	opts := conciergeedge.Options{}
	if cpu != nil {
		opts.CPU = cpu
		cabinv1.RegisterCpuServer(srv, cabinv1edge.NewCPU(cpu))
	}
	concierge.RegisterVmConciergeServer(srv, conciergeedge.New(e.M, opts))
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return e, sock
}

func TestVMSuspendResume(t *testing.T) {
	e, sock := conciergeOverFakes(t, nil)
	e.Start(t, vmm.Spec{Key: vmm.Key{Name: "web"}})
	r := runCLI(t, nil, "--socket", sock, "vm", "suspend", "web")
	if r.code != 0 || r.stdout != "suspended web\n" {
		t.Fatalf("suspend: %+v", r)
	}
	if in, _ := e.M.Get(vmm.Key{Name: "web"}); !in.Suspended {
		t.Errorf("the VM is not suspended: %+v", in)
	}
	r = runCLI(t, nil, "--socket", sock, "vm", "resume", "web", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"success": true`) {
		t.Fatalf("resume --json: %+v", r)
	}
	if in, _ := e.M.Get(vmm.Key{Name: "web"}); in.Suspended {
		t.Errorf("the VM is still suspended: %+v", in)
	}
	// Concierge answers success for a VM that is not there; the CLI says
	// it is not.
	r = runCLI(t, nil, "--socket", sock, "vm", "suspend", "ghost")
	if r.code != 1 || r.stderr != "cabin: no VM named ghost\n" {
		t.Errorf("suspend of a VM that is not there: %+v", r)
	}
	// A VM that is starting: the daemon's reason.
	e.Unready.Store(true)
	if _, _, err := e.M.Start(context.Background(), vmm.Spec{Key: vmm.Key{Name: "slow"}, CPUs: 1}); err != nil {
		t.Fatal(err)
	}
	r = runCLI(t, nil, "--socket", sock, "vm", "suspend", "slow")
	if r.code != 1 || !strings.Contains(r.stderr, "is starting") {
		t.Errorf("suspend of a starting VM: %+v", r)
	}
	if r := runCLI(t, nil, "--socket", sock, "vm", "suspend"); r.code != 2 {
		t.Errorf("suspend without a name: %+v", r)
	}
}

func TestVMCPU(t *testing.T) {
	cpu := &recordedCPU{}
	_, sock := conciergeOverFakes(t, cpu)
	r := runCLI(t, nil, "--socket", sock, "vm", "cpu", "--class", "arcvm", "background-quota")
	if r.code != 0 || r.stdout != "arcvm vms: background-quota\n" {
		t.Fatalf("cpu: %+v", r)
	}
	r = runCLI(t, nil, "--socket", sock, "vm", "cpu", "background", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"success": true`) {
		t.Fatalf("cpu --json: %+v", r)
	}
	r = runCLI(t, nil, "--socket", sock, "vm", "cpu", "--class", "pluginvm", "--quota", "30")
	if r.code != 0 || r.stdout != "pluginvm vms: background, at most 30% of a CPU\n" {
		t.Fatalf("cpu --quota: %+v", r)
	}
	if got := strings.Join(cpu.calls, ", "); got != "arcvm background_with_quota, termina background, pluginvm quota 30" {
		t.Errorf("restrictions %q", got)
	}
	for _, bad := range [][]string{
		{"vm", "cpu", "--class", "crostini", "background"},
		{"vm", "cpu", "sideways"},
		{"vm", "cpu"},
		{"vm", "cpu", "--quota", "0"},
		{"vm", "cpu", "--quota", "-5"},
		{"vm", "cpu", "--quota", "101"},
		{"vm", "cpu", "foreground", "--quota", "20"},
	} {
		if r := runCLI(t, nil, append([]string{"--socket", sock}, bad...)...); r.code != 2 {
			t.Errorf("%q: %+v, want a usage error", bad, r)
		}
	}
	if len(cpu.calls) != 3 {
		t.Errorf("bad input restricted something: %q", cpu.calls)
	}
}
