package vmm

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/cabinvm/cabin/internal/resource"
)

// Guest is what the manager asks of a VM's agent. internal/guestlink
// implements it over Maitred; each call waits (until ctx ends) for the
// agent to be connected.
type Guest interface {
	// SetTime sets the guest's clock.
	SetTime(ctx context.Context, t time.Time) error
	// SetTimezone sets the guest's time zone, a name under
	// /usr/share/zoneinfo.
	SetTimezone(ctx context.Context, name string) error
	// Shutdown asks the guest to power off.
	Shutdown(ctx context.Context) error
	// ConfigureNetwork gives the guest its address, gateway and DNS.
	ConfigureNetwork(ctx context.Context, n GuestNetwork) error
	// SetDNS changes the guest's DNS settings.
	SetDNS(ctx context.Context, d DNS) error
	// DialPort connects, through the agent, to port ("tcp" or "udp") on
	// the guest's 127.0.0.1, as net.Dial would: ctx bounds the dial, not
	// the connection. A UDP connection carries one datagram per Read and
	// Write; a TCP one can half-close (CloseWrite).
	DialPort(ctx context.Context, proto string, port int) (net.Conn, error)
}

// GuestNetwork is the network a VM's guest is given at bring-up.
type GuestNetwork struct {
	// Address is the guest's address in its subnet, 100.115.92.26/30.
	Address netip.Prefix
	// Gateway is the host's end.
	Gateway netip.Addr
	DNS     DNS
}

// DNS is what a guest's resolv.conf says.
type DNS struct {
	Nameservers   []string
	SearchDomains []string
}

// Networked is a resource hold that gives its VM a network (a tap and an
// address): the manager configures the guest with it at bring-up and
// reports its address. A network that leaves DNS empty gets the host's
// (Options.DNS, SetDNS); one with a resolver of its own keeps it.
type Networked interface {
	GuestNetwork() GuestNetwork
}

// GuestLink is the manager's link to one VM's agent, kept up (and made
// again after each disconnection) until Close.
type GuestLink interface {
	Guest
	// Close ends the link; the VM is not affected.
	Close()
}

// GuestDialer links the manager to guest agents.
type GuestDialer interface {
	// Dial starts linking to the agent of vm, whose hypervisor runs: at
	// launch before its vCPUs do, and at adoption. It does not wait for
	// the agent.
	Dial(vm resource.VM) GuestLink
}
