package kata

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/emptypb"

	pb "github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/api/kata/types"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/guest/netconf"
)

// This file is the network calls of grpc.AgentService: conversions
// between Kata's types and package netconf's, which does the work on the
// VM's network namespace, the one containers without a namespace of
// their own share.

// net is the sandbox's network, or an error for an agent without one.
func (v *Service) net() (*netconf.Net, error) {
	if v.s.cfg.Net == nil {
		return nil, errdefs.Errorf(errdefs.ErrFailedPrecondition, "this agent configures no network")
	}
	return v.s.cfg.Net, nil
}

func (v *Service) UpdateInterface(ctx context.Context, req *pb.UpdateInterfaceRequest) (*types.Interface, error) {
	in := req.GetInterface()
	if in == nil {
		return nil, errgrpc.ToGRPC(errdefs.InvalidArgument("interface", "must be set"))
	}
	want, err := interfaceFrom("interface", in)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	n, err := v.net()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	got, err := n.UpdateInterface(ctx, want)
	if err != nil {
		return nil, errgrpc.ToGRPC(fieldIn("interface", err))
	}
	return interfaceTo(got), nil
}

func (v *Service) ListInterfaces(ctx context.Context, _ *pb.ListInterfacesRequest) (*pb.Interfaces, error) {
	n, err := v.net()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	list, err := n.ListInterfaces(ctx)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	out := &pb.Interfaces{}
	for _, i := range list {
		out.Interfaces = append(out.Interfaces, interfaceTo(i))
	}
	return out, nil
}

func (v *Service) UpdateRoutes(ctx context.Context, req *pb.UpdateRoutesRequest) (*pb.Routes, error) {
	var want []netconf.Route
	for i, r := range req.GetRoutes().GetRoutes() {
		route, err := routeFrom(fmt.Sprintf("routes[%d]", i), r)
		if err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
		want = append(want, route)
	}
	n, err := v.net()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	got, err := n.UpdateRoutes(ctx, want)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return routesTo(got), nil
}

func (v *Service) ListRoutes(ctx context.Context, _ *pb.ListRoutesRequest) (*pb.Routes, error) {
	n, err := v.net()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	got, err := n.ListRoutes(ctx)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return routesTo(got), nil
}

func (v *Service) AddARPNeighbors(ctx context.Context, req *pb.AddARPNeighborsRequest) (*emptypb.Empty, error) {
	var want []netconf.Neighbor
	for i, nb := range req.GetNeighbors().GetARPNeighbors() {
		f := fmt.Sprintf("neighbors[%d]", i)
		ip, err := netip.ParseAddr(nb.GetToIPAddress().GetAddress())
		if err != nil {
			return reply(errdefs.InvalidArgument(f+".toIPAddress.address", fmt.Sprintf("%q is not an IP address", nb.GetToIPAddress().GetAddress())))
		}
		out := netconf.Neighbor{IP: ip.Unmap(), Device: nb.GetDevice(), State: int(nb.GetState()), Flags: int(nb.GetFlags())}
		if ll := nb.GetLladdr(); ll != "" {
			if out.HardwareAddr, err = parseMAC(f+".lladdr", ll); err != nil {
				return reply(err)
			}
		}
		want = append(want, out)
	}
	n, err := v.net()
	if err != nil {
		return reply(err)
	}
	return reply(n.AddNeighbors(ctx, want))
}

func (v *Service) GetIPTables(ctx context.Context, req *pb.GetIPTablesRequest) (*pb.GetIPTablesResponse, error) {
	n, err := v.net()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	data, err := n.IPTables(ctx, req.GetIsIpv6())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &pb.GetIPTablesResponse{Data: data}, nil
}

func (v *Service) SetIPTables(ctx context.Context, req *pb.SetIPTablesRequest) (*pb.SetIPTablesResponse, error) {
	n, err := v.net()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	out, err := n.SetIPTables(ctx, req.GetIsIpv6(), req.GetData())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &pb.SetIPTablesResponse{Data: out}, nil
}

// fieldIn names the field an invalid argument of netconf's is in, within
// the request: hwAddr becomes interface.hwAddr.
func fieldIn(parent string, err error) error {
	if errors.Is(err, errdefs.ErrInvalidArgument) {
		return fmt.Errorf("%s.%w", parent, err)
	}
	return err
}

func interfaceFrom(field string, in *types.Interface) (netconf.Interface, error) {
	out := netconf.Interface{Name: in.GetName(), Flags: in.GetRawFlags()}
	if hw := in.GetHwAddr(); hw != "" {
		mac, err := parseMAC(field+".hwAddr", hw)
		if err != nil {
			return out, err
		}
		out.HardwareAddr = mac
	}
	if in.GetMtu() > math.MaxUint16 {
		return out, errdefs.InvalidArgument(field+".mtu", fmt.Sprintf("%d is above %d", in.GetMtu(), math.MaxUint16))
	}
	out.MTU = int(in.GetMtu())
	for i, a := range in.GetIPAddresses() {
		p, err := addressFrom(fmt.Sprintf("%s.IPAddresses[%d]", field, i), a)
		if err != nil {
			return out, err
		}
		out.Addrs = append(out.Addrs, p)
	}
	return out, nil
}

