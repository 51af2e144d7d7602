package netconf

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Uplink is the IPv4 configuration of the VM's card, as the host gives it
// (Maitred's ConfigureNetwork).
type Uplink struct {
	// Address is the VM's address and its subnet's length.
	Address netip.Prefix
	// Gateway is the host's end, inside Address's subnet.
	Gateway netip.Addr
}

// Check refuses what the kernel would take but no network could use: a
// gateway outside the subnet (the default route would be unreachable)
// or the VM's own address, and addresses that are the subnet's network
// or broadcast address. Fields are named as Maitred's IPv4Config.
func (u Uplink) Check() error {
	a, gw := u.Address.Addr(), u.Gateway
	if !u.Address.IsValid() || !a.Is4() {
		return errdefs.InvalidArgument("address", fmt.Sprintf("%v is not an IPv4 address with a prefix", u.Address))
	}
	if !gw.Is4() {
		return errdefs.InvalidArgument("gateway", fmt.Sprintf("%v is not an IPv4 address", gw))
	}
	subnet := u.Address.Masked()
	if !subnet.Contains(gw) {
		return errdefs.InvalidArgument("gateway", fmt.Sprintf("%v is outside the subnet %v: the VM could not reach it", gw, subnet))
	}
	if gw == a {
		return errdefs.InvalidArgument("gateway", fmt.Sprintf("%v is the VM's own address", gw))
	}
	if u.Address.Bits() > 30 {
		// /31 (RFC 3021) has no network or broadcast address; /32 has
		// room for no gateway, which the check above refused.
		return nil
	}
	network, broadcast := subnet.Addr(), lastAddr(subnet)
	for _, c := range []struct {
		field string
		addr  netip.Addr
	}{{"address", a}, {"gateway", gw}} {
		switch c.addr {
		case network:
			return errdefs.InvalidArgument(c.field, fmt.Sprintf("%v is the network address of %v", c.addr, subnet))
		case broadcast:
			return errdefs.InvalidArgument(c.field, fmt.Sprintf("%v is the broadcast address of %v", c.addr, subnet))
		}
	}
	return nil
}

// lastAddr is the last address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// ConfigureUplink gives the uplink u's address (its only IPv4 one), brings
// it and lo up, makes u's gateway the default route, and turns forwarding
// on, as upstream maitred does: the VM routes for its containers. IPv6
// router advertisements stay accepted on the uplink despite forwarding
// (accept_ra 2). u is checked before anything changes; with no card it is
// FailedPrecondition.
func (n *Net) ConfigureUplink(ctx context.Context, u Uplink) error {
	if err := u.Check(); err != nil {
		return err
	}
	up, err := n.waitUplink(ctx)
	if err != nil {
		return err
	}
	err = n.do(func() error {
		l, err := netlink.LinkByIndex(up.index)
		if err != nil {
			return fmt.Errorf("uplink %s: %w", up.name, err)
		}
		if err := n.writeSysctl("net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
		// accept_ra before forwarding, which would otherwise stop the
		// card taking router advertisements. A kernel without IPv6 has
		// neither.
		if ipv6, err := n.hasIPv6(); err != nil {
			return err
		} else if ipv6 {
			if err := n.writeSysctl("net/ipv6/conf/"+up.name+"/accept_ra", "2"); err != nil {
				return err
			}
			if err := n.writeSysctl("net/ipv6/conf/all/forwarding", "1"); err != nil {
				return err
			}
		}
		if err := setLoopbackUp(); err != nil {
			return err
		}
		if err := replaceIPv4(l, u.Address); err != nil {
			return fmt.Errorf("uplink %s: %w", up.name, err)
		}
		// Up before the route: the kernel installs the subnet's route,
		// through which the gateway is reached, only on a link that is up.
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("uplink %s up: %w", up.name, err)
		}
		route := &netlink.Route{
			LinkIndex: up.index,
			Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			Gw:        net.IP(u.Gateway.AsSlice()),
			Scope:     netlink.SCOPE_UNIVERSE,
			Protocol:  unix.RTPROT_BOOT,
		}
		if err := netlink.RouteReplace(route); err != nil {
			return fmt.Errorf("default route via %v: %w", u.Gateway, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	n.log.Info("network configured", "link", up.name, "address", u.Address, "gateway", u.Gateway)
	return nil
}

// replaceIPv4 makes want the link's only IPv4 address.
func replaceIPv4(l netlink.Link, want netip.Prefix) error {
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(l, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok && p == want {
			continue
		}
		if err := netlink.AddrDel(l, &a); err != nil {
			return fmt.Errorf("remove address %v: %w", a.IPNet, err)
		}
	}
	if err := netlink.AddrReplace(l, &netlink.Addr{IPNet: ipNet(want)}); err != nil {
		return fmt.Errorf("address %v: %w", want, err)
	}
	return nil
}

// hasIPv6 tells whether the kernel has IPv6 (its sysctls).
func (n *Net) hasIPv6() (bool, error) {
	return exists(n.cfg.ProcSys + "/net/ipv6")
}

// ResetIPv6 makes the uplink renegotiate its IPv6 configuration (SLAAC),
// as upstream maitred does when the host's network changed: turning IPv6
// off and on again on the card drops its addresses and routes and starts
// router solicitation and duplicate address detection afresh. With no
// card it is FailedPrecondition; a kernel without IPv6 has nothing to
// reset.
func (n *Net) ResetIPv6(ctx context.Context) error {
	up, err := n.waitUplink(ctx)
	if err != nil {
		return err
	}
	return n.do(func() error {
		if ipv6, err := n.hasIPv6(); err != nil || !ipv6 {
			return err
		}
		name := "net/ipv6/conf/" + up.name + "/disable_ipv6"
		if err := n.writeSysctl(name, "1"); err != nil {
			return err
		}
		return n.writeSysctl(name, "0")
	})
}
