package integration

import (
	"encoding/binary"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/api/kata/types"
	"github.com/cabinvm/cabin/api/vmtools"
)

// QEMU's user-mode network, as the guest sees it (slirp's defaults).
const (
	slirpGuest   = "10.0.2.15"
	slirpGateway = "10.0.2.2"
	slirpDNS     = "10.0.2.3"
)

// wireIPv4 is an address as Maitred's fixed32 fields carry it
// (spec/semantics.md).
func wireIPv4(s string) uint32 { return binary.LittleEndian.Uint32(net.ParseIP(s).To4()) }

// TestGuestNetwork checks the guest's side of the network on a VM of its
// own on QEMU's user-mode network, where no privilege is needed: what
// Maitred and Kata's AgentService do to the guest's links, routes,
// neighbours and rules, read back from inside the guest, and the network
// containers get. The checks that need the VM's card skip, saying why,
// where cabind gave the VM none.
func TestGuestNetwork(t *testing.T) {
	e := needEnv(t)
	const name = "cit-guestnet"
	vm := bootNetworkVM(t, e, name)
	ctx := toVM(testContext(t, 3*time.Minute), vm)
	maitred := vmtools.NewMaitredClient(e.cc)
	agent := kata.NewAgentServiceClient(e.cc)
	links := strings.Fields(mustExec(t, e, vm, "ls", "/sys/class/net"))
	hasCard := strings.Contains(" "+strings.Join(links, " ")+" ", " eth0 ")
	needCard := func(t *testing.T) {
		t.Helper()
		if !hasCard {
			t.Skipf("the VM has no eth0 (links %q): cabind gave it no network card; the host half of issue 13 does", links)
		}
	}

	t.Run("virtio_net", func(t *testing.T) {
		needCard(t)
		// A module in Debian's kernel, loaded once the agent serves.
		if drv := mustExec(t, e, vm, "readlink", "/sys/class/net/eth0/device/driver"); !strings.HasSuffix(strings.TrimSpace(drv), "/virtio_net") {
			t.Errorf("eth0's driver: %q", drv)
		}
		// Built in, in cabin's minimal kernel.
		if guestHasModules(t, e, vm) {
			if mods := mustExec(t, e, vm, "cat", "/proc/modules"); !strings.Contains(mods, "virtio_net ") {
				t.Errorf("virtio_net not loaded:\n%s", mods)
			}
		}
	})

	t.Run("ConfigureNetwork", func(t *testing.T) {
		bad := &vmtools.NetworkConfigRequest{Ipv4Config: &vmtools.IPv4Config{
			Address: wireIPv4(slirpGuest), Netmask: wireIPv4("255.0.255.0"), Gateway: wireIPv4(slirpGateway),
		}}
		_, err := maitred.ConfigureNetwork(ctx, bad)
		wantCode(t, err, codes.InvalidArgument, "netmask")
		req := &vmtools.NetworkConfigRequest{
			Ipv4Config: &vmtools.IPv4Config{
				Address: wireIPv4(slirpGuest), Netmask: wireIPv4("255.255.255.0"), Gateway: wireIPv4(slirpGateway),
			},
			ResolvConfig: &vmtools.ResolvConfig{Nameservers: []string{slirpDNS}, SearchDomains: []string{"cabin.test"}},
		}
		_, err = maitred.ConfigureNetwork(ctx, req)
		if !hasCard {
			wantCode(t, err, codes.FailedPrecondition, "no network card")
			needCard(t)
		}
		if err != nil {
			t.Fatal(err)
		}
		if out := mustExec(t, e, vm, "ip", "-4", "addr", "show", "eth0"); !strings.Contains(out, "inet "+slirpGuest+"/24") || !strings.Contains(out, "UP") {
			t.Errorf("eth0 after ConfigureNetwork:\n%s", out)
		}
		if out := mustExec(t, e, vm, "ip", "route"); !strings.Contains(out, "default via "+slirpGateway+" dev eth0") {
			t.Errorf("routes:\n%s", out)
		}
		if out := mustExec(t, e, vm, "cat", "/etc/resolv.conf"); out != "nameserver "+slirpDNS+"\nsearch cabin.test\n" {
			t.Errorf("resolv.conf: %q", out)
		}
		if out := mustExec(t, e, vm, "cat", "/proc/sys/net/ipv4/ip_forward"); out != "1\n" {
			t.Errorf("ip_forward: %q", out)
		}
		for _, call := range []string{"OnHostNetworkChanged", "ResetIPv6"} {
			var err error
			if call == "ResetIPv6" {
				_, err = maitred.ResetIPv6(ctx, &vmtools.EmptyMessage{})
			} else {
				_, err = maitred.OnHostNetworkChanged(ctx, &vmtools.EmptyMessage{})
			}
			if err != nil {
				t.Errorf("%s: %v", call, err)
			}
		}
		if out := mustExec(t, e, vm, "cat", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6"); out != "0\n" {
			t.Errorf("disable_ipv6 after the reset: %q", out)
		}
	})

	t.Run("Kata links routes neighbours", func(t *testing.T) {
		needCard(t)
		mac := strings.TrimSpace(mustExec(t, e, vm, "cat", "/sys/class/net/eth0/address"))
		got, err := agent.UpdateInterface(ctx, &kata.UpdateInterfaceRequest{Interface: &types.Interface{
			HwAddr: mac, Name: "eth0", Mtu: 1400,
			IPAddresses: []*types.IPAddress{{Address: slirpGuest, Mask: "24"}, {Address: "10.0.2.16", Mask: "24"}},
		}})
		if err != nil || got.GetMtu() != 1400 {
			t.Fatalf("UpdateInterface: %v, %v", got, err)
		}
		if out := mustExec(t, e, vm, "ip", "addr", "show", "eth0"); !strings.Contains(out, "mtu 1400") || !strings.Contains(out, "10.0.2.16/24") {
			t.Errorf("eth0 after UpdateInterface:\n%s", out)
		}
		_, err = agent.UpdateInterface(ctx, &kata.UpdateInterfaceRequest{Interface: &types.Interface{HwAddr: "02:00:00:00:00:99"}})
		wantCode(t, err, codes.NotFound, "02:00:00:00:00:99")

		routes, err := agent.UpdateRoutes(ctx, &kata.UpdateRoutesRequest{Routes: &kata.Routes{Routes: []*types.Route{
			{Gateway: slirpGateway, Device: "eth0"},
			{Dest: "192.0.2.0/24", Gateway: slirpGateway, Device: "eth0"},
		}}})
		if err != nil {
			t.Fatal(err)
		}
		if out := mustExec(t, e, vm, "ip", "route"); !strings.Contains(out, "192.0.2.0/24 via "+slirpGateway) || !strings.Contains(out, "default via "+slirpGateway) {
			t.Errorf("routes after UpdateRoutes:\n%s\n(returned %v)", out, routes)
		}
		_, err = agent.UpdateRoutes(ctx, &kata.UpdateRoutesRequest{Routes: &kata.Routes{Routes: []*types.Route{
			{Dest: "198.51.100.0/24", Gateway: "203.0.113.1", Device: "eth0"},
		}}})
		wantCode(t, err, codes.InvalidArgument, "not reachable")
		if out := mustExec(t, e, vm, "ip", "route"); !strings.Contains(out, "192.0.2.0/24") {
			t.Errorf("a refused UpdateRoutes changed the routes:\n%s", out)
		}
		// The kernel adds eth0's fe80::/64 route on its own once IPv6 duplicate
		// address detection ends (the reset above re-enabled IPv6), so it may
		// appear between the two calls: compare the IPv4 routes.
		if listed, err := agent.ListRoutes(ctx, &kata.ListRoutesRequest{}); err != nil || len(v4Routes(listed.GetRoutes())) != len(v4Routes(routes.GetRoutes())) {
			t.Errorf("ListRoutes: %v, %v; UpdateRoutes returned %v", listed, err, routes)
		}

		_, err = agent.AddARPNeighbors(ctx, &kata.AddARPNeighborsRequest{Neighbors: &kata.ARPNeighbors{ARPNeighbors: []*types.ARPNeighbor{
			{ToIPAddress: &types.IPAddress{Address: "10.0.2.77"}, Device: "eth0", Lladdr: "02:00:00:00:00:77"},
		}}})
		if err != nil {
			t.Fatal(err)
		}
		if out := mustExec(t, e, vm, "cat", "/proc/net/arp"); !strings.Contains(out, "10.0.2.77") || !strings.Contains(out, "02:00:00:00:00:77") {
			t.Errorf("ARP table:\n%s", out)
		}
		ifs, err := agent.ListInterfaces(ctx, &kata.ListInterfacesRequest{})
		if err != nil || !strings.Contains(fmt.Sprint(ifs), mac) {
			t.Errorf("ListInterfaces: %v, %v", ifs, err)
		}
	})

	t.Run("iptables", func(t *testing.T) {
		// No card needed: the rules and the modules are the guest's.
		for _, v6 := range []bool{false, true} {
			rule := "-A INPUT -s 192.0.2.0/24 -p tcp -m tcp --dport 8080 -m conntrack --ctstate NEW -j REJECT --reject-with icmp-port-unreachable"
			if v6 {
				rule = "-A INPUT -s 2001:db8::/32 -p tcp -m tcp --dport 8080 -j REJECT --reject-with icmp6-port-unreachable"
			}
			rules := "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" + rule + "\nCOMMIT\n" +
				"*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o eth0 -j MASQUERADE\nCOMMIT\n"
			if _, err := agent.SetIPTables(ctx, &kata.SetIPTablesRequest{IsIpv6: v6, Data: []byte(rules)}); err != nil {
				t.Fatalf("SetIPTables(ipv6 %v): %v", v6, err)
			}
			got, err := agent.GetIPTables(ctx, &kata.GetIPTablesRequest{IsIpv6: v6})
			if err != nil || !strings.Contains(string(got.GetData()), rule+"\n") || !strings.Contains(string(got.GetData()), "-A POSTROUTING -o eth0 -j MASQUERADE") {
				t.Errorf("GetIPTables(ipv6 %v): %v\n%s", v6, err, got.GetData())
			}
			save := "iptables-save"
			if v6 {
				save = "ip6tables-save"
			}
			if out := mustExec(t, e, vm, save); !strings.Contains(out, rule) {
				t.Errorf("%s in the guest:\n%s", save, out)
			}
			_, err = agent.SetIPTables(ctx, &kata.SetIPTablesRequest{IsIpv6: v6, Data: []byte("*filter\n-A INPUT -j NOSUCHCHAIN\nCOMMIT\ngarbage\n")})
			wantCode(t, err, codes.InvalidArgument, "data")
			if again, err := agent.GetIPTables(ctx, &kata.GetIPTablesRequest{IsIpv6: v6}); err != nil || !strings.Contains(string(again.GetData()), rule+"\n") {
				t.Errorf("rules after garbage: %v\n%s", err, again.GetData())
			}
		}
	})

	t.Run("containers", func(t *testing.T) {
		if _, err := agent.CreateSandbox(ctx, &kata.CreateSandboxRequest{Storages: []*kata.Storage{kataRootfs()}}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { agent.DestroySandbox(toVM(testContext(t, time.Minute), vm), &kata.DestroySandboxRequest{}) })
		run := func(id string, spec *kata.Spec) string {
			t.Helper()
			if _, err := agent.CreateContainer(ctx, &kata.CreateContainerRequest{ContainerId: id, OCI: spec}); err != nil {
				t.Fatalf("CreateContainer %s: %v", id, err)
			}
			defer agent.RemoveContainer(ctx, &kata.RemoveContainerRequest{ContainerId: id})
			if _, err := agent.StartContainer(ctx, &kata.StartContainerRequest{ContainerId: id}); err != nil {
				t.Fatalf("StartContainer %s: %v", id, err)
			}
			out := readAll(t, agent, ctx, id, "")
			if _, err := agent.WaitProcess(ctx, &kata.WaitProcessRequest{ContainerId: id}); err != nil {
				t.Fatalf("WaitProcess %s: %v", id, err)
			}
			return out
		}
		vmLinks := netDevNames(mustExec(t, e, vm, "cat", "/proc/net/dev"))
		// Without a network namespace, as Kata's runtime sends: the VM's.
		shared := netDevNames(run("cit-net-shared", kataSpec("cat", "/proc/net/dev")))
		if shared != vmLinks {
			t.Errorf("a container without a network namespace sees %q, not the VM's links %q", shared, vmLinks)
		}
		// Naming the agent's: the VM's too.
		spec := kataSpec("cat", "/proc/net/dev")
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, &kata.LinuxNamespace{Type: "network", Path: "/proc/1/ns/net"})
		if byPath := netDevNames(run("cit-net-path", spec)); byPath != vmLinks {
			t.Errorf("a container naming the agent's namespace sees %q, not the VM's links %q", byPath, vmLinks)
		}
		// A new one, as cabin run asks: loopback only.
		spec = kataSpec("cat", "/proc/net/dev")
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, &kata.LinuxNamespace{Type: "network"})
		if own := netDevNames(run("cit-net-own", spec)); own != "lo" {
			t.Errorf("a container with a namespace of its own sees %q, want lo only", own)
		}
		if res := cabinCLI(t, e, "run", vm, "--", "cat", "/proc/net/dev"); res.code != 0 || strings.Contains(res.stdout, "eth0") {
			t.Errorf("cabin run: %v; want loopback only", res)
		}
		// A host's path, which the guest has not: refused, naming it.
		spec = kataSpec("true")
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, &kata.LinuxNamespace{Type: "network", Path: "/var/run/netns/cni-1"})
		_, err := agent.CreateContainer(ctx, &kata.CreateContainerRequest{ContainerId: "cit-net-bad", OCI: spec})
		wantCode(t, err, codes.InvalidArgument, "Namespaces[4].Path")
	})
}

