package kata

import (
	"net"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	pb "github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/api/kata/types"
	"github.com/cabinvm/cabin/internal/guest/netconf"
	"github.com/cabinvm/cabin/internal/guest/netconf/netconftest"
)

var cardMAC = net.HardwareAddr{0x02, 0xca, 0xb1, 0, 0, 7}

// newNetClient serves a Service whose network is a namespace of the
// test's own, with a veth link, eth0, for the VM's card.
func newNetClient(t *testing.T) (pb.AgentServiceClient, *netconftest.Netns) {
	t.Helper()
	ns := netconftest.New(t)
	ns.Veth(t, "eth0", cardMAC)
	r := startReaper(t)
	n := netconf.New(netconf.Config{Netns: ns.Path, UplinkDriver: "veth", Reaper: r})
	t.Cleanup(n.Close)
	return newClient(t, Config{Runtime: "/nonexistent", Bundles: t.TempDir(), Reaper: r, Net: n}), ns
}

func link(t *testing.T, ns *netconftest.Netns, name string) (attrs netlink.LinkAttrs, addrs []string) {
	t.Helper()
	ns.Do(t, func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		attrs = *l.Attrs()
		as, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		for _, a := range as {
			addrs = append(addrs, a.IPNet.String())
		}
		return err
	})
	return attrs, addrs
}