// addressFrom reads an IPAddress: its mask is a prefix length ("24"), or
// for IPv4 a dotted netmask; none is a host's.
func addressFrom(field string, a *types.IPAddress) (netip.Prefix, error) {
	ip, err := netip.ParseAddr(a.GetAddress())
	if err != nil || ip.Zone() != "" {
		return netip.Prefix{}, errdefs.InvalidArgument(field+".address", fmt.Sprintf("%q is not an IP address", a.GetAddress()))
	}
	ip = ip.Unmap()
	if (a.GetFamily() == types.IPFamily_v6) != ip.Is6() {
		return netip.Prefix{}, errdefs.InvalidArgument(field+".family", fmt.Sprintf("%v is not of family %v", ip, a.GetFamily()))
	}
	bits, err := maskBits(a.GetMask(), ip.BitLen())
	if err != nil {
		return netip.Prefix{}, errdefs.InvalidArgument(field+".mask", err.Error())
	}
	return netip.PrefixFrom(ip, bits), nil
}

func maskBits(mask string, max int) (int, error) {
	if mask == "" {
		return max, nil
	}
	if n, err := strconv.Atoi(mask); err == nil {
		if n < 0 || n > max {
			return 0, fmt.Errorf("%d is not a prefix length of 0-%d", n, max)
		}
		return n, nil
	}
	m, err := netip.ParseAddr(mask)
	if err != nil || !m.Is4() || max != 32 {
		return 0, fmt.Errorf("%q is neither a prefix length nor an IPv4 netmask", mask)
	}
	ones, bits := net.IPMask(m.AsSlice()).Size()
	if bits == 0 {
		return 0, fmt.Errorf("%q is not a contiguous netmask", mask)
	}
	return ones, nil
}

func interfaceTo(i netconf.Interface) *types.Interface {
	out := &types.Interface{
		Device:   i.Name,
		Name:     i.Name,
		Mtu:      uint64(i.MTU),
		HwAddr:   i.HardwareAddr.String(),
		Type:     i.Type,
		RawFlags: i.Flags,
	}
	for _, p := range i.Addrs {
		out.IPAddresses = append(out.IPAddresses, &types.IPAddress{
			Family:  familyOf(p.Addr()),
			Address: p.Addr().String(),
			Mask:    strconv.Itoa(p.Bits()),
		})
	}
	return out
}

func familyOf(a netip.Addr) types.IPFamily {
	if a.Is6() {
		return types.IPFamily_v6
	}
	return types.IPFamily_v4
}

// routeFrom reads a Route. Its dest is a prefix, an address (a host's
// route), or empty or "default" for the default route of its family.
func routeFrom(field string, r *types.Route) (netconf.Route, error) {
	out := netconf.Route{Device: r.GetDevice(), Scope: uint8(r.GetScope()), Flags: int(r.GetFlags()), MTU: int(r.GetMtu())}
	if r.GetScope() > math.MaxUint8 {
		return out, errdefs.InvalidArgument(field+".scope", fmt.Sprintf("%d is not a route scope", r.GetScope()))
	}
	if r.GetMtu() > math.MaxUint16 {
		return out, errdefs.InvalidArgument(field+".mtu", fmt.Sprintf("%d is above %d", r.GetMtu(), math.MaxUint16))
	}
	var err error
	if g := r.GetGateway(); g != "" {
		if out.Gateway, err = parseAddr(field+".gateway", g); err != nil {
			return out, err
		}
	}
	if s := r.GetSource(); s != "" {
		// A prefix is read as its address: the preferred source.
		s, _, _ = strings.Cut(s, "/")
		if out.Src, err = parseAddr(field+".source", s); err != nil {
			return out, err
		}
	}
	v6 := r.GetFamily() == types.IPFamily_v6 || out.Gateway.Is6()
	switch d := r.GetDest(); d {
	case "", "default":
		if v6 {
			out.Dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		} else {
			out.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		}
	default:
		if !strings.Contains(d, "/") {
			a, err := parseAddr(field+".dest", d)
			if err != nil {
				return out, err
			}
			out.Dst = netip.PrefixFrom(a, a.BitLen())
			break
		}
		p, err := netip.ParsePrefix(d)
		if err != nil {
			return out, errdefs.InvalidArgument(field+".dest", fmt.Sprintf("%q is not an address prefix", d))
		}
		if p.Masked() != p {
			return out, errdefs.InvalidArgument(field+".dest", fmt.Sprintf("%q has host bits set (%v?)", d, p.Masked()))
		}
		out.Dst = netip.PrefixFrom(p.Addr().Unmap(), p.Bits())
	}
	if out.Dst.Addr().Is6() != v6 && r.GetFamily() == types.IPFamily_v6 {
		return out, errdefs.InvalidArgument(field+".family", fmt.Sprintf("v6, but the destination is %v", out.Dst))
	}
	return out, nil
}

func parseAddr(field, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, errdefs.InvalidArgument(field, fmt.Sprintf("%q is not an IP address", s))
	}
	return a.Unmap(), nil
}

func parseMAC(field, s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, errdefs.InvalidArgument(field, fmt.Sprintf("%q is not an Ethernet MAC address", s))
	}
	return mac, nil
}

func routesTo(rs []netconf.Route) *pb.Routes {
	out := &pb.Routes{}
	for _, r := range rs {
		w := &types.Route{
			Dest:   r.Dst.String(),
			Device: r.Device,
			Scope:  uint32(r.Scope),
			Family: familyOf(r.Dst.Addr()),
			Flags:  uint32(r.Flags),
			Mtu:    uint32(r.MTU),
		}
		if r.Gateway.IsValid() {
			w.Gateway = r.Gateway.String()
		}
		if r.Src.IsValid() {
			w.Source = r.Src.String()
		}
		out.Routes = append(out.Routes, w)
	}
	return out
}
