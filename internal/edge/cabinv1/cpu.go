package cabinv1

import (
	"context"
	"errors"
	"fmt"

	pb "github.com/cabinvm/cabin/api/cabin/v1"
	conciergepb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/edge/concierge"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/hostcgroup"
)

// QuotaRestrictor bounds the CPU of classes of VMs
// (hostcgroup.Resource).
type QuotaRestrictor interface {
	RestrictQuota(ctx context.Context, class hostcgroup.Class, percent int) error
}

// CPU serves cabin.v1.Cpu: the CPU quota SetVmCpuRestriction cannot name.
type CPU struct {
	pb.UnimplementedCpuServer
	r QuotaRestrictor
}

// NewCPU returns the Cpu edge over r; without one, every quota answers
// success=false, as where there are no cgroups.
func NewCPU(r QuotaRestrictor) *CPU { return &CPU{r: r} }

// SetCpuQuota bounds a class of VMs to a quota (hostcgroup's
// RestrictQuota). Root only, as SetVmCpuRestriction.
func (s *CPU) SetCpuQuota(ctx context.Context, req *pb.SetCpuQuotaRequest) (*conciergepb.SetVmCpuRestrictionResponse, error) {
	if !caller.FromContext(ctx).Trusted() {
		return nil, errgrpc.ToGRPC(errdefs.Errorf(errdefs.ErrPermissionDenied,
			"restricting the CPU of a class of VMs is root's: it holds for every user's VMs"))
	}
	class, err := concierge.CPUClass(req.GetCpuCgroup())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if q := req.GetQuotaPercent(); q < hostcgroup.MinQuota || q > hostcgroup.MaxQuota {
		return nil, errgrpc.ToGRPC(errdefs.InvalidArgument("quota_percent",
			fmt.Sprintf("%d: want %d to %d (percent of one CPU)", q, hostcgroup.MinQuota, hostcgroup.MaxQuota)))
	}
	if s.r == nil {
		return &conciergepb.SetVmCpuRestrictionResponse{}, nil
	}
	if err := s.r.RestrictQuota(ctx, class, int(req.GetQuotaPercent())); err != nil {
		if errors.Is(err, errdefs.ErrInvalidArgument) || ctx.Err() != nil {
			return nil, errgrpc.ToGRPC(err)
		}
		return &conciergepb.SetVmCpuRestrictionResponse{}, nil
	}
	return &conciergepb.SetVmCpuRestrictionResponse{Success: true}, nil
}
