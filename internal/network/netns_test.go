package network

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/network/netnstest"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
	"github.com/cabinvm/cabin/internal/vmm"
)

// The tests in this file change interfaces, routes, nftables and
// sysctls: each runs in a network namespace of its own
// (netnstest.Enter), never the host's.

// newTapResource is the network of a cabind that makes taps, on root.
func newTapResource(t *testing.T, root statedir.Root, log *slog.Logger) *Resource {
	t.Helper()
	r, err := New(Options{Mode: ModeAuto, Allocations: root.NetworkAllocations(), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	if r.Mode() != vmm.NetworkTap {
		t.Fatalf("auto as root picked %q, want tap", r.Mode())
	}
	return r
}

func testLog(t *testing.T) *slog.Logger { return slog.New(slog.NewTextHandler(tWriter{t}, nil)) }

// tapAddrs is the IPv4 addresses of the tap name, and whether it is up.
func tapAddrs(t *testing.T, name string) (addrs []string, up bool) {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatalf("tap %s: %v", name, err)
	}
	if _, ok := l.(*netlink.Tuntap); !ok {
		t.Errorf("%s is a %s, not a tap", name, l.Type())
	}
	as, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range as {
		addrs = append(addrs, a.IPNet.String())
	}
	return addrs, l.Attrs().Flags&net.FlagUp != 0
}

func assertNoTap(t *testing.T, name string) {
	t.Helper()
	if ok, err := tapExists(name); ok || err != nil {
		t.Errorf("tap %s still there (%v)", name, err)
	}
}

// A VM with a tap gets one of its own, holding its subnet's gateway, up,
// and its NIC on it; the record keeps what Adopt needs; Release removes
// the tap and frees the subnet.
func TestTapPrepareRelease(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	root := testRoot(t)
	r := newTapResource(t, root, testLog(t))
	ctx := context.Background()
	vm := testVM(t, root, "a", "")
	id := statedir.VMID("", "a")
	var cfg hypervisor.Config
	h, err := r.Prepare(ctx, vm, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	tap := "cbn" + id[:12]
	if len(cfg.NICs) != 1 || cfg.NICs[0].Tap != tap || cfg.NICs[0].MAC.String() != macOf(id).String() {
		t.Fatalf("NICs %+v, want one on %s", cfg.NICs, tap)
	}
	if err := hypervisor.CheckMAC(cfg.NICs[0].MAC); err != nil {
		t.Error(err)
	}
	if addrs, up := tapAddrs(t, tap); len(addrs) != 1 || addrs[0] != "100.115.92.25/30" || !up {
		t.Errorf("tap %s: addresses %v, up %v; want 100.115.92.25/30, up", tap, addrs, up)
	}
	gn := h.(vmm.Networked).GuestNetwork()
	if gn.Address.String() != "100.115.92.26/30" || gn.Gateway.String() != "100.115.92.25" {
		t.Errorf("guest network %+v", gn)
	}
	want := `{"mode":"tap","tap":"` + tap + `","subnet":"100.115.92.24/30","mac":"` + macOf(id).String() + `"}`
	if string(h.State()) != want {
		t.Errorf("state %s, want %s", h.State(), want)
	}
	// A second VM gets the next subnet.
	var cfg2 hypervisor.Config
	h2, err := r.Prepare(ctx, testVM(t, root, "b", vmm.NetworkTap), &cfg2)
	if err != nil {
		t.Fatal(err)
	}
	if gn := h2.(vmm.Networked).GuestNetwork(); gn.Address.String() != "100.115.92.30/30" {
		t.Errorf("second VM's address %s", gn.Address)
	}
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	assertNoTap(t, tap)
	if r.alloc.holder(DefaultPool.Subnet(0)) != "" {
		t.Error("the subnet is still held after Release")
	}
	if err := h2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if got := r.alloc.list(); len(got) != 0 {
		t.Errorf("held after both released: %v", got)
	}
}

// A restarted cabind takes a VM's tap back from its record: the subnet is
// held again (a new VM gets another), the tap gets back an address or an
// up someone took from it; a tap that vanished is not made again, and the
// subnet stays held until the VM is released.
func TestTapAdopt(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	root := testRoot(t)
	ctx := context.Background()
	r := newTapResource(t, root, testLog(t))
	var cfg hypervisor.Config
	vmA, vmB := testVM(t, root, "a", ""), testVM(t, root, "b", "")
	ha, err := r.Prepare(ctx, vmA, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	hb, err := r.Prepare(ctx, vmB, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	tapA, tapB := cfg.NICs[0].Tap, cfg.NICs[1].Tap
	// Someone takes the address and the up from a's tap, and removes b's.
	l, _ := netlink.LinkByName(tapA)
	netlink.LinkSetDown(l)
	as, _ := netlink.AddrList(l, netlink.FAMILY_V4)
	for _, a := range as {
		netlink.AddrDel(l, &a)
	}
	if err := deleteTap(tapB); err != nil {
		t.Fatal(err)
	}

	// cabind restarts: a new resource on the same state dir.
	r2 := newTapResource(t, root, testLog(t))
	aa, err := r2.Adopt(ctx, vmA, ha.State())
	if err != nil {
		t.Fatal(err)
	}
	ab, err := r2.Adopt(ctx, vmB, hb.State())
	if err != nil {
		t.Fatal(err)
	}
	if addrs, up := tapAddrs(t, tapA); len(addrs) != 1 || addrs[0] != "100.115.92.25/30" || !up {
		t.Errorf("adopted tap %s: addresses %v, up %v", tapA, addrs, up)
	}
	assertNoTap(t, tapB)
	if string(aa.State()) != string(ha.State()) || string(ab.State()) != string(hb.State()) {
		t.Errorf("adopted states %s, %s; want %s, %s", aa.State(), ab.State(), ha.State(), hb.State())
	}
	var cfgC hypervisor.Config
	hc, err := r2.Prepare(ctx, testVM(t, root, "c", ""), &cfgC)
	if err != nil {
		t.Fatal(err)
	}
	if got := hc.(vmm.Networked).GuestNetwork().Address.String(); got != "100.115.92.34/30" {
		t.Errorf("a new VM after the restart got %s, want the third subnet", got)
	}
	// Another VM's subnet in a record is refused.
	if _, err := r2.Adopt(ctx, testVM(t, root, "d", ""), ha.State()); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("adopting a's subnet for d: %v", err)
	}
	for _, h := range []resource.Hold{aa, ab, hc} {
		if err := h.Release(ctx); err != nil {
			t.Error(err)
		}
	}
	assertNoTap(t, tapA)
	if got := r2.alloc.list(); len(got) != 0 {
		t.Errorf("held after release: %v", got)
	}
}

// A tap an earlier run of the same VM left (its cabind went away before
// releasing it) is made anew; an interface of that name that is no tap
// is left alone.
func TestTapStale(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	root := testRoot(t)
	ctx := context.Background()
	r := newTapResource(t, root, testLog(t))
	vm := testVM(t, root, "a", "")
	var cfg hypervisor.Config
	if _, err := r.Prepare(ctx, vm, &cfg); err != nil {
		t.Fatal(err)
	}
	// The hold is lost: cabind died. The VM starts again.
	h, err := r.Prepare(ctx, vm, &cfg)
	if err != nil {
		t.Fatalf("prepare over a stale tap: %v", err)
	}
	if got := h.(vmm.Networked).GuestNetwork().Address.String(); got != "100.115.92.26/30" {
		t.Errorf("address %s, want the VM's own", got)
	}
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	// A bridge in the tap's place.
	name := tapName(statedir.VMID("", "a"))
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Prepare(ctx, vm, &cfg); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("prepare where a bridge has the name: %v", err)
	}
	if _, err := netlink.LinkByName(name); err != nil {
		t.Errorf("the bridge: %v", err)
	}
	if got := r.alloc.list(); len(got) != 0 {
		t.Errorf("a failed prepare left %v held", got)
	}
}

// On the default pool, ten VMs get taps and the eleventh is told the pool
// is exhausted, with nothing left behind; once one VM goes, it starts.
func TestEleventhVM(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	root := testRoot(t)
	ctx := context.Background()
	r := newTapResource(t, root, testLog(t))
	var holds []resource.Hold
	for i := range 10 {
		var cfg hypervisor.Config
		h, err := r.Prepare(ctx, testVM(t, root, "vm"+string(rune('0'+i)), ""), &cfg)
		if err != nil {
			t.Fatalf("VM %d: %v", i+1, err)
		}
		holds = append(holds, h)
	}
	var cfg hypervisor.Config
	eleventh := testVM(t, root, "vm10", "")
	_, err := r.Prepare(ctx, eleventh, &cfg)
	if !errors.Is(err, errdefs.ErrResourceExhausted) || !strings.Contains(err.Error(), "--net-pool") {
		t.Fatalf("the eleventh VM: %v, want the pool exhausted", err)
	}
	if len(cfg.NICs) != 0 {
		t.Errorf("the eleventh VM got NICs %+v", cfg.NICs)
	}
	assertNoTap(t, tapName(statedir.VMID("", "vm10")))
	if err := holds[6].Release(ctx); err != nil {
		t.Fatal(err)
	}
	h, err := r.Prepare(ctx, eleventh, &cfg)
	if err != nil {
		t.Fatalf("the eleventh VM once one went: %v", err)
	}
	if got := h.(vmm.Networked).GuestNetwork().Address.String(); got != "100.115.92.50/30" {
		t.Errorf("it got %s, want the freed 100.115.92.50/30", got)
	}
}

// ruleset is cabind's table as the kernel lists it: its chains and their
// rules' expressions, handles left out.
func ruleset(t *testing.T) map[string][]any {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, tb := range tables {
		if tb.Name == TableName {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d tables named %s", n, TableName)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]any{}
	for _, ch := range chains {
		if ch.Table.Name != TableName {
			continue
		}
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			t.Fatal(err)
		}
		desc := []any{ch.Type, *ch.Hooknum, *ch.Priority, *ch.Policy}
		for _, r := range rules {
			desc = append(desc, r.Exprs)
		}
		out[ch.Name] = desc
	}
	return out
}

// cabind's table is made anew at each start: twice gives the same
// ruleset, and whatever was added to the table in between is gone.
func TestNATRebuild(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	if err := applyNAT(DefaultPool); err != nil {
		t.Fatal(err)
	}
	first := ruleset(t)
	if len(first) != 2 || len(first[postroutingChain]) != 4+1 || len(first[forwardChain]) != 4+3 {
		t.Fatalf("ruleset %v: want postrouting with one rule and forward with three", first)
	}
	// Something else in the table: a chain of its own.
	c, _ := nftables.New()
	c.AddChain(&nftables.Chain{Name: "stray", Table: &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := applyNAT(DefaultPool); err != nil {
		t.Fatal(err)
	}
	if second := ruleset(t); !reflect.DeepEqual(first, second) {
		t.Errorf("rebuilt ruleset differs:\nfirst  %v\nsecond %v", first, second)
	}
	// The rules are what natRules says, as the kernel reads them back.
	c, _ = nftables.New()
	tb := &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}
	rules, err := c.GetRules(tb, &nftables.Chain{Name: postroutingChain, Table: tb})
	if err != nil {
		t.Fatal(err)
	}
	if want := natRules(DefaultPool)[0].Exprs; len(rules) != 1 || !reflect.DeepEqual(rules[0].Exprs, want) {
		t.Errorf("postrouting %v, want %v", rules, want)
	}
}

// At start, cabind turns IPv4 forwarding on, saying so, and makes its
// table; a pool that overlaps a route of the host is refused, naming the
// route, while the routes of cabind's own taps do not count.
func TestStartHost(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	if err := os.WriteFile(ipForward, []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	root := testRoot(t)
	var logs bytes.Buffer
	r := newTapResource(t, root, slog.New(slog.NewTextHandler(&logs, nil)))
	if b, _ := os.ReadFile(ipForward); string(b) != "1\n" {
		t.Errorf("ip_forward %q after start", b)
	}
	if !strings.Contains(logs.String(), "turned IPv4 forwarding on") {
		t.Errorf("no log line says forwarding was turned on:\n%s", logs.String())
	}
	ruleset(t)
	// A VM's tap adds a route into the pool; a second start minds it not.
	var cfg hypervisor.Config
	if _, err := r.Prepare(context.Background(), testVM(t, root, "a", ""), &cfg); err != nil {
		t.Fatal(err)
	}
	logs.Reset()
	newTapResource(t, root, slog.New(slog.NewTextHandler(&logs, nil)))
	if strings.Contains(logs.String(), "forwarding") {
		t.Errorf("forwarding already on, yet:\n%s", logs.String())
	}

	// A LAN of the host's on the pool's addresses.
	lan := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lan0"}, PeerName: "lan1"}
	if err := netlink.LinkAdd(lan); err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("100.115.92.1/24")
	if err := netlink.AddrAdd(lan, addr); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"lan0", "lan1"} {
		l, _ := netlink.LinkByName(name)
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	_, err := New(Options{Mode: ModeAuto, Allocations: root.NetworkAllocations()})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), `"100.115.92.0/24 dev lan0"`) {
		t.Errorf("start on a pool a route overlaps: %v, want the route named", err)
	}
	// Another pool does.
	pool, _ := ParsePool("10.77.0.0/24")
	if _, err := New(Options{Mode: ModeAuto, Pool: pool, Allocations: root.NetworkAllocations()}); err != nil {
		t.Errorf("start on a pool no route overlaps: %v", err)
	}
	// A route through a gateway, in a table of its own.
	_, dst, _ := net.ParseCIDR("10.77.0.128/25")
	route := &netlink.Route{Dst: dst, Gw: net.ParseIP("100.115.92.7"), Table: 100}
	if err := netlink.RouteAdd(route); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{Mode: ModeAuto, Pool: pool, Allocations: root.NetworkAllocations()}); err == nil ||
		!strings.Contains(err.Error(), `"10.77.0.128/25 via 100.115.92.7 dev lan0 table 100"`) {
		t.Errorf("start on a pool a route in table 100 overlaps: %v", err)
	}
}

// newNetNS makes a network namespace, apart from the test's, held by
// the file returned. The thread that made it dies with its goroutine.
func newNetNS(t *testing.T) *os.File {
	t.Helper()
	var f *os.File
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // for good: the thread is the namespace's
		if err = unix.Unshare(unix.CLONE_NEWNET); err == nil {
			f, err = os.Open("/proc/thread-self/ns/net")
		}
	}()
	<-done
	if err != nil {
		t.Fatalf("make a network namespace: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// inNetNS runs fn in the network namespace ns, on a thread that dies
// with it; sockets fn makes stay in ns.
func inNetNS(ns *os.File, fn func() error) error {
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // for good: the thread enters ns
		if err = unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err == nil {
			err = fn()
		}
	}()
	<-done
	return err
}

// vethTo makes a veth pair, here (named here, holding hereAddr) and in ns
// (named there, holding thereAddr, with a default route via gw when
// valid), both up.
func vethTo(t *testing.T, ns *os.File, here, hereAddr, there, thereAddr, gw string) {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: here}, PeerName: there}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	a, _ := netlink.ParseAddr(hereAddr)
	if err := netlink.AddrAdd(veth, a); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		t.Fatal(err)
	}
	peer, err := netlink.LinkByName(there)
	if err == nil {
		err = netlink.LinkSetNsFd(peer, int(ns.Fd()))
	}
	if err != nil {
		t.Fatal(err)
	}
	err = inNetNS(ns, func() error {
		l, err := netlink.LinkByName(there)
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr(thereAddr)
		if err := netlink.AddrAdd(l, a); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		if gw == "" {
			return nil
		}
		return netlink.RouteAdd(&netlink.Route{Gw: net.ParseIP(gw), LinkIndex: l.Attrs().Index})
	})
	if err != nil {
		t.Fatalf("%s in its namespace: %v", there, err)
	}
}

