package netconf_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/guest/netconf"
	"github.com/cabinvm/cabin/internal/guest/netconf/netconftest"
	"github.com/cabinvm/cabin/internal/reaper"
)

var (
	mac0 = net.HardwareAddr{0x02, 0xca, 0xb1, 0, 0, 0x10}
	mac1 = net.HardwareAddr{0x02, 0xca, 0xb1, 0, 0, 0x11}
)

// newNet returns a Net on a namespace of the test's own in which veth
// links play the VM's cards.
func newNet(t *testing.T) (*netconf.Net, *netconftest.Netns) {
	t.Helper()
	ns := netconftest.New(t)
	n := netconf.New(netconf.Config{Netns: ns.Path, UplinkDriver: "veth"})
	t.Cleanup(n.Close)
	return n, ns
}

// hostForwarding reads the host's own ip_forward, which no test may change.
func hostForwarding(t *testing.T) string {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func addrsOf(t *testing.T, ns *netconftest.Netns, name string, family int) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	ns.Do(t, func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(l, family)
		for _, a := range addrs {
			ones, _ := a.Mask.Size()
			ip, _ := netip.AddrFromSlice(a.IP)
			out = append(out, netip.PrefixFrom(ip.Unmap(), ones))
		}
		return err
	})
	return out
}

func isUp(t *testing.T, ns *netconftest.Netns, name string) bool {
	t.Helper()
	var up bool
	ns.Do(t, func() error {
		l, err := netlink.LinkByName(name)
		if err == nil {
			up = l.Attrs().Flags&net.FlagUp != 0
		}
		return err
	})
	return up
}

