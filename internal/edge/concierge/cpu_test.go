package concierge

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/grpctest"
	"github.com/cabinvm/cabin/internal/hostcgroup"
)

// fakeCPU records the restrictions asked of it and answers with err.
type fakeCPU struct {
	calls []string
	err   error
}

func (f *fakeCPU) Restrict(_ context.Context, class hostcgroup.Class, state hostcgroup.State) error {
	f.calls = append(f.calls, string(class)+" "+string(state))
	return f.err
}

// SetVmCpuRestriction converts upstream's cgroups and states to cabin's,
// and is served over gRPC by the concierge edge with the rest of its
// methods.
func TestSetVmCpuRestriction(t *testing.T) {
	m, _ := newManager(t)
	cpu := &fakeCPU{}
	cc := grpctest.Serve(t, func(s *grpc.Server) { pb.RegisterVmConciergeServer(s, New(m, Options{CPU: cpu})) })
	client := pb.NewVmConciergeClient(cc)
	ctx := context.Background()
	for _, c := range []struct {
		cgroup pb.CpuCgroup
		state  pb.CpuRestrictionState
		want   string
	}{
		{pb.CpuCgroup_CPU_CGROUP_TERMINA, pb.CpuRestrictionState_CPU_RESTRICTION_BACKGROUND, "termina background"},
		{pb.CpuCgroup_CPU_CGROUP_TERMINA, pb.CpuRestrictionState_CPU_RESTRICTION_FOREGROUND, "termina foreground"},
		{pb.CpuCgroup_CPU_CGROUP_PLUGINVM, pb.CpuRestrictionState_CPU_RESTRICTION_BACKGROUND, "pluginvm background"},
		{pb.CpuCgroup_CPU_CGROUP_ARCVM, pb.CpuRestrictionState_CPU_RESTRICTION_BACKGROUND_WITH_CFS_QUOTA_ENFORCED, "arcvm background_with_quota"},
	} {
		cpu.calls = nil
		resp, err := client.SetVmCpuRestriction(ctx, &pb.SetVmCpuRestrictionRequest{CpuCgroup: c.cgroup, CpuRestrictionState: c.state})
		if err != nil || !resp.Success {
			t.Errorf("%v %v: %v, %v", c.cgroup, c.state, resp, err)
		}
		if len(cpu.calls) != 1 || cpu.calls[0] != c.want {
			t.Errorf("%v %v: restricted %q, want %q", c.cgroup, c.state, cpu.calls, c.want)
		}
	}
	// The rest of concierge is still served.
	if resp, err := client.ListVms(ctx, &pb.ListVmsRequest{}); err != nil || !resp.Success {
		t.Errorf("ListVms: %v, %v", resp, err)
	}
}

// Only root restricts, since a class holds every user's VMs; bad input is
// INVALID_ARGUMENT naming the field; a restriction that could not be
// applied is success=false.
func TestSetVmCpuRestrictionRefusals(t *testing.T) {
	m, _ := newManager(t)
	cpu := &fakeCPU{}
	s := New(m, Options{CPU: cpu})
	root := context.Background()
	req := &pb.SetVmCpuRestrictionRequest{CpuCgroup: pb.CpuCgroup_CPU_CGROUP_ARCVM, CpuRestrictionState: pb.CpuRestrictionState_CPU_RESTRICTION_BACKGROUND}

	user := caller.NewContext(root, &caller.Caller{UID: 1000})
	if _, err := s.SetVmCpuRestriction(user, req); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a user: %v", err)
	}
	if len(cpu.calls) != 0 {
		t.Errorf("restricted for a user: %q", cpu.calls)
	}
	asRoot := caller.NewContext(root, &caller.Caller{UID: 0})
	if resp, err := s.SetVmCpuRestriction(asRoot, req); err != nil || !resp.Success {
		t.Errorf("root: %v, %v", resp, err)
	}

	_, err := s.SetVmCpuRestriction(root, &pb.SetVmCpuRestrictionRequest{CpuCgroup: 7})
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), "cpu_cgroup:") {
		t.Errorf("unknown cgroup: %v", err)
	}
	_, err = s.SetVmCpuRestriction(root, &pb.SetVmCpuRestrictionRequest{CpuRestrictionState: 9})
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), "cpu_restriction_state:") {
		t.Errorf("unknown state: %v", err)
	}

	cpu.err = errdefs.Errorf(errdefs.ErrFailedPrecondition, "no CPU cgroups here")
	if resp, err := s.SetVmCpuRestriction(root, req); err != nil || resp.Success {
		t.Errorf("without cgroups: %v, %v", resp, err)
	}
	cpu.err = errors.New("write cpu.shares: no such device")
	if resp, err := s.SetVmCpuRestriction(root, req); err != nil || resp.Success {
		t.Errorf("a failed write: %v, %v", resp, err)
	}
	cpu.err = errdefs.InvalidArgument("quota", "0%: want 1 to 100")
	if _, err := s.SetVmCpuRestriction(root, req); status.Code(err) != codes.InvalidArgument {
		t.Errorf("a bad quota: %v", err)
	}
	// Composed without a restrictor.
	if resp, err := New(m, Options{}).SetVmCpuRestriction(root, req); err != nil || resp.Success {
		t.Errorf("no restrictor: %v, %v", resp, err)
	}
}
