package maitred

import (
	"context"
	"encoding/binary"
	"net/netip"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/errgrpc"
)

// Service is vm_tools.Maitred over a Maitred. Methods it does not define
// answer Unimplemented.
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

func (s *Service) SetTimezone(_ context.Context, req *vmtools.SetTimezoneRequest) (*vmtools.EmptyMessage, error) {
	if err := s.m.SetTimezone(req.GetTimezoneName(), req.GetUseBindMount()); err != nil {
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
