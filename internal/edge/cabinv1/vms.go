package cabinv1

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/cabinvm/cabin/api/cabin/v1"
	conciergepb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/caller"
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

// networks are the networks a request may name.
var networks = map[pb.Network]string{
	pb.Network_NETWORK_DEFAULT: "",
	pb.Network_NETWORK_TAP:     vmm.NetworkTap,
	pb.Network_NETWORK_USER:    vmm.NetworkUser,
	pb.Network_NETWORK_NONE:    vmm.NetworkNone,
}

func (s *Vms) StartVm(ctx context.Context, req *pb.StartVmRequest) (*conciergepb.StartVmResponse, error) {
	if req.GetRequest() == nil {
		return nil, errgrpc.ToGRPC(errdefs.InvalidArgument("request", "must be set"))
	}
	accel, ok := accels[req.GetAccelerator()]
	if !ok {
		return nil, errgrpc.ToGRPC(errdefs.InvalidArgument("accelerator", fmt.Sprintf("unknown value %d", req.GetAccelerator())))
	}
	network, ok := networks[req.GetNetwork()]
	if !ok {
		return nil, errgrpc.ToGRPC(errdefs.InvalidArgument("network", fmt.Sprintf("unknown value %d", req.GetNetwork())))
	}
	return concierge.Start(ctx, s.m, req.GetRequest(), concierge.Extensions{
		MemoryMiB: int(req.GetMemoryMib()),
		Kernel:    req.GetKernelPath(),
		Initrd:    req.GetInitrdPath(),
		Accel:     accel,
		Network:   network,
		Hotplug:   req.GetHotplug(),
		Shares:    sharesOf(req.GetShares()),
	})
}

// vmStates pairs the manager's states with cabin.v1's.
var vmStates = map[vmm.State]pb.VmState{
	vmm.StateStarting:    pb.VmState_VM_STATE_STARTING,
	vmm.StateRunning:     pb.VmState_VM_STATE_RUNNING,
	vmm.StateStopping:    pb.VmState_VM_STATE_STOPPING,
	vmm.StateStopped:     pb.VmState_VM_STATE_STOPPED,
	vmm.StateAdopting:    pb.VmState_VM_STATE_ADOPTING,
	vmm.StateUnreachable: pb.VmState_VM_STATE_UNREACHABLE,
}

// vmOf is cabin.v1's description of in.
func vmOf(in vmm.Info) *pb.Vm {
	out := &pb.Vm{
		OwnerId:   in.Owner,
		Name:      in.Name,
		State:     vmStates[in.State],
		Problem:   in.Problem,
		Pid:       int32(in.PID),
		Cid:       uint32(in.CID),
		Cpus:      int32(in.CPUs),
		MemoryMib: int32(in.MemoryMiB),
		Adopted:   in.Adopted,
		VmType:    concierge.VMType(in.Type),
	}
	if in.State == vmm.StateRunning && in.Suspended {
		out.State = pb.VmState_VM_STATE_SUSPENDED
	}
	for wire, a := range accels {
		if a == in.Accel && a != "" {
			out.Accelerator = wire
		}
	}
	if !in.StartedAt.IsZero() {
		out.StartedAt = timestamppb.New(in.StartedAt)
	}
	if in.IPv4.IsValid() {
		out.Ipv4Address = in.IPv4.String()
	}
	out.Disks, out.Shares = storageOf(in)
	if in.State == vmm.StateStopped {
		out.StopReason, out.StopDetail = concierge.StopReason(in.StopReason), in.StopDetail
		if !in.StoppedAt.IsZero() {
			out.StoppedAt = timestamppb.New(in.StoppedAt)
		}
	}
	return out
}

func (s *Vms) GetVm(ctx context.Context, req *pb.GetVmRequest) (*pb.Vm, error) {
	owner, err := caller.FromContext(ctx).Owner(req.GetOwnerId())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	key := vmm.Key{Owner: owner, Name: req.GetName()}
	if err := key.Validate(); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	info, err := s.m.Get(key)
	if errors.Is(err, errdefs.ErrNotFound) {
		// Not running: its last run, if it is on disk.
		info, err = s.m.LastRun(key)
	}
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return vmOf(info), nil
}

func (s *Vms) ListVms(ctx context.Context, req *pb.ListVmsRequest) (*pb.ListVmsResponse, error) {
	owner, err := caller.FromContext(ctx).Owner(req.GetOwnerId())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if err := vmm.ValidateOwner(owner); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	infos := s.m.List(owner)
	if req.GetAll() {
		stopped, err := s.m.Stopped(owner)
		if err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
		infos = append(infos, stopped...)
		slices.SortFunc(infos, func(a, b vmm.Info) int { return strings.Compare(a.Name, b.Name) })
	}
	resp := &pb.ListVmsResponse{}
	for _, in := range infos {
		resp.Vms = append(resp.Vms, vmOf(in))
	}
	return resp, nil
}

func (s *Vms) RemoveVm(ctx context.Context, req *pb.RemoveVmRequest) (*pb.RemoveVmResponse, error) {
	owner, err := caller.FromContext(ctx).Owner(req.GetOwnerId())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if err := s.m.Remove(vmm.Key{Owner: owner, Name: req.GetName()}); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &pb.RemoveVmResponse{}, nil
}

func (s *Vms) PruneVms(ctx context.Context, req *pb.PruneVmsRequest) (*pb.PruneVmsResponse, error) {
	owner, err := caller.FromContext(ctx).Owner(req.GetOwnerId())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if err := vmm.ValidateOwner(owner); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	removed, err := s.m.Prune(owner)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &pb.PruneVmsResponse{Removed: removed}, nil
}
