package maitred

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"net/netip"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/guest/storage"
)

// Service is vm_tools.Maitred over a Maitred. It defines every method of
// the service (a test walks the service's descriptor): the embedded
// Unimplemented server is there only because the generated code asks for
// it.
type Service struct {
	vmtools.UnimplementedMaitredServer
	m *Maitred
}

var _ vmtools.MaitredServer = (*Service)(nil)

// NewService returns the gRPC service for m.
func NewService(m *Maitred) *Service { return &Service{m: m} }

var empty = &vmtools.EmptyMessage{}

var statusOf = map[Status]vmtools.ProcessStatus{
	Launched: vmtools.ProcessStatus_LAUNCHED,
	Exited:   vmtools.ProcessStatus_EXITED,
	Signaled: vmtools.ProcessStatus_SIGNALED,
	Failed:   vmtools.ProcessStatus_FAILED,
}

func (s *Service) LaunchProcess(ctx context.Context, req *vmtools.LaunchProcessRequest) (*vmtools.LaunchProcessResponse, error) {
	out, err := s.m.Launch(ctx, Process{
		Argv:        req.GetArgv(),
		Env:         req.GetEnv(),
		Respawn:     req.GetRespawn(),
		UseConsole:  req.GetUseConsole(),
		WaitForExit: req.GetWaitForExit(),
	})
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &vmtools.LaunchProcessResponse{Status: statusOf[out.Status], Code: int32(out.Code)}, nil
}

func (s *Service) Mount(ctx context.Context, req *vmtools.MountRequest) (*vmtools.MountResponse, error) {
	errno, err := s.m.Mount(ctx, MountSpec{
		Source:       req.GetSource(),
		Target:       req.GetTarget(),
		FSType:       req.GetFstype(),
		Flags:        uintptr(req.GetMountflags()),
		Options:      req.GetOptions(),
		CreateTarget: req.GetCreateTarget(),
		Permissions:  req.GetPermissions(),
		MkfsIfNeeded: req.GetMkfsIfNeeded(),
	})
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &vmtools.MountResponse{Error: int32(errno)}, nil
}

func (s *Service) GetKernelVersion(context.Context, *vmtools.EmptyMessage) (*vmtools.GetKernelVersionResponse, error) {
	release, version, err := s.m.KernelVersion()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &vmtools.GetKernelVersionResponse{KernelRelease: release, KernelVersion: version}, nil
}

func (s *Service) Shutdown(context.Context, *vmtools.EmptyMessage) (*vmtools.EmptyMessage, error) {
	s.m.Shutdown()
	return empty, nil
}

func (s *Service) SetTime(_ context.Context, req *vmtools.SetTimeRequest) (*vmtools.EmptyMessage, error) {
	if err := s.m.SetTime(toTime(req.GetTime())); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return empty, nil
}

// toTime converts ts, giving the zero time for a missing or malformed one.
func toTime(ts *timestamppb.Timestamp) time.Time {
	if ts == nil || ts.CheckValid() != nil {
		return time.Time{}
	}
	return ts.AsTime()
}

func (s *Service) SetTimezone(ctx context.Context, req *vmtools.SetTimezoneRequest) (*vmtools.EmptyMessage, error) {
	if err := s.m.SetTimezone(ctx, req.GetTimezoneName(), req.GetUseBindMount()); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return empty, nil
}

func (s *Service) SetResolvConfig(_ context.Context, req *vmtools.SetResolvConfigRequest) (*vmtools.EmptyMessage, error) {
	c := req.GetResolvConfig()
	err := s.m.SetResolvConfig(ResolvConfig{Nameservers: c.GetNameservers(), SearchDomains: c.GetSearchDomains()})
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return empty, nil
}

func (s *Service) ConfigureNetwork(ctx context.Context, req *vmtools.NetworkConfigRequest) (*vmtools.EmptyMessage, error) {
	c := req.GetIpv4Config()
	nc := NetworkConfig{Address: fromWire(c.GetAddress()), Netmask: fromWire(c.GetNetmask()), Gateway: fromWire(c.GetGateway())}
	if r := req.GetResolvConfig(); r != nil {
		nc.Resolv = &ResolvConfig{Nameservers: r.GetNameservers(), SearchDomains: r.GetSearchDomains()}
	}
	if err := s.m.ConfigureNetwork(ctx, nc); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return empty, nil
}

