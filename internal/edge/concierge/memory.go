package concierge

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	pb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/vmm"
)

// guestPage is the guest's page size, the unit of ReclaimVmMemory's
// page_limit (x86-64).
const guestPage = 4096

// The AdjustVm operations. memsize and rename are upstream's (for Plugin
// VMs, with the VM stopped); pvm.shared-profile too. cabin runs memsize on
// a running VM through its balloon, and adds balloon.
const (
	opMemsize       = "memsize"
	opBalloon       = "balloon"
	opRename        = "rename"
	opSharedProfile = "pvm.shared-profile"
)

// GetBalloonInfo answers with the balloon's size and the guest's free and
// available memory. As upstream, a VM that is not there, not running or
// whose guest reports no statistics is success=false (the message has no
// reason); a statistic the guest did not report is 0.
func (s *Server) GetBalloonInfo(ctx context.Context, req *pb.GetBalloonInfoRequest) (*pb.GetBalloonInfoResponse, error) {
	key, err := requestKey(ctx, req.GetOwnerId(), req.GetName())
	if err != nil {
		return nil, err
	}
	info, err := s.m.Balloon(ctx, key)
	if err != nil {
		if gerr := memoryRequestFailed(ctx, err); gerr != nil {
			return nil, gerr
		}
		return &pb.GetBalloonInfoResponse{}, nil
	}
	return &pb.GetBalloonInfoResponse{Success: true, BalloonInfo: BalloonInfo(info.BalloonStats)}, nil
}

// BalloonInfo is upstream's message of a balloon's statistics.
func BalloonInfo(st hypervisor.BalloonStats) *pb.BalloonInfo {
	known := func(v int64) int64 { return max(v, 0) }
	return &pb.BalloonInfo{
		AvailableMemory: known(st.Available),
		FreeMemory:      known(st.Free),
		BalloonSize:     known(st.Size),
	}
}

// SetBalloonTimer sets the interval at which every running VM's balloon
// follows its guest's needs, or stops it (0), as upstream's timer. It
// moves every owner's VMs, so only root may (PERMISSION_DENIED); an
// interval outside 100 ms to 24 h is INVALID_ARGUMENT.
func (s *Server) SetBalloonTimer(ctx context.Context, req *pb.SetBalloonTimerRequest) (*pb.SuccessFailureResponse, error) {
	if !caller.FromContext(ctx).Trusted() {
		return nil, errgrpc.ToGRPC(errdefs.Errorf(errdefs.ErrPermissionDenied,
			"the balloon timer is root's: it moves every user's VMs' balloons"))
	}
	ms := req.GetTimerIntervalMillis()
	if ms > uint64(vmm.MaxBalloonTimer/time.Millisecond) {
		return nil, errgrpc.ToGRPC(errdefs.InvalidArgument("timer_interval_millis",
			fmt.Sprintf("%d: want 0 (off) or %d to %d", ms, vmm.MinBalloonTimer.Milliseconds(), vmm.MaxBalloonTimer.Milliseconds())))
	}
	err := s.m.SetBalloonTimer(time.Duration(ms) * time.Millisecond)
	if errors.Is(err, errdefs.ErrInvalidArgument) {
		return nil, errgrpc.ToGRPC(errdefs.InvalidArgument("timer_interval_millis",
			fmt.Sprintf("%d: want 0 (off) or %d to %d", ms, vmm.MinBalloonTimer.Milliseconds(), vmm.MaxBalloonTimer.Milliseconds())))
	}
	return memoryAnswer(ctx, err)
}

// AggressiveBalloon starts or stops a VM's aggressive balloon.
func (s *Server) AggressiveBalloon(ctx context.Context, req *pb.AggressiveBalloonRequest) (*pb.SuccessFailureResponse, error) {
	key, err := requestKey(ctx, req.GetOwnerId(), req.GetName())
	if err != nil {
		return nil, err
	}
	return memoryAnswer(ctx, s.m.SetAggressiveBalloon(ctx, key, req.GetEnable()))
}

