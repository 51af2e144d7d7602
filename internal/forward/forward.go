// Package forward carries host ports to ports of VMs' guests: cabind
// listens on a host address and port and, for each TCP connection or
// each UDP client, opens a connection to the guest's port (through a
// Dialer: vmm.Manager.DialPort, over the VM's own network when it has
// one, else over its channel) and copies the bytes both ways, TCP's
// half-close included.
//
// A VM's forwards are a per-VM resource (Resource): they belong to the
// VM, end when it stops however it stops, and are kept in its directory
// so that a restarted cabind listens again. The API adds and removes them
// on the VM's hold (Set), found through the manager (vmm.Hold).
package forward

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"

	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/vmm"
)

// The protocols a forward carries.
const (
	TCP = "tcp"
	UDP = "udp"
)

// DefaultAddress is the host address a forward listens on when none is
// asked for: loopback, so that only this host's own users reach the
// guest's port. 0.0.0.0 would offer it to every network the host is on,
// where a user who wanted to try a server in a VM seldom means to publish
// it (Docker's -p does, and its documentation warns of it; Lima forwards
// to 127.0.0.1).
var DefaultAddress = netip.AddrFrom4([4]byte{127, 0, 0, 1})

// FirstUnprivileged is the lowest host port a caller that is not root may
// forward from: the ports below it are the system's (as the kernel has
// it for binding them).
const FirstUnprivileged = 1024

// Dialer connects to port ("tcp" or "udp") of the guest of the VM key, as
// net.Dial would: ctx bounds the dial only. A UDP connection carries one
// datagram per Read and Write. vmm.Manager.DialPort is one.
type Dialer func(ctx context.Context, key vmm.Key, proto string, port int) (net.Conn, error)

// Forward is one forward of a VM: what arrives at a host address and port
// goes to a port of its guest.
type Forward struct {
	// Proto is TCP or UDP.
	Proto string `json:"protocol"`
	// HostAddr is the address listened on; DefaultAddress when invalid
	// (unset) in an Add.
	HostAddr  netip.Addr `json:"host_address"`
	HostPort  int        `json:"host_port"`
	GuestPort int        `json:"guest_port"`
}

// Host is the address and port the forward listens on.
func (f Forward) Host() netip.AddrPort {
	return netip.AddrPortFrom(f.HostAddr, uint16(f.HostPort))
}

// String names the forward by what identifies it: its protocol, host
// address and host port ("tcp 127.0.0.1:8080").
func (f Forward) String() string {
	return f.Proto + " " + net.JoinHostPort(f.HostAddr.String(), strconv.Itoa(f.HostPort))
}

// same tells whether f and g are the same forward: the same host end.
func (f Forward) same(g Forward) bool {
	return f.Proto == g.Proto && f.HostAddr == g.HostAddr && f.HostPort == g.HostPort
}

// normal is f with its defaults filled in and its address in one form
// (an IPv4 address, not its IPv4-mapped IPv6 form).
func (f Forward) normal() Forward {
	if f.Proto == "" {
		f.Proto = TCP
	}
	if !f.HostAddr.IsValid() {
		f.HostAddr = DefaultAddress
	}
	f.HostAddr = f.HostAddr.Unmap()
	return f
}

// Validate checks a forward whose defaults are filled in: errors name the
// API's fields.
func (f Forward) Validate() error {
	if f.Proto != TCP && f.Proto != UDP {
		return errdefs.InvalidArgument("protocol", fmt.Sprintf("%q is neither tcp nor udp", f.Proto))
	}
	if !f.HostAddr.IsValid() {
		return errdefs.InvalidArgument("host_address", "must be an IP address")
	}
	if err := validPort("host_port", f.HostPort); err != nil {
		return err
	}
	return validPort("guest_port", f.GuestPort)
}

func validPort(field string, port int) error {
	if port < 1 || port > 65535 {
		return errdefs.InvalidArgument(field, fmt.Sprintf("%d is not a port: must be 1 to 65535", port))
	}
	return nil
}

// Check returns f with its defaults filled in once it is a forward by may
// ask for: valid, and with a host port by may take.
func (f Forward) Check(by *caller.Caller) (Forward, error) {
	f = f.normal()
	if err := f.Validate(); err != nil {
		return Forward{}, err
	}
	if err := f.permitted(by); err != nil {
		return Forward{}, err
	}
	return f, nil
}

// permitted refuses by a host port below FirstUnprivileged unless it is
// root (or cabind itself).
func (f Forward) permitted(by *caller.Caller) error {
	if f.HostPort < FirstUnprivileged && !by.Trusted() {
		return errdefs.Errorf(errdefs.ErrPermissionDenied,
			"host_port %d: permission denied: ports below %d are root's to forward", f.HostPort, FirstUnprivileged)
	}
	return nil
}

// listenError puts a failure to listen for f in its category, saying
// what is wrong in the caller's terms.
func listenError(f Forward, err error) error {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return errdefs.Errorf(errdefs.ErrFailedPrecondition,
			"forward %s: host port %d is in use (%s): %w", f, f.HostPort, f.Proto, err)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return errdefs.InvalidArgument("host_address", fmt.Sprintf("%s is not an address of this host", f.HostAddr))
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return errdefs.Errorf(errdefs.ErrPermissionDenied, "forward %s: cabind may not listen there: %w", f, err)
	}
	return fmt.Errorf("forward %s: listen: %w", f, err)
}
