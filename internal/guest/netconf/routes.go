package netconf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Route is a route of the main table (Kata's Route).
type Route struct {
	// Dst is the destination: 0.0.0.0/0 or ::/0 for the default route.
	// The zero Prefix is taken as the default route of Gateway's family
	// (IPv4 without one).
	Dst     netip.Prefix
	Gateway netip.Addr // none for a route to a directly reached subnet
	Device  string     // the link's name; required to add
	Src     netip.Addr // preferred source address; may be none
	Scope   uint8      // RT_SCOPE_*: 0 universe, 253 link, 254 host
	// Flags are RTNH_F_*: RTNH_F_ONLINK (4) takes the gateway as on the
	// link whatever the link's addresses.
	Flags int
	MTU   int // 0: the link's
}

// family is the route's address family: its destination's, else its
// gateway's, else IPv4.
func (r Route) family() int {
	switch {
	case r.Dst.IsValid():
		if r.Dst.Addr().Is6() {
			return netlink.FAMILY_V6
		}
	case r.Gateway.Is6():
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

// ListRoutes lists the main table's routes, IPv4 then IPv6.
func (n *Net) ListRoutes(ctx context.Context) ([]Route, error) {
	var out []Route
	err := n.do(func() (err error) {
		out, err = listRoutes()
		return err
	})
	return out, err
}

// listRoutes lists the main table. Called in the namespace.
func listRoutes() ([]Route, error) {
	names, err := linkNames()
	if err != nil {
		return nil, err
	}
	var out []Route
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := retryDump(func() ([]netlink.Route, error) { return netlink.RouteList(nil, family) })
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			out = append(out, routeOf(r, names))
		}
	}
	return out, nil
}

func linkNames() (map[int]string, error) {
	links, err := listLinks()
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	return names, nil
}

func routeOf(r netlink.Route, names map[int]string) Route {
	out := Route{Device: names[r.LinkIndex], Scope: uint8(r.Scope), Flags: r.Flags, MTU: r.MTU}
	if p, ok := prefixOf(r.Dst); ok {
		out.Dst = p.Masked()
	}
	if a, ok := netip.AddrFromSlice(r.Gw); ok {
		out.Gateway = a.Unmap()
	}
	if a, ok := netip.AddrFromSlice(r.Src); ok {
		out.Src = a.Unmap()
	}
	return out
}

// UpdateRoutes replaces the main table's routes with want, as Kata's agent
// does: every route goes but those the kernel made for the links'
// addresses and those through lo, then want's are added, those without a
// gateway first, so that the gateways of the others are reached. It
// returns the table after.
//
// Everything is checked before anything changes: a route on a link that
// does not exist is NotFound; one whose gateway is reached neither by an
// address of its link nor by a route of want without a gateway (nor marked
// on-link) is InvalidArgument. If the kernel refuses a route nonetheless,
// the table is put back as it was.
func (n *Net) UpdateRoutes(ctx context.Context, want []Route) ([]Route, error) {
	for i, r := range want {
		if err := checkRoute(fmt.Sprintf("routes[%d]", i), r); err != nil {
			return nil, err
		}
	}
	var out []Route
	err := n.do(func() error {
		plan, err := planRoutes(want)
		if err != nil {
			return err
		}
		old, err := retryDump(func() ([]netlink.Route, error) { return netlink.RouteList(nil, netlink.FAMILY_ALL) })
		if err != nil {
			return fmt.Errorf("list routes: %w", err)
		}
		var removed, added []netlink.Route
		fail := func(err error) error {
			if uerr := undoRoutes(added, removed); uerr != nil {
				return fmt.Errorf("%w (and putting the old routes back: %v)", err, uerr)
			}
			return err
		}
		kept := map[routeKey]bool{}
		for _, r := range old {
			if r.Protocol == unix.RTPROT_KERNEL || r.LinkIndex == plan.lo {
				kept[keyOf(r)] = true
				continue
			}
			if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fail(fmt.Errorf("remove route %v: %w", r, err))
			}
			removed = append(removed, r)
		}
		for i, r := range plan.routes {
			// One the kernel made for an address, which stays, is not
			// added twice (IPv6 would take a second of another metric).
			if kept[keyOf(r)] {
				continue
			}
			if err := netlink.RouteAdd(&r); err != nil {
				// One the kernel made for an address is there already.
				if errors.Is(err, syscall.EEXIST) {
					continue
				}
				return fail(fmt.Errorf("routes[%d]: add %v: %w", plan.index[i], want[plan.index[i]], err))
			}
			added = append(added, r)
		}
		out, err = listRoutes()
		return err
	})
	return out, err
}

// routeKey tells routes apart as far as a caller of UpdateRoutes can.
type routeKey struct {
	dst, gw string
	link    int
}

func keyOf(r netlink.Route) routeKey {
	k := routeKey{gw: r.Gw.String(), link: r.LinkIndex}
	if p, ok := prefixOf(r.Dst); ok {
		k.dst = p.Masked().String()
	}
	return k
}

