package concierge

import (
	"context"
	"errors"
	"fmt"

	pb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/hostcgroup"
)

// CPURestrictor restricts the CPU of classes of VMs
// (hostcgroup.Resource).
type CPURestrictor interface {
	Restrict(ctx context.Context, class hostcgroup.Class, state hostcgroup.State) error
}

// SetVmCpuRestriction restricts a class of VMs, every owner's: only root
// may (PERMISSION_DENIED). A cgroup or state that upstream does not have
// is INVALID_ARGUMENT; a restriction that could not be applied is
// success=false, as upstream reports it.
func (s *Server) SetVmCpuRestriction(ctx context.Context, req *pb.SetVmCpuRestrictionRequest) (*pb.SetVmCpuRestrictionResponse, error) {
	if !caller.FromContext(ctx).Trusted() {
		return nil, errgrpc.ToGRPC(errdefs.Errorf(errdefs.ErrPermissionDenied,
			"restricting the CPU of a class of VMs is root's: it holds for every user's VMs"))
	}
	class, err := cpuClass(req.GetCpuCgroup())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	state, err := cpuState(req.GetCpuRestrictionState())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if s.cpu == nil {
		return &pb.SetVmCpuRestrictionResponse{}, nil
	}
	if err := s.cpu.Restrict(ctx, class, state); err != nil {
		if errors.Is(err, errdefs.ErrInvalidArgument) || ctx.Err() != nil {
			return nil, errgrpc.ToGRPC(err)
		}
		return &pb.SetVmCpuRestrictionResponse{}, nil
	}
	return &pb.SetVmCpuRestrictionResponse{Success: true}, nil
}

// cpuClass is cabin's class of upstream's CPU cgroup c.
func cpuClass(c pb.CpuCgroup) (hostcgroup.Class, error) {
	switch c {
	case pb.CpuCgroup_CPU_CGROUP_TERMINA:
		return hostcgroup.Termina, nil
	case pb.CpuCgroup_CPU_CGROUP_PLUGINVM:
		return hostcgroup.PluginVM, nil
	case pb.CpuCgroup_CPU_CGROUP_ARCVM:
		return hostcgroup.ARCVM, nil
	}
	return "", errdefs.InvalidArgument("cpu_cgroup", fmt.Sprintf("%d: want TERMINA, PLUGINVM or ARCVM", c))
}

// cpuState is cabin's state of upstream's restriction state s.
func cpuState(s pb.CpuRestrictionState) (hostcgroup.State, error) {
	switch s {
	case pb.CpuRestrictionState_CPU_RESTRICTION_FOREGROUND:
		return hostcgroup.Foreground, nil
	case pb.CpuRestrictionState_CPU_RESTRICTION_BACKGROUND:
		return hostcgroup.Background, nil
	case pb.CpuRestrictionState_CPU_RESTRICTION_BACKGROUND_WITH_CFS_QUOTA_ENFORCED:
		return hostcgroup.BackgroundWithQuota, nil
	}
	return "", errdefs.InvalidArgument("cpu_restriction_state", fmt.Sprintf("%d: want FOREGROUND, BACKGROUND or BACKGROUND_WITH_CFS_QUOTA_ENFORCED", s))
}