func TestUpdateInterface(t *testing.T) {
	c, ns := newNetClient(t)
	ctx := t.Context()
	want := &types.Interface{
		Name:   "eth5",
		HwAddr: "02:CA:B1:00:00:07",
		Mtu:    1400,
		IPAddresses: []*types.IPAddress{
			{Family: types.IPFamily_v4, Address: "10.1.0.2", Mask: "24"},
			{Family: types.IPFamily_v4, Address: "10.5.0.2", Mask: "255.255.0.0"},
			{Family: types.IPFamily_v6, Address: "2001:db8::2", Mask: "64"},
		},
	}
	got, err := c.UpdateInterface(ctx, &pb.UpdateInterfaceRequest{Interface: want})
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "eth5" || got.Mtu != 1400 || got.HwAddr != "02:ca:b1:00:00:07" || got.RawFlags&1 == 0 {
		t.Errorf("UpdateInterface returned %v", got)
	}
	attrs, addrs := link(t, ns, "eth5")
	if attrs.MTU != 1400 || attrs.Flags&net.FlagUp == 0 {
		t.Errorf("eth5: mtu %d, flags %v", attrs.MTU, attrs.Flags)
	}
	for _, a := range []string{"10.1.0.2/24", "10.5.0.2/16", "2001:db8::2/64"} {
		if !slices.Contains(addrs, a) {
			t.Errorf("eth5's addresses %q lack %s", addrs, a)
		}
	}
	list, err := c.ListInterfaces(ctx, &pb.ListInterfacesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(list.Interfaces, func(i *types.Interface) bool { return i.Name == "eth5" })
	if i < 0 || !proto.Equal(list.Interfaces[i], got) {
		t.Errorf("ListInterfaces %v, want %v among them", list.Interfaces, got)
	}

	for _, tc := range []struct {
		in     *types.Interface
		code   codes.Code
		prefix string
	}{
		{&types.Interface{HwAddr: "02:00:00:00:00:99"}, codes.NotFound, "hwAddr: no link has the MAC address 02:00:00:00:00:99"},
		{&types.Interface{HwAddr: "zz"}, codes.InvalidArgument, "interface.hwAddr: "},
		{&types.Interface{}, codes.InvalidArgument, "interface.hwAddr: must be set"},
		{&types.Interface{HwAddr: "02:CA:B1:00:00:07", IPAddresses: []*types.IPAddress{{Address: "10.1.0.2", Mask: "33"}}},
			codes.InvalidArgument, "interface.IPAddresses[0].mask: "},
		{&types.Interface{HwAddr: "02:CA:B1:00:00:07", IPAddresses: []*types.IPAddress{{Family: types.IPFamily_v6, Address: "10.1.0.2"}}},
			codes.InvalidArgument, "interface.IPAddresses[0].family: "},
		{&types.Interface{HwAddr: "02:CA:B1:00:00:07", Mtu: 1 << 40}, codes.InvalidArgument, "interface.mtu: "},
	} {
		_, err := c.UpdateInterface(ctx, &pb.UpdateInterfaceRequest{Interface: tc.in})
		wantCode(t, tc.prefix, err, tc.code, tc.prefix)
	}
	_, err = c.UpdateInterface(ctx, &pb.UpdateInterfaceRequest{})
	wantCode(t, "no interface", err, codes.InvalidArgument, "interface: must be set")
	if a, after := link(t, ns, "eth5"); a.MTU != 1400 || !slices.Equal(after, addrs) {
		t.Errorf("refused updates changed eth5: mtu %d, %q", a.MTU, after)
	}
}

func TestUpdateRoutes(t *testing.T) {
	c, ns := newNetClient(t)
	ctx := t.Context()
	if _, err := c.UpdateInterface(ctx, &pb.UpdateInterfaceRequest{Interface: &types.Interface{
		HwAddr: cardMAC.String(), IPAddresses: []*types.IPAddress{{Address: "10.1.0.2", Mask: "24"}},
	}}); err != nil {
		t.Fatal(err)
	}
	want := []*types.Route{
		{Gateway: "10.1.0.1", Device: "eth0"},
		{Dest: "10.2.0.0/16", Gateway: "10.1.0.1", Device: "eth0"},
		{Dest: "10.3.0.7", Device: "eth0", Scope: 253},
	}
	got, err := c.UpdateRoutes(ctx, &pb.UpdateRoutesRequest{Routes: &pb.Routes{Routes: want}})
	if err != nil {
		t.Fatal(err)
	}
	has := func(rs []*types.Route, dest, gw string) bool {
		return slices.ContainsFunc(rs, func(r *types.Route) bool { return r.Dest == dest && r.Gateway == gw && r.Device == "eth0" })
	}
	for _, w := range [][2]string{{"0.0.0.0/0", "10.1.0.1"}, {"10.2.0.0/16", "10.1.0.1"}, {"10.3.0.7/32", ""}, {"10.1.0.0/24", ""}} {
		if !has(got.Routes, w[0], w[1]) {
			t.Errorf("route to %s via %q missing from %v", w[0], w[1], got.Routes)
		}
	}
	// In the kernel's table too.
	var kernel []netlink.Route
	ns.Do(t, func() (err error) {
		kernel, err = netlink.RouteList(nil, netlink.FAMILY_V4)
		return err
	})
	if !slices.ContainsFunc(kernel, func(r netlink.Route) bool {
		return r.Dst != nil && r.Dst.String() == "10.2.0.0/16" && r.Gw.Equal(net.ParseIP("10.1.0.1"))
	}) {
		t.Errorf("10.2.0.0/16 not in the kernel's table: %v", kernel)
	}
	listed, err := c.ListRoutes(ctx, &pb.ListRoutesRequest{})
	if err != nil || !proto.Equal(listed, got) {
		t.Errorf("ListRoutes: %v, %v; want %v", listed, err, got)
	}

	for _, tc := range []struct {
		routes []*types.Route
		code   codes.Code
		prefix string
	}{
		{[]*types.Route{{Dest: "10.7.0.0/16", Gateway: "10.9.9.1", Device: "eth0"}}, codes.InvalidArgument,
			"routes[0].gateway: 10.9.9.1 is not reachable on eth0"},
		{[]*types.Route{want[1], {Gateway: "192.168.1.1", Device: "eth0"}}, codes.InvalidArgument, "routes[1].gateway: "},
		{[]*types.Route{{Dest: "10.7.0.1/16", Device: "eth0"}}, codes.InvalidArgument, "routes[0].dest: "},
		{[]*types.Route{{Dest: "nonsense", Device: "eth0"}}, codes.InvalidArgument, "routes[0].dest: "},
		{[]*types.Route{{Dest: "10.7.0.0/16", Device: "eth9"}}, codes.NotFound, "routes[0].device: "},
		{[]*types.Route{{Dest: "10.7.0.0/16", Gateway: "x", Device: "eth0"}}, codes.InvalidArgument, "routes[0].gateway: "},
	} {
		_, err := c.UpdateRoutes(ctx, &pb.UpdateRoutesRequest{Routes: &pb.Routes{Routes: tc.routes}})
		wantCode(t, tc.prefix, err, tc.code, tc.prefix)
	}
	if after, err := c.ListRoutes(ctx, &pb.ListRoutesRequest{}); err != nil || !proto.Equal(after, got) {
		t.Errorf("refused updates changed the routes to %v (%v), from %v", after, err, got)
	}
	// What ListRoutes gives, UpdateRoutes takes back.
	if again, err := c.UpdateRoutes(ctx, &pb.UpdateRoutesRequest{Routes: listed}); err != nil || !proto.Equal(again, got) {
		t.Errorf("UpdateRoutes(ListRoutes()) = %v, %v; want %v", again, err, got)
	}
}

func TestAddARPNeighbors(t *testing.T) {
	c, ns := newNetClient(t)
	ctx := t.Context()
	nbs := []*types.ARPNeighbor{
		{ToIPAddress: &types.IPAddress{Address: "10.1.0.9"}, Device: "eth0", Lladdr: "02:aa:00:00:00:09"},
		{ToIPAddress: &types.IPAddress{Family: types.IPFamily_v6, Address: "2001:db8::9"}, Device: "eth0", Lladdr: "02:aa:00:00:00:0a"},
	}
	for _, tc := range []struct {
		nbs    []*types.ARPNeighbor
		code   codes.Code
		prefix string
	}{
		{[]*types.ARPNeighbor{nbs[0], {ToIPAddress: &types.IPAddress{Address: "10.1.0.10"}, Device: "eth9"}}, codes.NotFound, "neighbors[1].device: "},
		{[]*types.ARPNeighbor{{Device: "eth0"}}, codes.InvalidArgument, "neighbors[0].toIPAddress.address: "},
		{[]*types.ARPNeighbor{{ToIPAddress: &types.IPAddress{Address: "10.1.0.10"}, Device: "eth0", Lladdr: "xx"}}, codes.InvalidArgument, "neighbors[0].lladdr: "},
	} {
		_, err := c.AddARPNeighbors(ctx, &pb.AddARPNeighborsRequest{Neighbors: &pb.ARPNeighbors{ARPNeighbors: tc.nbs}})
		wantCode(t, tc.prefix, err, tc.code, tc.prefix)
	}
	table := func() []netlink.Neigh {
		var out []netlink.Neigh
		ns.Do(t, func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			out, err = netlink.NeighList(l.Attrs().Index, netlink.FAMILY_ALL)
			return err
		})
		return out
	}
	if slices.ContainsFunc(table(), func(n netlink.Neigh) bool { return n.IP.Equal(net.ParseIP("10.1.0.9")) }) {
		t.Error("a refused call added a neighbour")
	}
	if _, err := c.AddARPNeighbors(ctx, &pb.AddARPNeighborsRequest{Neighbors: &pb.ARPNeighbors{ARPNeighbors: nbs}}); err != nil {
		t.Fatal(err)
	}
	got := table()
	for _, w := range nbs {
		if !slices.ContainsFunc(got, func(n netlink.Neigh) bool {
			return n.IP.Equal(net.ParseIP(w.ToIPAddress.Address)) && n.HardwareAddr.String() == w.Lladdr && n.State == netlink.NUD_PERMANENT
		}) {
			t.Errorf("%v not in the table %v", w, got)
		}
	}
}

