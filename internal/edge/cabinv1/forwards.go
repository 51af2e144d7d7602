package cabinv1

import (
	"context"
	"fmt"
	"math"
	"net/netip"

	pb "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/forward"
	"github.com/cabinvm/cabin/internal/vmm"
)

// Forwards serves cabin.v1.Forwards: a VM's port forwards, kept by its
// hold on the forwards resource (forward.Set).
type Forwards struct {
	pb.UnimplementedForwardsServer
	m *vmm.Manager
}

// NewForwards returns the Forwards edge over m, whose VMs hold forwards
// (forward.Resource among its resources).
func NewForwards(m *vmm.Manager) *Forwards { return &Forwards{m: m} }

// protocols pairs cabin.v1's protocols with the domain's.
var protocols = map[pb.Protocol]string{
	pb.Protocol_PROTOCOL_TCP: forward.TCP,
	pb.Protocol_PROTOCOL_UDP: forward.UDP,
}

func (s *Forwards) AddForward(ctx context.Context, req *pb.AddForwardRequest) (*pb.Forward, error) {
	by := caller.FromContext(ctx)
	key, err := s.key(by, req.GetOwnerId(), req.GetVmName())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if req.GetForward() == nil {
		return nil, errgrpc.ToGRPC(errdefs.InvalidArgument("forward", "must be set"))
	}
	f, err := forwardOf(req.GetForward())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	// A bad forward is refused as such, whether or not the VM is there.
	if f, err = f.Check(by); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	set, err := vmm.Hold[*forward.Set](ctx, s.m, key)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	added, err := set.Add(ctx, f, by)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return forwardPB(forward.Status{Forward: added}), nil
}

func (s *Forwards) ListForwards(ctx context.Context, req *pb.ListForwardsRequest) (*pb.ListForwardsResponse, error) {
	key, err := s.key(caller.FromContext(ctx), req.GetOwnerId(), req.GetVmName())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	set, err := vmm.Hold[*forward.Set](ctx, s.m, key)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	resp := &pb.ListForwardsResponse{}
	for _, st := range set.List() {
		resp.Forwards = append(resp.Forwards, forwardPB(st))
	}
	return resp, nil
}

func (s *Forwards) RemoveForward(ctx context.Context, req *pb.RemoveForwardRequest) (*pb.RemoveForwardResponse, error) {
	key, err := s.key(caller.FromContext(ctx), req.GetOwnerId(), req.GetVmName())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	proto, ok := protocols[req.GetProtocol()]
	if !ok {
		return nil, errgrpc.ToGRPC(errdefs.InvalidArgument("protocol", fmt.Sprintf("unknown value %d", req.GetProtocol())))
	}
	var addr netip.Addr
	if a := req.GetHostAddress(); a != "" {
		if addr, err = parseAddr(a); err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
	}
	set, err := vmm.Hold[*forward.Set](ctx, s.m, key)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	removed, err := set.Remove(ctx, proto, addr, port(req.GetHostPort()))
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &pb.RemoveForwardResponse{Forward: forwardPB(forward.Status{Forward: removed})}, nil
}

// key is the VM a request names, by the owner rule.
func (s *Forwards) key(by *caller.Caller, ownerID, name string) (vmm.Key, error) {
	owner, err := by.Owner(ownerID)
	if err != nil {
		return vmm.Key{}, err
	}
	key := vmm.Key{Owner: owner, Name: name}
	return key, key.Validate()
}

// forwardOf is the forward a request asks for, unchecked.
func forwardOf(in *pb.Forward) (forward.Forward, error) {
	proto, ok := protocols[in.GetProtocol()]
	if !ok {
		return forward.Forward{}, errdefs.InvalidArgument("forward.protocol", fmt.Sprintf("unknown value %d", in.GetProtocol()))
	}
	f := forward.Forward{Proto: proto, HostPort: port(in.GetHostPort()), GuestPort: port(in.GetGuestPort())}
	if a := in.GetHostAddress(); a != "" {
		addr, err := parseAddr(a)
		if err != nil {
			return forward.Forward{}, err
		}
		f.HostAddr = addr
	}
	return f, nil
}

func parseAddr(s string) (netip.Addr, error) {
	addr, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, errdefs.InvalidArgument("host_address", fmt.Sprintf("%q is not an IP address", s))
	}
	return addr, nil
}

// port is a port as the domain checks it: a value past any port stays
// past it, whatever the width of int.
func port(p uint32) int {
	return int(min(p, math.MaxInt32))
}

func forwardPB(st forward.Status) *pb.Forward {
	out := &pb.Forward{
		HostAddress: st.HostAddr.String(),
		HostPort:    uint32(st.HostPort),
		GuestPort:   uint32(st.GuestPort),
		Problem:     st.Problem,
	}
	for wire, p := range protocols {
		if p == st.Proto {
			out.Protocol = wire
		}
	}
	return out
}
