package vmm

import (
	"context"
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
)

// fakeNet gives each VM the address of its name's length, to tell them
// apart.
type fakeNet struct{}

func (fakeNet) Name() string { return "network" }

func (fakeNet) Prepare(_ context.Context, vm resource.VM, _ *hypervisor.Config) (resource.Hold, error) {
	return netHold{vm.Name}, nil
}

func (fakeNet) Adopt(_ context.Context, vm resource.VM, _ json.RawMessage) (resource.Hold, error) {
	return netHold{vm.Name}, nil
}

type netHold struct{ name string }

func (netHold) State() json.RawMessage        { return nil }
func (netHold) Release(context.Context) error { return nil }
func (h netHold) GuestNetwork() GuestNetwork {
	return GuestNetwork{
		Address: netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 115, 92, byte(24 + len(h.name))}), 30),
		Gateway: netip.MustParseAddr("100.115.92.25"),
	}
}

// A VM with a network is configured with it at bring-up, after its clock
// and before its time zone, with the DNS settings of the moment; its
// address is in its info; new DNS settings reach it and are announced.
func TestNetworkBringUpAndDNS(t *testing.T) {
	e := newEnv(t)
	e.m.opts.Resources = append(e.m.opts.Resources, fakeNet{})
	e.m.SetDNS(DNS{Nameservers: []string{"192.0.2.53"}})
	events, cancel := watch(e.m)
	defer cancel()
	if _, _, err := e.m.Start(context.Background(), spec("n")); err != nil {
		t.Fatal(err)
	}
	events.await(t, EventStarted, "n")
	f := e.launcher.get(e.root.VM(statedir.VMID("", "n")))
	steps := f.stepsSoFar()
	net := slices.IndexFunc(steps, func(s string) bool { return strings.HasPrefix(s, "network ") })
	tz := slices.IndexFunc(steps, func(s string) bool { return strings.HasPrefix(s, "timezone ") })
	if net < 0 || tz < net || steps[net] != "network 100.115.92.25/30 via 100.115.92.25 dns 192.0.2.53" {
		t.Errorf("bring-up steps %q: want the network, with its DNS, before the time zone", steps)
	}
	if info, err := e.m.Get(Key{Name: "n"}); err != nil || info.IPv4 != netip.MustParseAddr("100.115.92.25") {
		t.Errorf("info %+v, %v; want its address", info.IPv4, err)
	}

	e.m.SetDNS(DNS{Nameservers: []string{"192.0.2.54"}, SearchDomains: []string{"example.test"}})
	ev := events.await(t, EventDNSChanged, "")
	if !slices.Equal(ev.DNS.Nameservers, []string{"192.0.2.54"}) {
		t.Errorf("event %+v", ev)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Contains(f.stepsSoFar(), "dns 192.0.2.54") {
		if time.Now().After(deadline) {
			t.Fatalf("the running guest did not get the new DNS: %q", f.stepsSoFar())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The same settings again change nothing.
	e.m.SetDNS(DNS{Nameservers: []string{"192.0.2.54"}, SearchDomains: []string{"example.test"}})
	time.Sleep(50 * time.Millisecond)
	if n := strings.Count(strings.Join(f.stepsSoFar(), "|"), "dns 192.0.2.54"); n != 1 {
		t.Errorf("the guest got the same settings %d times", n)
	}
}
