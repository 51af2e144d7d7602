package maitred

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"google.golang.org/grpc/codes"

	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/guest/netconf"
	"github.com/cabinvm/cabin/internal/guest/netconf/netconftest"
)

// wire is an IPv4 address as a fixed32 field carries it
// (spec/semantics.md).
func wire(s string) uint32 {
	return binary.LittleEndian.Uint32(net.ParseIP(s).To4())
}

var cardMAC = net.HardwareAddr{0x02, 0xca, 0xb1, 0, 0, 1}

// newNetTest returns a Maitred whose network is a namespace of the test's
// own, with a veth link, eth0, playing the VM's card.
func newNetTest(t *testing.T, cfg Config) (*Service, *netconftest.Netns, string) {
	t.Helper()
	ns := netconftest.New(t)
	ns.Veth(t, "eth0", cardMAC)
	cfg.Net = netconf.New(netconf.Config{Netns: ns.Path, UplinkDriver: "veth"})
	t.Cleanup(cfg.Net.Close)
	cfg.EtcDir = t.TempDir()
	_, s := newTest(t, cfg)
	return s, ns, cfg.EtcDir
}

func eth0(t *testing.T, ns *netconftest.Netns) (addrs []netip.Prefix, up bool, routes []netlink.Route) {
	t.Helper()
	ns.Do(t, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		up = l.Attrs().Flags&net.FlagUp != 0
		as, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, a := range as {
			ones, _ := a.Mask.Size()
			ip, _ := netip.AddrFromSlice(a.IP.To4())
			addrs = append(addrs, netip.PrefixFrom(ip, ones))
		}
		routes, err = netlink.RouteList(l, netlink.FAMILY_V4)
		return err
	})
	return addrs, up, routes
}