func TestConfigureUplink(t *testing.T) {
	n, ns := newNet(t)
	host := hostForwarding(t)
	ns.Veth(t, "eth0", mac0)
	ns.Veth(t, "eth1", mac1)
	ns.Do(t, func() error {
		// Down, as a card is before it is configured.
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		// And an address of another network, which must go.
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(192, 168, 9, 9), Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		return netlink.LinkSetDown(l)
	})
	u := netconf.Uplink{Address: netip.MustParsePrefix("100.115.92.26/30"), Gateway: netip.MustParseAddr("100.115.92.25")}
	if err := n.ConfigureUplink(context.Background(), u); err != nil {
		t.Fatal(err)
	}
	if got := addrsOf(t, ns, "eth0", netlink.FAMILY_V4); !slices.Equal(got, []netip.Prefix{u.Address}) {
		t.Errorf("eth0 has %v, want only %v", got, u.Address)
	}
	if got := addrsOf(t, ns, "eth1", netlink.FAMILY_V4); len(got) != 0 {
		t.Errorf("eth1, the second card, got %v", got)
	}
	if !isUp(t, ns, "eth0") || !isUp(t, ns, "lo") {
		t.Error("eth0 or lo is not up")
	}
	routes, err := n.ListRoutes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := netconf.Route{Gateway: u.Gateway, Device: "eth0"}
	if !slices.ContainsFunc(routes, func(r netconf.Route) bool {
		return r.Dst.Bits() == 0 && r.Gateway == want.Gateway && r.Device == want.Device
	}) {
		t.Errorf("no default route via %v on eth0 in %+v", u.Gateway, routes)
	}
	for name, want := range map[string]string{
		"net/ipv4/ip_forward":             "1",
		"net/ipv6/conf/all/forwarding":    "1",
		"net/ipv6/conf/eth0/accept_ra":    "2",
		"net/ipv6/conf/eth1/disable_ipv6": "0",
	} {
		if got := ns.Sysctl(t, name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	// Again, with another address: it replaces the first.
	u2 := netconf.Uplink{Address: netip.MustParsePrefix("10.7.0.2/24"), Gateway: netip.MustParseAddr("10.7.0.1")}
	if err := n.ConfigureUplink(context.Background(), u2); err != nil {
		t.Fatal(err)
	}
	if got := addrsOf(t, ns, "eth0", netlink.FAMILY_V4); !slices.Equal(got, []netip.Prefix{u2.Address}) {
		t.Errorf("after a second configuration eth0 has %v, want only %v", got, u2.Address)
	}
	if hostForwarding(t) != host {
		t.Error("the host's ip_forward changed")
	}
}

func TestConfigureUplinkRefuses(t *testing.T) {
	n, ns := newNet(t)
	ns.Veth(t, "eth0", mac0)
	before := ns.Sysctl(t, "net/ipv4/ip_forward")
	for _, c := range []struct {
		addr, gw, field, problem string
	}{
		{"10.0.0.6/30", "10.0.0.1", "gateway", "outside the subnet 10.0.0.4/30"},
		{"10.0.0.6/24", "192.168.0.1", "gateway", "outside the subnet"},
		{"10.0.0.6/30", "10.0.0.6", "gateway", "the VM's own address"},
		{"10.0.0.4/30", "10.0.0.5", "address", "network address"},
		{"10.0.0.7/30", "10.0.0.5", "address", "broadcast address"},
		{"10.0.0.6/30", "10.0.0.7", "gateway", "broadcast address"},
		{"10.0.0.6/32", "10.0.0.5", "gateway", "outside the subnet"},
	} {
		u := netconf.Uplink{Address: netip.MustParsePrefix(c.addr), Gateway: netip.MustParseAddr(c.gw)}
		err := n.ConfigureUplink(context.Background(), u)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), c.field+": ") || !strings.Contains(err.Error(), c.problem) {
			t.Errorf("%s via %s: %v, want an invalid %s (%s)", c.addr, c.gw, err, c.field, c.problem)
		}
	}
	if got := addrsOf(t, ns, "eth0", netlink.FAMILY_V4); len(got) != 0 {
		t.Errorf("refused configurations left eth0 with %v", got)
	}
	if got := ns.Sysctl(t, "net/ipv4/ip_forward"); got != before {
		t.Errorf("refused configurations turned ip_forward to %s", got)
	}
	// A /31 has no network or broadcast address.
	u := netconf.Uplink{Address: netip.MustParsePrefix("10.0.0.0/31"), Gateway: netip.MustParseAddr("10.0.0.1")}
	if err := n.ConfigureUplink(context.Background(), u); err != nil {
		t.Errorf("/31: %v", err)
	}
}

func TestNoUplink(t *testing.T) {
	n, ns := newNet(t)
	waited := false
	n = netconf.New(netconf.Config{Netns: ns.Path, UplinkDriver: "veth", WaitModules: func(context.Context) error {
		waited = true
		return nil
	}})
	t.Cleanup(n.Close)
	u := netconf.Uplink{Address: netip.MustParsePrefix("10.0.0.2/30"), Gateway: netip.MustParseAddr("10.0.0.1")}
	if err := n.ConfigureUplink(context.Background(), u); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "no network card") {
		t.Errorf("ConfigureUplink without a card: %v", err)
	}
	if !waited {
		t.Error("the card was not waited for")
	}
	if err := n.ResetIPv6(context.Background()); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("ResetIPv6 without a card: %v", err)
	}
	// A link of another driver is no card.
	ns.Veth(t, "eth0", mac0)
	other := netconf.New(netconf.Config{Netns: ns.Path})
	t.Cleanup(other.Close)
	if err := other.ConfigureUplink(context.Background(), u); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("ConfigureUplink with only a veth for a virtio_net card: %v", err)
	}
}

// The card found is the first by index, whatever its name.
func TestUplinkIsTheFirstCard(t *testing.T) {
	n, ns := newNet(t)
	ns.Veth(t, "net1", mac0)
	ns.Veth(t, "eth0", mac1)
	u := netconf.Uplink{Address: netip.MustParsePrefix("10.0.0.2/30"), Gateway: netip.MustParseAddr("10.0.0.1")}
	if err := n.ConfigureUplink(context.Background(), u); err != nil {
		t.Fatal(err)
	}
	if got := addrsOf(t, ns, "net1", netlink.FAMILY_V4); !slices.Equal(got, []netip.Prefix{u.Address}) {
		t.Errorf("net1 (the first card) has %v", got)
	}
	if got := addrsOf(t, ns, "eth0", netlink.FAMILY_V4); len(got) != 0 {
		t.Errorf("eth0 (the second card) has %v", got)
	}
}