// checkRoute checks what can be checked without the kernel.
func checkRoute(field string, r Route) error {
	if r.Device == "" {
		return errdefs.InvalidArgument(field+".device", "must be set")
	}
	fam := r.family()
	is6 := fam == netlink.FAMILY_V6
	if r.Dst.IsValid() && r.Dst.Addr().Is6() != is6 {
		return errdefs.InvalidArgument(field+".dest", fmt.Sprintf("%v is not of the route's family", r.Dst))
	}
	if r.Gateway.IsValid() && r.Gateway.Is6() != is6 {
		return errdefs.InvalidArgument(field+".gateway", fmt.Sprintf("%v is not of the destination's family", r.Gateway))
	}
	if r.Src.IsValid() && r.Src.Is6() != is6 {
		return errdefs.InvalidArgument(field+".source", fmt.Sprintf("%v is not of the destination's family", r.Src))
	}
	if r.MTU < 0 || r.MTU > maxMTU {
		return errdefs.InvalidArgument(field+".mtu", fmt.Sprintf("%d is outside [0, %d]", r.MTU, maxMTU))
	}
	return nil
}

// routePlan is want as netlink routes, in the order they are added.
type routePlan struct {
	routes []netlink.Route
	index  []int // each route's index in want
	lo     int   // lo's index, whose routes stay
}

// planRoutes resolves want's links and checks that every gateway is
// reachable. Called in the namespace.
func planRoutes(want []Route) (routePlan, error) {
	plan := routePlan{lo: -1}
	if lo, err := netlink.LinkByName("lo"); err == nil {
		plan.lo = lo.Attrs().Index
	}
	links := map[string]netlink.Link{}
	// reach holds, by link, the subnets reached directly: those of its
	// addresses and want's routes without a gateway.
	reach := map[string][]netip.Prefix{}
	for i, r := range want {
		if links[r.Device] != nil {
			continue
		}
		l, err := linkByName(fmt.Sprintf("routes[%d].device", i), r.Device)
		if err != nil {
			return routePlan{}, err
		}
		links[r.Device] = l
		addrs, err := retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(l, netlink.FAMILY_ALL) })
		if err != nil {
			return routePlan{}, fmt.Errorf("addresses of %s: %w", r.Device, err)
		}
		for _, a := range addrs {
			if p, ok := prefixOf(a.IPNet); ok {
				reach[r.Device] = append(reach[r.Device], p.Masked())
			}
		}
	}
	for _, r := range want {
		if !r.Gateway.IsValid() {
			reach[r.Device] = append(reach[r.Device], defaultDst(r))
		}
	}
	var direct, viaGateway []int
	for i, r := range want {
		if !r.Gateway.IsValid() {
			direct = append(direct, i)
			continue
		}
		if r.Flags&unix.RTNH_F_ONLINK == 0 && !reached(reach[r.Device], r.Gateway) {
			return routePlan{}, errdefs.InvalidArgument(fmt.Sprintf("routes[%d].gateway", i),
				fmt.Sprintf("%v is not reachable on %s: no address of %s and no route without a gateway covers it", r.Gateway, r.Device, r.Device))
		}
		viaGateway = append(viaGateway, i)
	}
	for _, i := range append(direct, viaGateway...) {
		r := want[i]
		dst := defaultDst(r)
		nr := netlink.Route{
			LinkIndex: links[r.Device].Attrs().Index,
			Dst:       ipNet(dst),
			Scope:     netlink.Scope(r.Scope),
			// Only on-link is the caller's to set: the others (dead,
			// linkdown, offload) are the kernel's, which ListRoutes
			// shows and the kernel refuses to be given.
			Flags:    r.Flags & unix.RTNH_F_ONLINK,
			MTU:      r.MTU,
			Protocol: unix.RTPROT_BOOT,
			Table:    unix.RT_TABLE_MAIN,
		}
		if r.Gateway.IsValid() {
			nr.Gw = net.IP(r.Gateway.AsSlice())
		}
		if r.Src.IsValid() {
			nr.Src = net.IP(r.Src.AsSlice())
		}
		plan.routes = append(plan.routes, nr)
		plan.index = append(plan.index, i)
	}
	return plan, nil
}

// defaultDst is r's destination, the default route of its family for
// none.
func defaultDst(r Route) netip.Prefix {
	if r.Dst.IsValid() {
		return r.Dst.Masked()
	}
	if r.family() == netlink.FAMILY_V6 {
		return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
}

func reached(subnets []netip.Prefix, a netip.Addr) bool {
	for _, p := range subnets {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// undoRoutes removes added and puts removed back, best effort.
func undoRoutes(added, removed []netlink.Route) error {
	var errs []error
	for _, r := range added {
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, err)
		}
	}
	// Those without a gateway first, as they were added.
	for _, gw := range []bool{false, true} {
		for _, r := range removed {
			if (r.Gw != nil) != gw {
				continue
			}
			if err := netlink.RouteAdd(&r); err != nil && !errors.Is(err, syscall.EEXIST) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