// fromWire reads an IPv4 address from a fixed32 field, which carries it
// in network byte order (spec/semantics.md): its little-endian bytes are
// the address's.
func fromWire(v uint32) netip.Addr {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// ResetIPv6 is OnHostNetworkChanged, as upstream, which deprecated it.
func (s *Service) ResetIPv6(ctx context.Context, _ *vmtools.EmptyMessage) (*vmtools.EmptyMessage, error) {
	return s.OnHostNetworkChanged(ctx, nil)
}

func (s *Service) OnHostNetworkChanged(ctx context.Context, _ *vmtools.EmptyMessage) (*vmtools.EmptyMessage, error) {
	if err := s.m.HostNetworkChanged(ctx); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return empty, nil
}

func (s *Service) PrepareToSuspend(context.Context, *vmtools.EmptyMessage) (*vmtools.EmptyMessage, error) {
	s.m.PrepareToSuspend()
	return empty, nil
}

func (s *Service) StartTermina(ctx context.Context, req *vmtools.StartTerminaRequest) (*vmtools.StartTerminaResponse, error) {
	out, err := s.m.StartTermina(ctx, Termina{
		StatefulDevice:  req.GetStatefulDevice(),
		LXDSubnet:       req.GetLxdIpv4Subnet(),
		AllowPrivileged: req.GetAllowPrivilegedContainers(),
	})
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	resp := &vmtools.StartTerminaResponse{
		MountResult:       vmtools.StartTerminaResponse_SUCCESS,
		FreeBytes:         clampInt64(out.FreeBytes),
		FreeBytesHasValue: true,
	}
	if out.Repaired {
		resp.MountResult = vmtools.StartTerminaResponse_PARTIAL_DATA_LOSS
	}
	return resp, nil
}

func clampInt64(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}

func (s *Service) ConfigureContainerGuest(ctx context.Context, req *vmtools.ConfigureContainerGuestRequest) (*vmtools.EmptyMessage, error) {
	if err := s.m.ConfigureContainerGuest(ctx, req.GetContainerToken()); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return empty, nil
}

func (s *Service) Mount9P(ctx context.Context, req *vmtools.Mount9PRequest) (*vmtools.MountResponse, error) {
	errno, err := s.m.Mount9P(ctx, req.GetPort(), req.GetTarget())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &vmtools.MountResponse{Error: int32(errno)}, nil
}

// ResizeFilesystem answers in the body whether the resize started: STARTED,
// ALREADY_IN_PROGRESS, or FAILED when it could not start (the reason is in
// the guest's log). A request it cannot act on at all (size 0, no
// stateful disk) is an error, as upstream's unknown stateful device is.
func (s *Service) ResizeFilesystem(ctx context.Context, req *vmtools.ResizeFilesystemRequest) (*vmtools.ResizeFilesystemResponse, error) {
	err := s.m.ResizeFilesystem(ctx, req.GetSize())
	resp := &vmtools.ResizeFilesystemResponse{}
	switch {
	case err == nil:
		resp.Status = vmtools.ResizeFilesystemResponse_STARTED
	case errors.Is(err, storage.ErrResizeRunning):
		resp.Status = vmtools.ResizeFilesystemResponse_ALREADY_IN_PROGRESS
	case errors.Is(err, ErrResizeNotStarted):
		resp.Status = vmtools.ResizeFilesystemResponse_FAILED
	default:
		return nil, errgrpc.ToGRPC(err)
	}
	return resp, nil
}

func (s *Service) GetResizeStatus(context.Context, *vmtools.EmptyMessage) (*vmtools.GetResizeStatusResponse, error) {
	st, err := s.m.ResizeStatus()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &vmtools.GetResizeStatusResponse{ResizeInProgress: st.Running, CurrentSize: st.Current, TargetSize: st.Target}, nil
}

func (s *Service) GetResizeBounds(ctx context.Context, _ *vmtools.EmptyMessage) (*vmtools.GetResizeBoundsResponse, error) {
	minimum, err := s.m.ResizeMinimum(ctx)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &vmtools.GetResizeBoundsResponse{MinimumSize: minimum}, nil
}

func (s *Service) GetAvailableSpace(context.Context, *vmtools.EmptyMessage) (*vmtools.GetAvailableSpaceResponse, error) {
	free, err := s.m.AvailableSpace()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &vmtools.GetAvailableSpaceResponse{AvailableSpace: free}, nil
}

// UpdateStorageBalloon answers BALLOON_INFLATE_FAILED in the body when the
// balloon could not grow as asked; a request it cannot act on (a negative
// free space, no stateful disk) is an error.
func (s *Service) UpdateStorageBalloon(_ context.Context, req *vmtools.UpdateStorageBalloonRequest) (*vmtools.UpdateStorageBalloonResponse, error) {
	err := s.m.UpdateStorageBalloon(req.GetFreeSpaceBytes(), req.GetState().String())
	switch {
	case err == nil:
		return &vmtools.UpdateStorageBalloonResponse{Result: vmtools.UpdateStorageBalloonResult_SUCCESS}, nil
	case errors.Is(err, storage.ErrBalloonInflate):
		return &vmtools.UpdateStorageBalloonResponse{Result: vmtools.UpdateStorageBalloonResult_BALLOON_INFLATE_FAILED}, nil
	}
	return nil, errgrpc.ToGRPC(err)
}