func TestResetIPv6(t *testing.T) {
	n, ns := newNet(t)
	ns.Veth(t, "eth0", mac0)
	learned := netip.MustParsePrefix("2001:db8::5/64")
	ns.Do(t, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		// As SLAAC leaves it: an address with a lifetime.
		return netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: learned.Addr().AsSlice(), Mask: net.CIDRMask(64, 128)}, ValidLft: 3600, PreferedLft: 1800})
	})
	if got := addrsOf(t, ns, "eth0", netlink.FAMILY_V6); !slices.Contains(got, learned) {
		t.Fatalf("eth0 has %v, without %v", got, learned)
	}
	if err := n.ResetIPv6(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := addrsOf(t, ns, "eth0", netlink.FAMILY_V6)
	if slices.Contains(got, learned) {
		t.Errorf("the learned address stayed: %v", got)
	}
	if !slices.ContainsFunc(got, func(p netip.Prefix) bool { return p.Addr().IsLinkLocalUnicast() }) {
		t.Errorf("no link-local address came back: %v", got)
	}
	if v := ns.Sysctl(t, "net/ipv6/conf/eth0/disable_ipv6"); v != "0" {
		t.Errorf("disable_ipv6 = %s after the reset", v)
	}
}

func TestUpdateInterface(t *testing.T) {
	n, ns := newNet(t)
	ns.Veth(t, "eth0", mac0)
	ns.Veth(t, "eth1", mac1)
	want := netconf.Interface{
		Name:         "net5",
		HardwareAddr: mac0,
		Addrs:        []netip.Prefix{netip.MustParsePrefix("192.168.5.2/24"), netip.MustParsePrefix("2001:db8:5::2/64")},
		MTU:          1400,
		Flags:        0x80, // IFF_NOARP
	}
	got, err := n.UpdateInterface(context.Background(), want)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "net5" || got.MTU != 1400 || got.HardwareAddr.String() != mac0.String() || got.Flags&0x80 == 0 || got.Flags&1 == 0 {
		t.Errorf("UpdateInterface returned %+v", got)
	}
	for _, p := range want.Addrs {
		if !slices.Contains(got.Addrs, p) {
			t.Errorf("returned addresses %v lack %v", got.Addrs, p)
		}
	}
	var attrs netlink.LinkAttrs
	ns.Do(t, func() error {
		l, err := netlink.LinkByName("net5")
		if err == nil {
			attrs = *l.Attrs()
		}
		return err
	})
	if attrs.MTU != 1400 || attrs.Flags&net.FlagUp == 0 || attrs.RawFlags&0x80 == 0 {
		t.Errorf("link after the update: mtu %d, flags %v, raw %#x", attrs.MTU, attrs.Flags, attrs.RawFlags)
	}
	if a := addrsOf(t, ns, "net5", netlink.FAMILY_V4); !slices.Equal(a, want.Addrs[:1]) {
		t.Errorf("IPv4 addresses %v", a)
	}
	// Again with fewer addresses and ARP on: the others go.
	want.Addrs, want.Flags = want.Addrs[:1], 0
	if got, err = n.UpdateInterface(context.Background(), want); err != nil || got.Flags&0x80 != 0 {
		t.Fatalf("second update: %+v, %v", got, err)
	}
	if a := addrsOf(t, ns, "net5", netlink.FAMILY_V6); slices.Contains(a, netip.MustParsePrefix("2001:db8:5::2/64")) {
		t.Errorf("an address dropped from the update stayed: %v", a)
	}

	list, err := n.ListInterfaces(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range list {
		names = append(names, i.Name)
	}
	if !slices.Equal(names, []string{"lo", "net5", "eth1"}) {
		t.Errorf("ListInterfaces: %q", names)
	}
}

func TestUpdateInterfaceRefuses(t *testing.T) {
	n, ns := newNet(t)
	ns.Veth(t, "eth0", mac0)
	ns.Veth(t, "eth1", mac1)
	before, err := n.ListInterfaces(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	addr := []netip.Prefix{netip.MustParsePrefix("10.0.0.2/24")}
	for _, c := range []struct {
		in   netconf.Interface
		kind error
		says string
	}{
		{netconf.Interface{HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, 0x99}, Addrs: addr}, errdefs.ErrNotFound, "no link has the MAC address 02:00:00:00:00:99"},
		{netconf.Interface{Addrs: addr}, errdefs.ErrInvalidArgument, "hwAddr: must be set"},
		{netconf.Interface{HardwareAddr: mac0, Name: "eth1"}, errdefs.ErrAlreadyExists, `already called "eth1"`},
		{netconf.Interface{HardwareAddr: mac0, Name: "a/b"}, errdefs.ErrInvalidArgument, "not a link name"},
		{netconf.Interface{HardwareAddr: mac0, MTU: 20}, errdefs.ErrInvalidArgument, "mtu: 20 is outside"},
	} {
		_, err := n.UpdateInterface(context.Background(), c.in)
		if !errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("UpdateInterface(%+v): %v, want %v saying %q", c.in, err, c.kind, c.says)
		}
	}
	after, err := n.ListInterfaces(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Fatalf("links changed: %+v", after)
	}
	for i := range after {
		if after[i].Name != before[i].Name || after[i].MTU != before[i].MTU || !slices.Equal(after[i].Addrs, before[i].Addrs) {
			t.Errorf("refused updates changed %+v to %+v", before[i], after[i])
		}
	}
}