// bootNetworkVM boots a VM of t's own on QEMU's user-mode network, or
// without one where this cabind does not offer it.
func bootNetworkVM(t *testing.T, e *env, name string) string {
	t.Helper()
	ctx := testContext(t, bootTimeout+10*time.Second)
	t.Cleanup(func() { stopVM(t, e, name) })
	w, err := watchEvents(ctx, e.cc, name)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	resp, err := cabinv1.NewVmsClient(e.cc).StartVm(ctx, &cabinv1.StartVmRequest{
		Request: &concierge.StartVmRequest{Name: name, Cpus: 1},
		Network: cabinv1.Network_NETWORK_USER,
	})
	if err != nil || !resp.GetSuccess() {
		t.Fatalf("StartVm on the user-mode network: %v, %v", resp, err)
	}
	ev, err := w.next(bootTimeout, func(ev *cabinv1.Event) bool {
		return ev.GetVmStarted() != nil || ev.GetVmStopped() != nil
	})
	if err != nil || ev.GetVmStarted() == nil {
		t.Fatalf("boot: %v, %v", ev, err)
	}
	return name
}

// netDevNames lists the links /proc/net/dev shows, sorted, space-separated.
func netDevNames(s string) string {
	var names []string
	for _, l := range strings.Split(s, "\n") {
		if name, _, ok := strings.Cut(l, ":"); ok && !strings.Contains(name, "|") {
			names = append(names, strings.TrimSpace(name))
		}
	}
	slices.Sort(names)
	return strings.Join(names, " ")
}

// v4Routes keeps the IPv4 routes of a Kata route list.
func v4Routes(routes []*types.Route) []*types.Route {
	var v4 []*types.Route
	for _, r := range routes {
		if r.GetFamily() != types.IPFamily_v6 {
			v4 = append(v4, r)
		}
	}
	return v4
}