// What a VM sends out of the pool leaves with the host's address; what a
// tap sends from an address outside the pool is dropped. A veth named as
// cabind's taps are stands in for a tap, and namespaces for the VM and
// for the world outside.
func TestNATMasquerades(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	newTapResource(t, testRoot(t), testLog(t))
	outside, vm := newNetNS(t), newNetNS(t)
	// The world outside routes everything back through the host, so
	// that only the rules keep a spoofed connection from working.
	vethTo(t, outside, "out0", "10.99.0.1/24", "out1", "10.99.0.2/24", "10.99.0.1")
	tap := tapName("0123456789abcdef")
	vethTo(t, vm, tap, "100.115.92.25/30", "eth0", "100.115.92.26/30", "100.115.92.25")
	_, spoofed, _ := net.ParseCIDR("192.0.2.77/32")
	if err := netlink.RouteAdd(&netlink.Route{Dst: spoofed, Gw: net.ParseIP("100.115.92.26")}); err != nil {
		t.Fatal(err)
	}

	var lis net.Listener
	if err := inNetNS(outside, func() (err error) {
		lis, err = net.Listen("tcp", "10.99.0.2:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	peers := make(chan string, 4)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			peers <- c.RemoteAddr().(*net.TCPAddr).IP.String()
			c.Close()
		}
	}()
	dial := func(from string) error {
		return inNetNS(vm, func() error {
			d := net.Dialer{Timeout: 2 * time.Second}
			if from != "" {
				d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
			}
			c, err := d.Dial("tcp", lis.Addr().String())
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	if err := dial(""); err != nil {
		t.Fatalf("the VM's connection out: %v", err)
	}
	if got := <-peers; got != "10.99.0.1" {
		t.Errorf("the world outside sees the VM as %s, want the host's 10.99.0.1", got)
	}
	// A source outside the pool, spoofed on the tap.
	if err := inNetNS(vm, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr("192.0.2.77/32")
		return netlink.AddrAdd(l, a)
	}); err != nil {
		t.Fatal(err)
	}
	if err := dial("192.0.2.77"); err == nil {
		t.Errorf("a connection from a spoofed source went through, seen as %s", <-peers)
	}
}
