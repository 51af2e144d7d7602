package network

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"

	"github.com/vishvananda/netlink"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// tapPrefix starts the name of every tap cabind makes; the NAT rules
// match it.
const tapPrefix = "cbn"

// tapName names the tap of the VM whose directory's id is id: "cbn" and
// the id's first 12 hex digits, 15 characters, the most an interface's
// name may have. Like the id, it is derived from the VM's owner and name,
// so a VM keeps its tap's name across restarts.
func tapName(id string) string { return tapPrefix + id[:12] }

var tapNameForm = regexp.MustCompile(`^` + tapPrefix + `[0-9a-f]{12}$`)

// isTapName tells whether name is of the form of cabind's taps' names.
func isTapName(name string) bool { return tapNameForm.MatchString(name) }

// idForm is a VM directory's id (statedir.VMID): 16 hex digits.
var idForm = regexp.MustCompile(`^[0-9a-f]{16}$`)

func validID(id string) bool { return idForm.MatchString(id) }

// macOf is the MAC of the guest side of the VM whose directory's id is
// id: 02 (unicast, locally administered) and the id's first ten hex
// digits, which its tap's name starts with too. Each tap is a segment of
// its own, so MACs need only differ within a VM.
func macOf(id string) net.HardwareAddr {
	b, _ := hex.DecodeString(id[:10]) // a valid id is hex
	return append(net.HardwareAddr{0x02}, b...)
}

// makeTap makes the persistent tap name, holding addr (the host's end of
// a VM's subnet), and brings it up. A tap of that name already there,
// left by an earlier run of the same VM whose cabind went away before
// releasing it, is made anew; an interface of that name that is no tap,
// or whose address is another VM's (mine says whose subnets are whose),
// is left alone and refused.
func makeTap(name string, addr netip.Prefix, mine func(netip.Prefix) bool) error {
	if l, err := netlink.LinkByName(name); err == nil {
		if _, ok := l.(*netlink.Tuntap); !ok {
			return errdefs.Errorf(errdefs.ErrAlreadyExists, "interface %s exists and is no tap of cabind's", name)
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("tap %s: %w", name, err)
		}
		for _, a := range addrs {
			if p, ok := prefixOf(a.IPNet); ok && !mine(p.Masked()) {
				return errdefs.Errorf(errdefs.ErrAlreadyExists, "tap %s exists, holding %s, another VM's address", name, p)
			}
		}
		if err := netlink.LinkDel(l); err != nil {
			return fmt.Errorf("remove the stale tap %s: %w", name, err)
		}
	} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
		return fmt.Errorf("tap %s: %w", name, err)
	}
	tap := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: name},
		Mode:      netlink.TUNTAP_MODE_TAP,
		// What QEMU attaches with: one queue, no packet information,
		// virtio-net headers.
		Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
	}
	if err := netlink.LinkAdd(tap); err != nil {
		return fmt.Errorf("make tap %s: %w", name, err)
	}
	if err := configureTap(name, addr); err != nil {
		deleteTap(name)
		return err
	}
	return nil
}

// configureTap gives the tap name addr, unless it has it, and brings it
// up: all a tap needs besides being there.
func configureTap(name string, addr netip.Prefix) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("tap %s: %w", name, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}}
	if err := netlink.AddrReplace(l, a); err != nil {
		return fmt.Errorf("tap %s: address %s: %w", name, addr, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("tap %s: up: %w", name, err)
	}
	return nil
}

// tapExists tells whether the tap name is there.
func tapExists(name string) (bool, error) {
	_, err := netlink.LinkByName(name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return false, nil
	}
	return err == nil, err
}

// deleteTap removes the tap name; one that is gone already is no error.
func deleteTap(name string) error {
	l, err := netlink.LinkByName(name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil
	}
	if err == nil {
		err = netlink.LinkDel(l)
	}
	if err != nil {
		return fmt.Errorf("remove tap %s: %w", name, err)
	}
	return nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a.Unmap(), ones), true
}