func TestUpdateRoutes(t *testing.T) {
	n, ns := newNet(t)
	ns.Veth(t, "eth0", mac0)
	if _, err := n.UpdateInterface(context.Background(), netconf.Interface{
		HardwareAddr: mac0, Addrs: []netip.Prefix{netip.MustParsePrefix("10.1.0.2/24")},
	}); err != nil {
		t.Fatal(err)
	}
	gw := netip.MustParseAddr("10.1.0.1")
	want := []netconf.Route{
		{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: gw, Device: "eth0"},
		{Dst: netip.MustParsePrefix("10.2.0.0/16"), Gateway: gw, Device: "eth0", MTU: 1300},
		// Its gateway is reached through the next route, which has none.
		{Dst: netip.MustParsePrefix("10.4.0.0/16"), Gateway: netip.MustParseAddr("10.3.0.1"), Device: "eth0"},
		{Dst: netip.MustParsePrefix("10.3.0.0/24"), Device: "eth0", Scope: 253},
	}
	got, err := n.UpdateRoutes(context.Background(), want)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range want {
		if !slices.ContainsFunc(got, func(r netconf.Route) bool {
			return r.Dst == w.Dst && r.Gateway == w.Gateway && r.Device == w.Device && r.MTU == w.MTU
		}) {
			t.Errorf("%+v missing from %+v", w, got)
		}
	}
	// The kernel's route for eth0's address stays.
	if !slices.ContainsFunc(got, func(r netconf.Route) bool { return r.Dst == netip.MustParsePrefix("10.1.0.0/24") }) {
		t.Errorf("the address's route went: %+v", got)
	}
	listed, err := n.ListRoutes(context.Background())
	if err != nil || !slices.Equal(listed, got) {
		t.Errorf("ListRoutes %+v, %v; UpdateRoutes returned %+v", listed, err, got)
	}

	// A second update replaces the routes.
	again := []netconf.Route{{Dst: netip.MustParsePrefix("10.9.0.0/16"), Gateway: gw, Device: "eth0"}}
	got, err = n.UpdateRoutes(context.Background(), again)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range got {
		if r.Dst == netip.MustParsePrefix("10.2.0.0/16") || r.Dst.Bits() == 0 {
			t.Errorf("a route of the first update stayed: %+v", r)
		}
	}
	if !slices.ContainsFunc(got, func(r netconf.Route) bool { return r.Dst == again[0].Dst }) {
		t.Errorf("the second update's route is missing: %+v", got)
	}
}

