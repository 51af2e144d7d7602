package concierge

import (
	"context"
	"errors"

	"google.golang.org/protobuf/types/known/emptypb"

	pb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/diskimage"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/hostcgroup"
	"github.com/cabinvm/cabin/internal/vmm"
)

// answer is upstream's response to a call that reports its
// outcome in the body: a request that was bad, or given up by its
// caller, is an RPC error; anything else that failed is success=false.
func answer(ctx context.Context, err error) (*pb.SuccessFailureResponse, error) {
	if err == nil {
		return &pb.SuccessFailureResponse{Success: true}, nil
	}
	if rpcError(ctx, err) {
		return nil, errgrpc.ToGRPC(err)
	}
	return &pb.SuccessFailureResponse{FailureReason: err.Error()}, nil
}

// rpcError tells an error that is the request's (bad, refused, or given
// up by its caller) from one of the VM's, which upstream reports in the
// response's body.
func rpcError(ctx context.Context, err error) bool {
	return ctx.Err() != nil || errors.Is(err, errdefs.ErrInvalidArgument) || errors.Is(err, errdefs.ErrPermissionDenied)
}

// SuspendVm suspends a VM (vmm.Manager.Suspend). As upstream, a VM that
// is not there is no error to the caller: success.
func (s *Server) SuspendVm(ctx context.Context, req *pb.SuspendVmRequest) (*pb.SuccessFailureResponse, error) {
	key, err := requestKey(ctx, req.GetOwnerId(), req.GetName())
	if err != nil {
		return nil, err
	}
	err = s.m.Suspend(ctx, key)
	if errors.Is(err, errdefs.ErrNotFound) {
		err = nil
	}
	return answer(ctx, err)
}

// ResumeVm resumes a VM and sets its guest's clock (vmm.Manager.Resume);
// a VM that is not there is success, as upstream.
func (s *Server) ResumeVm(ctx context.Context, req *pb.ResumeVmRequest) (*pb.SuccessFailureResponse, error) {
	key, err := requestKey(ctx, req.GetOwnerId(), req.GetName())
	if err != nil {
		return nil, err
	}
	err = s.m.Resume(ctx, key)
	if errors.Is(err, errdefs.ErrNotFound) {
		err = nil
	}
	return answer(ctx, err)
}

// SyncVmTimes sets the clock of every VM its caller may act on (all for
// root) from the host's, answering upstream's counts.
func (s *Server) SyncVmTimes(ctx context.Context, _ *emptypb.Empty) (*pb.SyncVmTimesResponse, error) {
	c := caller.FromContext(ctx)
	requests, failures := s.m.SyncTimes(ctx, func(k vmm.Key) bool { return c.Sees(k.Owner) })
	if ctx.Err() != nil {
		return nil, errgrpc.ToGRPC(ctx.Err())
	}
	resp := &pb.SyncVmTimesResponse{Requests: uint32(requests), Failures: uint32(len(failures))}
	for _, f := range failures {
		resp.FailureReason = append(resp.FailureReason, f.Error())
	}
	return resp, nil
}

// StopVmWithoutOwnerId stops the VMs of the name, whoever owns them, as
// upstream does: for root, every owner's; for a user, only the user's
// own (another user's VMs are not the caller's to stop).
func (s *Server) StopVmWithoutOwnerId(ctx context.Context, req *pb.StopVmRequest) (*pb.SuccessFailureResponse, error) {
	if req.GetOwnerId() != "" {
		return nil, errgrpc.ToGRPC(errdefs.InvalidArgument("owner_id", "must be empty: StopVmWithoutOwnerId stops the VMs of the name whoever owns them (StopVm takes an owner)"))
	}
	if err := vmm.ValidateName(req.GetName()); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	c := caller.FromContext(ctx)
	err := s.m.StopWhere(ctx, func(k vmm.Key) bool { return k.Name == req.GetName() && c.Sees(k.Owner) }, vmm.StopRequested)
	return answer(ctx, err)
}

// SetUpVmUser makes a user in a VM's guest (vmm.Manager.SetUpUser).
func (s *Server) SetUpVmUser(ctx context.Context, req *pb.SetUpVmUserRequest) (*pb.SetUpVmUserResponse, error) {
	key, err := requestKey(ctx, req.GetOwnerId(), req.GetVmName())
	if err != nil {
		return nil, err
	}
	u := vmm.User{Name: req.GetUsername(), UID: req.GetUid(), HasUID: req.Uid != nil, Groups: req.GetGroupNames()}
	if err := u.Validate(); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	name, err := s.m.SetUpUser(ctx, key, u)
	if err == nil {
		return &pb.SetUpVmUserResponse{Success: true, Username: name}, nil
	}
	if rpcError(ctx, err) {
		return nil, errgrpc.ToGRPC(err)
	}
	if name == "" {
		name = u.Name
	}
	return &pb.SetUpVmUserResponse{FailureReason: err.Error(), Username: name}, nil
}