// ReclaimVmMemory has the guest drop its caches, then inflates and
// deflates its balloon so that the host frees what the guest gave up (at
// most page_limit pages; 0 for no limit).
func (s *Server) ReclaimVmMemory(ctx context.Context, req *pb.ReclaimVmMemoryRequest) (*pb.ReclaimVmMemoryResponse, error) {
	key, err := requestKey(ctx, req.GetOwnerId(), req.GetName())
	if err != nil {
		return nil, err
	}
	if req.GetPageLimit() < 0 {
		return nil, errgrpc.ToGRPC(errdefs.InvalidArgument("page_limit", fmt.Sprintf("%d: want 0 (no limit) or more pages", req.GetPageLimit())))
	}
	err = s.m.ReclaimMemory(ctx, key, int64(req.GetPageLimit())*guestPage)
	resp, gerr := memoryAnswer(ctx, err)
	if gerr != nil {
		return nil, gerr
	}
	return &pb.ReclaimVmMemoryResponse{Success: resp.Success, FailureReason: resp.FailureReason}, nil
}

// AdjustVm runs an adjustment operation on a VM:
//
//   - memsize MIB: the memory the running guest may use, from
//     hypervisor.MinMemoryMiB to the VM's memory; the balloon holds the
//     rest (upstream's sets a stopped Plugin VM's memory);
//   - balloon BYTES: the balloon's size (cabin's own);
//   - rename and pvm.shared-profile: upstream's, for Plugin VMs, which
//     this host cannot run: success=false saying so.
//
// An operation cabin does not know is success=false, as upstream answers
// it; a known one with bad parameters is INVALID_ARGUMENT naming the
// parameter.
func (s *Server) AdjustVm(ctx context.Context, req *pb.AdjustVmRequest) (*pb.SuccessFailureResponse, error) {
	key, err := requestKey(ctx, req.GetOwnerId(), req.GetName())
	if err != nil {
		return nil, err
	}
	op, params := req.GetOperation(), req.GetParams()
	switch op {
	case opMemsize, opBalloon:
	case opRename, opSharedProfile:
		return &pb.SuccessFailureResponse{FailureReason: fmt.Sprintf(
			"operation %q is for Plugin VMs (Parallels Desktop), which cabin cannot run", op)}, nil
	default:
		return &pb.SuccessFailureResponse{FailureReason: fmt.Sprintf(
			"unrecognized operation %q: cabin's are %q MIB and %q BYTES", op, opMemsize, opBalloon)}, nil
	}
	if len(params) != 1 {
		return nil, errgrpc.ToGRPC(errdefs.InvalidArgument("params", fmt.Sprintf("%s takes one parameter, not %d", op, len(params))))
	}
	n, err := strconv.ParseInt(params[0], 10, 64)
	if err != nil || n < 0 {
		return nil, errgrpc.ToGRPC(errdefs.InvalidArgument("params[0]", fmt.Sprintf("%q: want a whole number of %s", params[0], unit(op))))
	}
	size := n
	if op == opMemsize {
		info, err := s.m.Get(key)
		if err != nil {
			return memoryAnswer(ctx, err)
		}
		if n < hypervisor.MinMemoryMiB || n > int64(info.MemoryMiB) {
			return nil, errgrpc.ToGRPC(errdefs.InvalidArgument("params[0]", fmt.Sprintf(
				"%d MiB: want %d to the VM's %d MiB", n, hypervisor.MinMemoryMiB, info.MemoryMiB)))
		}
		size = int64(info.MemoryMiB-int(n)) << 20
	}
	err = s.m.SetBalloon(ctx, key, size)
	if errors.Is(err, errdefs.ErrInvalidArgument) {
		return nil, errgrpc.ToGRPC(errdefs.InvalidArgument("params[0]", fmt.Sprintf("%q: %v", params[0], err)))
	}
	return memoryAnswer(ctx, err)
}

func unit(op string) string {
	if op == opMemsize {
		return "MiB"
	}
	return "bytes"
}

// memoryAnswer is upstream's answer to a memory call that returned err:
// success, or success=false with the reason, or a gRPC error for a bad
// request or a call given up by its caller.
func memoryAnswer(ctx context.Context, err error) (*pb.SuccessFailureResponse, error) {
	if err == nil {
		return &pb.SuccessFailureResponse{Success: true}, nil
	}
	if gerr := memoryRequestFailed(ctx, err); gerr != nil {
		return nil, gerr
	}
	return &pb.SuccessFailureResponse{FailureReason: err.Error()}, nil
}

// memoryRequestFailed is the gRPC error for err when it is the request's
// (bad, forbidden, or given up), nil when it is the VM's, which upstream
// reports in the response.
func memoryRequestFailed(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		return errgrpc.ToGRPC(ctx.Err())
	case errors.Is(err, errdefs.ErrInvalidArgument), errors.Is(err, errdefs.ErrPermissionDenied):
		return errgrpc.ToGRPC(err)
	}
	return nil
}