func TestUpdateRoutesRefuses(t *testing.T) {
	n, ns := newNet(t)
	ns.Veth(t, "eth0", mac0)
	if _, err := n.UpdateInterface(context.Background(), netconf.Interface{
		HardwareAddr: mac0, Addrs: []netip.Prefix{netip.MustParsePrefix("10.1.0.2/24")},
	}); err != nil {
		t.Fatal(err)
	}
	first := []netconf.Route{{Dst: netip.MustParsePrefix("10.2.0.0/16"), Gateway: netip.MustParseAddr("10.1.0.1"), Device: "eth0"}}
	before, err := n.UpdateRoutes(context.Background(), first)
	if err != nil {
		t.Fatal(err)
	}
	ok := first[0]
	for _, c := range []struct {
		routes []netconf.Route
		kind   error
		says   string
	}{
		{[]netconf.Route{ok, {Gateway: netip.MustParseAddr("10.8.0.1"), Device: "eth0"}}, errdefs.ErrInvalidArgument,
			"routes[1].gateway: 10.8.0.1 is not reachable on eth0"},
		{[]netconf.Route{{Dst: netip.MustParsePrefix("2001:db8::/32"), Gateway: netip.MustParseAddr("2001:db9::1"), Device: "eth0"}},
			errdefs.ErrInvalidArgument, "not reachable"},
		{[]netconf.Route{ok, {Dst: netip.MustParsePrefix("10.5.0.0/16"), Device: "eth7"}}, errdefs.ErrNotFound, `routes[1].device: no link is called "eth7"`},
		{[]netconf.Route{{Dst: netip.MustParsePrefix("10.5.0.0/16")}}, errdefs.ErrInvalidArgument, "routes[0].device: must be set"},
		{[]netconf.Route{{Dst: netip.MustParsePrefix("10.5.0.0/16"), Gateway: netip.MustParseAddr("2001:db8::1"), Device: "eth0"}},
			errdefs.ErrInvalidArgument, "routes[0].gateway"},
	} {
		_, err := n.UpdateRoutes(context.Background(), c.routes)
		if !errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("UpdateRoutes(%+v): %v, want %v saying %q", c.routes, err, c.kind, c.says)
		}
	}
	after, err := n.ListRoutes(context.Background())
	if err != nil || !slices.Equal(after, before) {
		t.Errorf("refused updates changed the routes from %+v to %+v (%v)", before, after, err)
	}
	// Marked on-link, a gateway outside every subnet is taken.
	onlink := []netconf.Route{{Gateway: netip.MustParseAddr("10.8.0.1"), Device: "eth0", Flags: 4}}
	if _, err := n.UpdateRoutes(context.Background(), onlink); err != nil {
		t.Errorf("on-link gateway: %v", err)
	}
}

