package cabinv1

import (
	"context"
	"fmt"

	pb "github.com/cabinvm/cabin/api/cabin/v1"
	conciergepb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/edge/concierge"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/vmm"
)

// Vms serves cabin.v1.Vms: concierge's StartVm with what its request
// cannot say.
type Vms struct {
	pb.UnimplementedVmsServer
	m *vmm.Manager
}

// NewVms returns the Vms edge over m.
func NewVms(m *vmm.Manager) *Vms { return &Vms{m: m} }

// accels are the accelerators a request may name.
var accels = map[pb.Accelerator]hypervisor.Accel{
	pb.Accelerator_ACCELERATOR_AUTO: "",
	pb.Accelerator_ACCELERATOR_KVM:  hypervisor.AccelKVM,
	pb.Accelerator_ACCELERATOR_TCG:  hypervisor.AccelTCG,
}

func (s *Vms) StartVm(ctx context.Context, req *pb.StartVmRequest) (*conciergepb.StartVmResponse, error) {
	if req.GetRequest() == nil {
		return nil, errgrpc.ToGRPC(errdefs.InvalidArgument("request", "must be set"))
	}
	accel, ok := accels[req.GetAccelerator()]
	if !ok {
		return nil, errgrpc.ToGRPC(errdefs.InvalidArgument("accelerator", fmt.Sprintf("unknown value %d", req.GetAccelerator())))
	}
	return concierge.Start(ctx, s.m, req.GetRequest(), concierge.Extensions{
		MemoryMiB: int(req.GetMemoryMib()),
		Kernel:    req.GetKernelPath(),
		Initrd:    req.GetInitrdPath(),
		Accel:     accel,
	})
}