func TestConfigureNetwork(t *testing.T) {
	s, ns, etc := newNetTest(t, Config{})
	ns.Do(t, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.LinkSetDown(l)
	})
	_, err := s.ConfigureNetwork(context.Background(), &vmtools.NetworkConfigRequest{
		Ipv4Config: &vmtools.IPv4Config{
			Address: wire("100.115.92.26"), Netmask: wire("255.255.255.252"), Gateway: wire("100.115.92.25"),
		},
		ResolvConfig: &vmtools.ResolvConfig{Nameservers: []string{"100.115.92.25"}, SearchDomains: []string{"example.com"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	addrs, up, routes := eth0(t, ns)
	if !slices.Equal(addrs, []netip.Prefix{netip.MustParsePrefix("100.115.92.26/30")}) || !up {
		t.Errorf("eth0: %v, up %v", addrs, up)
	}
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
		ones, _ := r.Dst.Mask.Size()
		return ones == 0 && r.Gw.Equal(net.ParseIP("100.115.92.25"))
	}) {
		t.Errorf("no default route via the gateway: %v", routes)
	}
	if v := ns.Sysctl(t, "net/ipv4/ip_forward"); v != "1" {
		t.Errorf("ip_forward = %s", v)
	}
	var loUp bool
	ns.Do(t, func() error {
		l, err := netlink.LinkByName("lo")
		loUp = err == nil && l.Attrs().Flags&net.FlagUp != 0
		return err
	})
	if !loUp {
		t.Error("lo is down")
	}
	want := "nameserver 100.115.92.25\nsearch example.com\n"
	if b, _ := os.ReadFile(filepath.Join(etc, "resolv.conf")); string(b) != want {
		t.Errorf("resolv.conf = %q, want %q", b, want)
	}
	// The host's address, for LXD's containers and garcon, as upstream.
	if b, _ := os.ReadFile(filepath.Join(s.m.cfg.RunDir, "host_ip")); string(b) != "100.115.92.25" {
		t.Errorf("host_ip = %q, want the gateway", b)
	}
}

func TestConfigureNetworkRefuses(t *testing.T) {
	s, ns, etc := newNetTest(t, Config{})
	forward := ns.Sysctl(t, "net/ipv4/ip_forward")
	ok := func() *vmtools.IPv4Config {
		return &vmtools.IPv4Config{Address: wire("100.115.92.26"), Netmask: wire("255.255.255.252"), Gateway: wire("100.115.92.25")}
	}
	for _, tc := range []struct {
		name    string
		mutate  func(*vmtools.NetworkConfigRequest)
		mention string
	}{
		{"no config", func(r *vmtools.NetworkConfigRequest) { r.Ipv4Config = nil }, "ipv4_config.address"},
		{"address 0.0.0.0", func(r *vmtools.NetworkConfigRequest) { r.Ipv4Config.Address = 0 }, "ipv4_config.address: 0.0.0.0"},
		{"netmask 0", func(r *vmtools.NetworkConfigRequest) { r.Ipv4Config.Netmask = 0 }, "ipv4_config.netmask"},
		{"gateway 0", func(r *vmtools.NetworkConfigRequest) { r.Ipv4Config.Gateway = 0 }, "ipv4_config.gateway"},
		{"holes in the netmask", func(r *vmtools.NetworkConfigRequest) { r.Ipv4Config.Netmask = wire("255.0.255.0") },
			"ipv4_config.netmask: 255.0.255.0 is not a contiguous netmask"},
		{"netmask in host order", func(r *vmtools.NetworkConfigRequest) {
			r.Ipv4Config.Netmask = binary.BigEndian.Uint32(net.ParseIP("255.255.255.252").To4())
		}, "not a contiguous netmask"},
		{"gateway outside the subnet", func(r *vmtools.NetworkConfigRequest) { r.Ipv4Config.Gateway = wire("100.115.92.29") },
			"ipv4_config.gateway: 100.115.92.29 is outside the subnet 100.115.92.24/30"},
		{"bad nameserver", func(r *vmtools.NetworkConfigRequest) {
			r.ResolvConfig = &vmtools.ResolvConfig{Nameservers: []string{"dns.example"}}
		}, "resolv_config.nameservers[0]"},
	} {
		req := &vmtools.NetworkConfigRequest{Ipv4Config: ok()}
		tc.mutate(req)
		_, err := s.ConfigureNetwork(context.Background(), req)
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		wantCode(t, err, codes.InvalidArgument, tc.mention)
	}
	if addrs, _, routes := eth0(t, ns); len(addrs) != 0 || slices.ContainsFunc(routes, func(r netlink.Route) bool { return r.Gw != nil }) {
		t.Errorf("refused requests changed eth0: %v, %v", addrs, routes)
	}
	if v := ns.Sysctl(t, "net/ipv4/ip_forward"); v != forward {
		t.Errorf("refused requests turned ip_forward to %s", v)
	}
	if _, err := os.Stat(filepath.Join(etc, "resolv.conf")); !os.IsNotExist(err) {
		t.Errorf("refused requests wrote resolv.conf: %v", err)
	}
}

func TestConfigureNetworkWithoutCard(t *testing.T) {
	ns := netconftest.New(t)
	n := netconf.New(netconf.Config{Netns: ns.Path})
	t.Cleanup(n.Close)
	_, s := newTest(t, Config{Net: n})
	_, err := s.ConfigureNetwork(context.Background(), &vmtools.NetworkConfigRequest{Ipv4Config: &vmtools.IPv4Config{
		Address: wire("100.115.92.26"), Netmask: wire("255.255.255.252"), Gateway: wire("100.115.92.25"),
	}})
	wantCode(t, err, codes.FailedPrecondition, "no network card")
}

// OnHostNetworkChanged and ResetIPv6 make the card renegotiate IPv6 and
// tell dnsmasq to flush its cache, as upstream.
func TestOnHostNetworkChanged(t *testing.T) {
	procDir := t.TempDir()
	s, ns, _ := newNetTest(t, Config{Proc: procDir})
	learned := net.ParseIP("2001:db8::5")
	addLearned := func() {
		ns.Do(t, func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			return netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: learned, Mask: net.CIDRMask(64, 128)}, ValidLft: 3600, PreferedLft: 1800})
		})
	}
	hasLearned := func() bool {
		var found bool
		ns.Do(t, func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			as, err := netlink.AddrList(l, netlink.FAMILY_V6)
			for _, a := range as {
				found = found || a.IP.Equal(learned)
			}
			return err
		})
		return found
	}
	for _, call := range []struct {
		name string
		do   func() error
	}{
		{"OnHostNetworkChanged", func() error {
			_, err := s.OnHostNetworkChanged(context.Background(), &vmtools.EmptyMessage{})
			return err
		}},
		{"ResetIPv6", func() error {
			_, err := s.ResetIPv6(context.Background(), &vmtools.EmptyMessage{})
			return err
		}},
	} {
		addLearned()
		// A dnsmasq, as far as the process list tells: a process of the
		// test's, found in a list that holds only it.
		dnsmasq := exec.Command("sleep", "60")
		if err := dnsmasq.Start(); err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(procDir, strconv.Itoa(dnsmasq.Process.Pid))
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "comm"), []byte("dnsmasq\n"), 0o644)
		if err := call.do(); err != nil {
			dnsmasq.Process.Kill()
			t.Fatalf("%s: %v", call.name, err)
		}
		if hasLearned() {
			t.Errorf("%s: the address learned before stayed", call.name)
		}
		if v := ns.Sysctl(t, "net/ipv6/conf/eth0/disable_ipv6"); v != "0" {
			t.Errorf("%s: disable_ipv6 = %s", call.name, v)
		}
		done := make(chan error, 1)
		go func() { done <- dnsmasq.Wait() }()
		select {
		case err := <-done:
			if st, ok := dnsmasq.ProcessState.Sys().(syscall.WaitStatus); !ok || st.Signal() != syscall.SIGHUP {
				t.Errorf("%s: dnsmasq ended with %v, want SIGHUP", call.name, err)
			}
		case <-time.After(5 * time.Second):
			dnsmasq.Process.Kill()
			t.Errorf("%s: dnsmasq got no SIGHUP", call.name)
		}
		os.RemoveAll(dir)
	}
}