func TestAddNeighbors(t *testing.T) {
	n, ns := newNet(t)
	ns.Veth(t, "eth0", mac0)
	lladdr := net.HardwareAddr{2, 0xaa, 0, 0, 0, 1}
	nbs := []netconf.Neighbor{
		{IP: netip.MustParseAddr("10.1.0.9"), Device: "eth0", HardwareAddr: lladdr},
		{IP: netip.MustParseAddr("2001:db8::9"), Device: "eth0", HardwareAddr: lladdr, State: netlink.NUD_REACHABLE},
	}
	// One bad entry and none is added.
	bad := append(slices.Clone(nbs), netconf.Neighbor{IP: netip.MustParseAddr("10.1.0.10"), Device: "eth9"})
	if err := n.AddNeighbors(context.Background(), bad); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "neighbors[2].device") {
		t.Errorf("AddNeighbors with an unknown link: %v", err)
	}
	if err := n.AddNeighbors(context.Background(), []netconf.Neighbor{{Device: "eth0"}}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("AddNeighbors without an address: %v", err)
	}
	neighs := func() []netlink.Neigh {
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
	for _, nb := range neighs() {
		if nb.IP.Equal(net.ParseIP("10.1.0.9")) {
			t.Errorf("a refused call added %v", nb)
		}
	}
	if err := n.AddNeighbors(context.Background(), nbs); err != nil {
		t.Fatal(err)
	}
	got := neighs()
	for _, want := range nbs {
		if !slices.ContainsFunc(got, func(nb netlink.Neigh) bool {
			ip, _ := netip.AddrFromSlice(nb.IP)
			state := want.State
			if state == 0 {
				state = netlink.NUD_PERMANENT
			}
			return ip.Unmap() == want.IP && nb.HardwareAddr.String() == want.HardwareAddr.String() && nb.State == state
		}) {
			t.Errorf("%+v not in the table: %+v", want, got)
		}
	}
}

// iptablesNet is a Net whose programs run through a reaper, skipping
// where the host has no iptables.
func iptablesNet(t *testing.T) (*netconf.Net, *netconftest.Netns) {
	t.Helper()
	for _, p := range []string{"iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("%s not installed (Debian's iptables package)", p)
		}
	}
	ns := netconftest.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	r := reaper.New(false, nil)
	go r.Run(ctx)
	n := netconf.New(netconf.Config{Netns: ns.Path, Reaper: r})
	t.Cleanup(n.Close)
	return n, ns
}

// rules drops iptables-save's comments and counters, which change.
func rules(b []byte) []string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if i := strings.Index(l, " ["); strings.HasPrefix(l, ":") && i > 0 {
			l = l[:i]
		}
		out = append(out, l)
	}
	return out
}

func TestIPTables(t *testing.T) {
	n, _ := iptablesNet(t)
	ctx := context.Background()
	for _, c := range []struct {
		v6   bool
		rule string
	}{
		{false, "-A INPUT -s 10.0.0.0/8 -p tcp -m tcp --dport 22 -j ACCEPT"},
		{true, "-A INPUT -s 2001:db8::/32 -p tcp -m tcp --dport 22 -j ACCEPT"},
	} {
		set := "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n" + c.rule + "\nCOMMIT\n"
		if _, err := n.SetIPTables(ctx, c.v6, []byte(set)); err != nil {
			t.Fatalf("SetIPTables(v6 %v): %v", c.v6, err)
		}
		got, err := n.IPTables(ctx, c.v6)
		if err != nil {
			t.Fatal(err)
		}
		r := rules(got)
		if !slices.Contains(r, c.rule) || !slices.Contains(r, ":FORWARD DROP") {
			t.Errorf("rules after SetIPTables(v6 %v): %q", c.v6, r)
		}
		for _, garbage := range []string{"this is not iptables\n", "*filter\n-A INPUT -j NOSUCHTARGET\nCOMMIT\n", "*filter\n-A INPUT -p tcp --dport 80 -j DROP\n"} {
			_, err := n.SetIPTables(ctx, c.v6, []byte(garbage))
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "refuses the rules") {
				t.Errorf("SetIPTables(v6 %v, %q): %v, want an invalid argument", c.v6, garbage, err)
			}
			after, err := n.IPTables(ctx, c.v6)
			if err != nil || !slices.Equal(rules(after), r) {
				t.Errorf("rules after garbage: %q (%v), want %q", rules(after), err, r)
			}
		}
	}
	// The host's own rules are not the namespace's.
	if out, err := exec.Command("iptables-save").Output(); err == nil && strings.Contains(string(out), "10.0.0.0/8") {
		t.Error("the test's rule is in the host's tables")
	}
}
