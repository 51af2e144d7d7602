package vmm

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"reflect"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/resource"
)

// DialPort connects to port ("tcp" or "udp") of the guest of the VM key,
// as net.Dial would: ctx bounds the dial, not the connection. A VM with a
// network the host is on (a tap: see hostReaches) is reached at its
// address, as any host on that network would reach it; any other, with
// QEMU's user-mode network or none, through its agent over the channel,
// which connects to the port on the guest's 127.0.0.1 (Guest.DialPort). A
// UDP connection carries one datagram per Read and Write either way.
func (m *Manager) DialPort(ctx context.Context, key Key, proto string, port int) (net.Conn, error) {
	if proto != "tcp" && proto != "udp" {
		return nil, errdefs.InvalidArgument("protocol", fmt.Sprintf("%q is neither tcp nor udp", proto))
	}
	if port < 1 || port > 65535 {
		return nil, errdefs.InvalidArgument("port", fmt.Sprintf("%d is not 1 to 65535", port))
	}
	v, err := m.present(ctx, key)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	res, guest, state, problem := v.res, v.guest, v.state, v.problem
	v.mu.Unlock()
	if n, ok := resource.Find[Networked](res); ok && hostReaches(n.GuestNetwork()) {
		addr := netip.AddrPortFrom(n.GuestNetwork().Address.Addr(), uint16(port))
		var d net.Dialer
		c, err := d.DialContext(ctx, proto, addr.String())
		if err != nil {
			return nil, errdefs.Errorf(errdefs.ErrUnavailable, "vm %s: %w", key, err)
		}
		return c, nil
	}
	if guest == nil {
		if state == StateUnreachable {
			return nil, fmt.Errorf("vm %s is unreachable: %s: %w", key, problem, errdefs.ErrUnavailable)
		}
		return nil, errdefs.Errorf(errdefs.ErrNotFound, "vm %s has stopped", key)
	}
	return guest.DialPort(ctx, proto, port)
}

// hostReaches tells whether the host reaches a guest at its address: when
// the host's route to it leaves from the guest's gateway, which the host
// then holds, on the link it shares with the guest (a tap). The guest of
// QEMU's user-mode network has an address too, but its gateway is slirp's,
// not the host's, and the host's route to that address leads elsewhere. A
// connected UDP socket costs a route lookup and sends nothing.
func hostReaches(n GuestNetwork) bool {
	if !n.Address.IsValid() || !n.Gateway.IsValid() {
		return false
	}
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(n.Address.Addr(), 9)))
	if err != nil {
		return false
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap() == n.Gateway.Unmap()
}

// Hold returns the hold of the VM key that is a T: what a resource kind
// offers its VMs at run time beyond a Hold (the forwards of a VM that
// take new ones). It waits (until ctx ends, and for a VM being taken back
// at most its first attempt) for a VM being launched or adopted.
// ErrNotFound for a VM that is not there or has stopped; ErrUnavailable
// for one unreachable before its holds were taken back;
// ErrFailedPrecondition for one without such a hold.
func Hold[T any](ctx context.Context, m *Manager, key Key) (T, error) {
	var zero T
	v, err := m.present(ctx, key)
	if err != nil {
		return zero, err
	}
	v.mu.Lock()
	res, state, problem := v.res, v.state, v.problem
	v.mu.Unlock()
	h, ok := resource.Find[T](res)
	switch {
	case !ok && res == nil && state == StateUnreachable:
		// What it holds is taken back once its process is found.
		return zero, fmt.Errorf("vm %s is unreachable: %s: %w", key, problem, errdefs.ErrUnavailable)
	case !ok:
		return zero, fmt.Errorf("vm %s holds no %s: %w", key, reflect.TypeFor[T](), errdefs.ErrFailedPrecondition)
	}
	return h, nil
}

// present is the VM key once its launch or adoption has had its first
// go: ErrNotFound when there is no such VM, its launch failed, or it has
// stopped.
func (m *Manager) present(ctx context.Context, key Key) (*vm, error) {
	v := m.lookup(key)
	if v == nil {
		return nil, errNoVM(key)
	}
	if err := m.adoption(ctx, v); err != nil {
		return nil, err
	}
	if v.launchErr != nil {
		return nil, errNoVM(key)
	}
	if v.is(StateStopped) {
		return nil, errdefs.Errorf(errdefs.ErrNotFound, "vm %s has stopped", key)
	}
	return v, nil
}