func TestIPTables(t *testing.T) {
	for _, p := range []string{"iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("%s not installed (Debian's iptables package)", p)
		}
	}
	c, _ := newNetClient(t)
	ctx := t.Context()
	for _, v6 := range []bool{false, true} {
		rule := "-A FORWARD -i eth0 -j DROP"
		rules := "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" + rule + "\nCOMMIT\n"
		if _, err := c.SetIPTables(ctx, &pb.SetIPTablesRequest{IsIpv6: v6, Data: []byte(rules)}); err != nil {
			t.Fatalf("SetIPTables(ipv6 %v): %v", v6, err)
		}
		got, err := c.GetIPTables(ctx, &pb.GetIPTablesRequest{IsIpv6: v6})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(got.Data), rule+"\n") {
			t.Errorf("GetIPTables(ipv6 %v) = %q, without %q", v6, got.Data, rule)
		}
		_, err = c.SetIPTables(ctx, &pb.SetIPTablesRequest{IsIpv6: v6, Data: []byte("garbage\n*filter\n-A NOCHAIN -j DROP\n")})
		wantCode(t, "garbage", err, codes.InvalidArgument, "data: ")
		after, err := c.GetIPTables(ctx, &pb.GetIPTablesRequest{IsIpv6: v6})
		if err != nil || !strings.Contains(string(after.Data), rule+"\n") {
			t.Errorf("after garbage: %q, %v", after.GetData(), err)
		}
	}
}

func TestNetworkCallsWithoutNetwork(t *testing.T) {
	c := newClient(t, Config{Runtime: "/nonexistent", Bundles: t.TempDir()})
	_, err := c.ListRoutes(t.Context(), &pb.ListRoutesRequest{})
	wantCode(t, "ListRoutes", err, codes.FailedPrecondition, "")
	_, err = c.GetIPTables(t.Context(), &pb.GetIPTablesRequest{})
	wantCode(t, "GetIPTables", err, codes.FailedPrecondition, "")
}