// GetVmLaunchAllowed says whether a VM may start now, from the host's
// state (vmm.Manager.LaunchAllowed).
func (s *Server) GetVmLaunchAllowed(context.Context, *pb.GetVmLaunchAllowedRequest) (*pb.GetVmLaunchAllowedResponse, error) {
	ok, reason := s.m.LaunchAllowed()
	return &pb.GetVmLaunchAllowedResponse{Allowed: ok, Reason: reason}, nil
}

// GetVmEnterpriseReportingInfo answers the kernel the VM's guest runs.
func (s *Server) GetVmEnterpriseReportingInfo(ctx context.Context, req *pb.GetVmEnterpriseReportingInfoRequest) (*pb.GetVmEnterpriseReportingInfoResponse, error) {
	key, err := requestKey(ctx, req.GetOwnerId(), req.GetVmName())
	if err != nil {
		return nil, err
	}
	v, err := s.m.KernelVersion(ctx, key)
	if err == nil {
		return &pb.GetVmEnterpriseReportingInfoResponse{Success: true, VmKernelVersion: v}, nil
	}
	if rpcError(ctx, err) {
		return nil, errgrpc.ToGRPC(err)
	}
	return &pb.GetVmEnterpriseReportingInfoResponse{FailureReason: err.Error()}, nil
}

// SetCrostiniVmType sets the type of the caller's Termina VM
// (vmm.Manager.SetCrostiniType), and of its disk, as ListVmDisks reports
// it (diskimage.Store.SetVMType); cryptohome_id is its owner. A disk with
// an operation under way refuses it before the VM's type changes.
func (s *Server) SetCrostiniVmType(ctx context.Context, req *pb.SetCrostiniVmTypeRequest) (*pb.SetCrostiniVmTypeResponse, error) {
	owner, err := caller.FromContext(ctx).Owner(req.GetCryptohomeId())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	t, ok := vmTypeOf(req.GetVmType())
	if !ok {
		return nil, errgrpc.ToGRPC(errdefs.InvalidArgument("vm_type", "unknown value "+req.GetVmType().String()))
	}
	disk := diskimage.Key{Owner: owner, Name: vmm.TerminaName}
	if s.disks != nil && s.disks.Busy(disk) {
		err = errdefs.Errorf(errdefs.ErrFailedPrecondition, "disk of vm %s: %w", vmm.TerminaName, diskimage.ErrBusy)
	} else if err = s.m.SetCrostiniType(owner, t); err == nil && s.disks != nil {
		_, err = s.disks.SetVMType(disk, int32(req.GetVmType()))
	}
	if err != nil {
		if rpcError(ctx, err) {
			return nil, errgrpc.ToGRPC(err)
		}
		return &pb.SetCrostiniVmTypeResponse{Reason: err.Error()}, nil
	}
	return &pb.SetCrostiniVmTypeResponse{Success: true}, nil
}

// GetVmGpuCachePath answers the VM's GPU cache directory
// (vmm.Manager.GPUCachePath). Upstream answers a failure with a D-Bus
// error, so this one is an RPC error.
func (s *Server) GetVmGpuCachePath(ctx context.Context, req *pb.GetVmGpuCachePathRequest) (*pb.GetVmGpuCachePathResponse, error) {
	key, err := requestKey(ctx, req.GetOwnerId(), req.GetName())
	if err != nil {
		return nil, err
	}
	p, err := s.m.GPUCachePath(key)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &pb.GetVmGpuCachePathResponse{Path: p}, nil
}

// vmTypeOf is cabin's type of upstream's t, false for a value upstream
// does not have.
func vmTypeOf(t pb.VmInfo_VmType) (vmm.VMType, bool) {
	for _, v := range vmTypes {
		if v.wire == t {
			return v.cabin, true
		}
	}
	return 0, false
}

// CPUClass is cabin's class of VMs of upstream's CPU cgroup c, for the
// cabin.v1 extension of SetVmCpuRestriction; INVALID_ARGUMENT naming
// cpu_cgroup for one upstream has not.
func CPUClass(c pb.CpuCgroup) (hostcgroup.Class, error) { return cpuClass(c) }
