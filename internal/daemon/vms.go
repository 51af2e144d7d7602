package daemon

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/hypervisor"
)

// vmsServer serves cabin.v1.Vms: StartVm with cabin's extensions.
type vmsServer struct {
	cabinv1.UnimplementedVmsServer
	c *conciergeServer
}

func (s *vmsServer) StartVm(ctx context.Context, req *cabinv1.StartVmRequest) (*concierge.StartVmResponse, error) {
	if req.GetRequest() == nil {
		return nil, status.Error(codes.InvalidArgument, "request: must be set")
	}
	opts := startOptions{
		memoryMiB: int(req.GetMemoryMib()),
		kernel:    req.GetKernelPath(),
		initrd:    req.GetInitrdPath(),
	}
	switch req.GetAccelerator() {
	case cabinv1.Accelerator_ACCELERATOR_AUTO:
	case cabinv1.Accelerator_ACCELERATOR_KVM:
		opts.accel = hypervisor.AccelKVM
	case cabinv1.Accelerator_ACCELERATOR_TCG:
		opts.accel = hypervisor.AccelTCG
	default:
		return nil, status.Errorf(codes.InvalidArgument, "accelerator: unknown value %d", req.GetAccelerator())
	}
	return startVM(ctx, s.c.m, req.GetRequest(), opts)
}
