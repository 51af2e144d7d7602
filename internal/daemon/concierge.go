package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/vmm"
)

// conciergeServer serves vm_tools.concierge.VmConcierge over the manager.
// Methods cabin does not implement yet answer Unimplemented.
type conciergeServer struct {
	concierge.UnimplementedVmConciergeServer
	m *vmm.Manager
}

// startOptions are the cabin.v1 extensions to StartVmRequest.
type startOptions struct {
	memoryMiB      int
	kernel, initrd string
	accel          hypervisor.Accel
}

func (s *conciergeServer) StartVm(ctx context.Context, req *concierge.StartVmRequest) (*concierge.StartVmResponse, error) {
	return startVM(ctx, s.m, req, startOptions{})
}

// startVM is StartVm for both services. Bad requests are gRPC errors
// (INVALID_ARGUMENT naming the field); a VM that could not start is a
// response with success=false, as upstream reports it.
func startVM(ctx context.Context, m *vmm.Manager, req *concierge.StartVmRequest, opts startOptions) (*concierge.StartVmResponse, error) {
	if err := unsupported(req); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	spec := vmm.Spec{
		Key:          vmm.Key{Owner: req.GetOwnerId(), Name: req.GetName()},
		CPUs:         int(req.GetCpus()),
		MemoryMiB:    opts.memoryMiB,
		Kernel:       opts.kernel,
		Initrd:       opts.initrd,
		KernelParams: req.GetKernelParams(),
		Accel:        opts.accel,
		VMType:       int32(req.GetVmType()),
		Timeout:      time.Duration(req.GetTimeout()) * time.Second,
		Caller:       callerOf(ctx),
	}
	info, started, err := m.Start(ctx, spec)
	if err != nil {
		switch errdefs.Code(err) {
		case codes.InvalidArgument, codes.Unimplemented, codes.Canceled, codes.DeadlineExceeded:
			return nil, errdefs.ToGRPC(err)
		}
		return &concierge.StartVmResponse{
			FailureReason: err.Error(),
			Status:        concierge.VmStatus_VM_STATUS_FAILURE,
		}, nil
	}
	resp := &concierge.StartVmResponse{Success: true, VmInfo: vmInfo(info), Status: vmStatus(info.State)}
	if started {
		resp.Status = concierge.VmStatus_VM_STATUS_STARTING
	}
	return resp, nil
}

// unsupported rejects what cabin cannot honour yet rather than ignoring it.
func unsupported(req *concierge.StartVmRequest) error {
	var fields []string
	if len(req.GetDisks()) > 0 {
		fields = append(fields, "disks")
	}
	if len(req.GetFds()) > 0 {
		fields = append(fields, "fds (use cabin.v1.Vms.StartVm kernel_path/initrd_path)")
	}
	if req.GetStartTermina() {
		fields = append(fields, "start_termina")
	}
	if req.GetEnableGpu() || req.GetEnableDgpuPassthrough() || req.GetEnableVirtgpuNativeContext() || req.GetEnableBigGl() {
		fields = append(fields, "gpu")
	}
	if req.GetEnableAudioCapture() {
		fields = append(fields, "enable_audio_capture")
	}
	if req.GetVtpmProxy() {
		fields = append(fields, "vtpm_proxy")
	}
	if req.GetStorageBallooning() {
		fields = append(fields, "storage_ballooning")
	}
	if len(fields) == 0 {
		return nil
	}
	return fmt.Errorf("not supported yet: %s: %w", strings.Join(fields, ", "), errdefs.ErrNotImplemented)
}

func (s *conciergeServer) StopVm(ctx context.Context, req *concierge.StopVmRequest) (*concierge.SuccessFailureResponse, error) {
	key, err := checkKey(req.GetOwnerId(), req.GetName())
	if err != nil {
		return nil, err
	}
	if err := s.m.Stop(ctx, key); err != nil {
		if ctx.Err() != nil {
			return nil, errdefs.ToGRPC(ctx.Err())
		}
		return &concierge.SuccessFailureResponse{FailureReason: err.Error()}, nil
	}
	return &concierge.SuccessFailureResponse{Success: true}, nil
}

func (s *conciergeServer) StopAllVms(ctx context.Context, _ *emptypb.Empty) (*emptypb.Empty, error) {
	if err := s.m.StopAll(ctx); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return &emptypb.Empty{}, nil
}

func (s *conciergeServer) GetVmInfo(ctx context.Context, req *concierge.GetVmInfoRequest) (*concierge.GetVmInfoResponse, error) {
	key, err := checkKey(req.GetOwnerId(), req.GetName())
	if err != nil {
		return nil, err
	}
	info, err := s.m.Get(key)
	if errors.Is(err, errdefs.ErrNotFound) {
		return &concierge.GetVmInfoResponse{}, nil
	}
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return &concierge.GetVmInfoResponse{Success: true, VmInfo: vmInfo(info)}, nil
}

func (s *conciergeServer) ListVms(ctx context.Context, req *concierge.ListVmsRequest) (*concierge.ListVmsResponse, error) {
	if err := vmm.ValidateOwner(req.GetOwnerId()); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	resp := &concierge.ListVmsResponse{Success: true}
	for _, in := range s.m.List(req.GetOwnerId()) {
		resp.Vms = append(resp.Vms, &concierge.ExtendedVmInfo{
			Name: in.Name, OwnerId: in.Owner, VmInfo: vmInfo(in), Status: vmStatus(in.State),
		})
	}
	return resp, nil
}

func (s *conciergeServer) GetVmLogs(ctx context.Context, req *concierge.GetVmLogsRequest) (*concierge.GetVmLogsResponse, error) {
	b, err := s.m.Logs(vmm.Key{Owner: req.GetOwnerId(), Name: req.GetName()})
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	// A proto3 string must be UTF-8; a console log need not be.
	return &concierge.GetVmLogsResponse{Log: strings.ToValidUTF8(string(b), "\uFFFD")}, nil
}

// checkKey validates a (owner, name) pair from a request.
func checkKey(owner, name string) (vmm.Key, error) {
	if err := vmm.ValidateName(name); err != nil {
		return vmm.Key{}, errdefs.ToGRPC(err)
	}
	if err := vmm.ValidateOwner(owner); err != nil {
		return vmm.Key{}, errdefs.ToGRPC(err)
	}
	return vmm.Key{Owner: owner, Name: name}, nil
}
