package netconf

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Interface is a link with its addresses (Kata's Interface).
type Interface struct {
	Name string
	// HardwareAddr identifies the link to UpdateInterface.
	HardwareAddr net.HardwareAddr
	// Addrs are its addresses with their prefix lengths.
	Addrs []netip.Prefix
	// MTU is 0 in an update to leave it.
	MTU int
	// Type is the link's kind ("veth", "device", ...); listed only.
	Type string
	// Flags are the link's IFF_* flags. An update reads IFF_NOARP
	// from them: set, the link answers no ARP.
	Flags uint32
}

// ListInterfaces lists the namespace's links and their addresses, by
// index.
func (n *Net) ListInterfaces(ctx context.Context) ([]Interface, error) {
	var out []Interface
	err := n.do(func() error {
		links, err := listLinks()
		if err != nil {
			return err
		}
		for _, l := range links {
			i, err := describe(l)
			if err != nil {
				return err
			}
			out = append(out, i)
		}
		return nil
	})
	return out, err
}

// describe reads a link's Interface. Called in the namespace.
func describe(l netlink.Link) (Interface, error) {
	a := l.Attrs()
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return Interface{}, fmt.Errorf("addresses of %s: %w", a.Name, err)
	}
	i := Interface{Name: a.Name, HardwareAddr: a.HardwareAddr, MTU: a.MTU, Type: l.Type(), Flags: a.RawFlags}
	for _, addr := range addrs {
		if p, ok := prefixOf(addr.IPNet); ok {
			i.Addrs = append(i.Addrs, p)
		}
	}
	return i, nil
}

// maxLinkName is IFNAMSIZ less its NUL.
const maxLinkName = 15

// checkLinkName refuses what the kernel would, with the reason.
func checkLinkName(field, name string) error {
	if name == "" || len(name) > maxLinkName || name == "." || name == ".." ||
		strings.ContainsAny(name, "/: \t\n\x00") {
		return errdefs.InvalidArgument(field, fmt.Sprintf("%q is not a link name (1-%d bytes, no '/', ':' or space)", name, maxLinkName))
	}
	return nil
}

// UpdateInterface finds the link whose MAC address is want's and gives it
// want's addresses (its only ones), MTU (unless 0), name (unless empty)
// and ARP setting, and brings it up, as Kata's agent does. Everything is
// checked before anything changes: a MAC no link has is NotFound, a name
// another link has AlreadyExists. If the kernel refuses a change, what
// was done is undone as far as it can be. It returns the link as it is
// after.
func (n *Net) UpdateInterface(ctx context.Context, want Interface) (Interface, error) {
	if len(want.HardwareAddr) == 0 {
		return Interface{}, errdefs.InvalidArgument("hwAddr", "must be set: it finds the link")
	}
	if want.Name != "" {
		if err := checkLinkName("name", want.Name); err != nil {
			return Interface{}, err
		}
	}
	if want.MTU != 0 && (want.MTU < minMTU || want.MTU > maxMTU) {
		return Interface{}, errdefs.InvalidArgument("mtu", fmt.Sprintf("%d is outside [%d, %d]", want.MTU, minMTU, maxMTU))
	}
	var out Interface
	err := n.do(func() error {
		l, err := linkByMAC(want.HardwareAddr)
		if err != nil {
			return err
		}
		if want.Name != "" && want.Name != l.Attrs().Name {
			if other, err := netlink.LinkByName(want.Name); err == nil {
				return errdefs.Errorf(errdefs.ErrAlreadyExists, "name: link %d is already called %q", other.Attrs().Index, want.Name)
			}
		}
		before, err := describe(l)
		if err != nil {
			return err
		}
		if err := applyInterface(l, want); err != nil {
			if uerr := undoInterface(l.Attrs().Index, before, l.Attrs().Flags&net.FlagUp != 0); uerr != nil {
				err = fmt.Errorf("%w (and undoing it: %v)", err, uerr)
			}
			return err
		}
		l, err = netlink.LinkByIndex(l.Attrs().Index)
		if err != nil {
			return err
		}
		out, err = describe(l)
		return err
	})
	return out, err
}

// The MTUs UpdateInterface takes: IPv4's least and the kernel's largest.
const (
	minMTU = 68
	maxMTU = 65535
)

// linkByMAC finds the first link, by index, with the MAC address mac.
func linkByMAC(mac net.HardwareAddr) (netlink.Link, error) {
	links, err := listLinks()
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		if strings.EqualFold(l.Attrs().HardwareAddr.String(), mac.String()) {
			return l, nil
		}
	}
	return nil, errdefs.Errorf(errdefs.ErrNotFound, "hwAddr: no link has the MAC address %s", mac)
}

// applyInterface makes l what want says. The link goes down first: a
// link is renamed only while down.
func applyInterface(l netlink.Link, want Interface) error {
	a := l.Attrs()
	if err := netlink.LinkSetDown(l); err != nil {
		return fmt.Errorf("%s down: %w", a.Name, err)
	}
	if want.MTU != 0 && want.MTU != a.MTU {
		if err := netlink.LinkSetMTU(l, want.MTU); err != nil {
			return fmt.Errorf("%s mtu %d: %w", a.Name, want.MTU, err)
		}
	}
	if want.Name != "" && want.Name != a.Name {
		if err := netlink.LinkSetName(l, want.Name); err != nil {
			return fmt.Errorf("rename %s to %s: %w", a.Name, want.Name, err)
		}
	}
	if err := setAddrs(l, want.Addrs); err != nil {
		return err
	}
	arp := netlink.LinkSetARPOn
	if want.Flags&iffNoARP != 0 {
		arp = netlink.LinkSetARPOff
	}
	if err := arp(l); err != nil {
		return fmt.Errorf("%s arp: %w", a.Name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("%s up: %w", a.Name, err)
	}
	return nil
}

// iffNoARP is IFF_NOARP.
const iffNoARP = 0x80

// undoInterface puts the link at index back as before was, best effort.
func undoInterface(index int, before Interface, wasUp bool) error {
	l, err := netlink.LinkByIndex(index)
	if err != nil {
		return err
	}
	var errs []error
	if l.Attrs().Name != before.Name {
		errs = append(errs, netlink.LinkSetName(l, before.Name))
	}
	if l.Attrs().MTU != before.MTU {
		errs = append(errs, netlink.LinkSetMTU(l, before.MTU))
	}
	errs = append(errs, setAddrs(l, before.Addrs))
	if before.Flags&iffNoARP != 0 {
		errs = append(errs, netlink.LinkSetARPOff(l))
	} else {
		errs = append(errs, netlink.LinkSetARPOn(l))
	}
	if wasUp {
		errs = append(errs, netlink.LinkSetUp(l))
	}
	return errors.Join(errs...)
}

// setAddrs makes want the link's only addresses, leaving IPv6 link-local
// ones, which the kernel gives every link, unless want names them.
func setAddrs(l netlink.Link, want []netip.Prefix) error {
	have, err := retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("addresses of %s: %w", l.Attrs().Name, err)
	}
	keep := map[netip.Prefix]bool{}
	for _, p := range want {
		keep[p] = true
	}
	for _, a := range have {
		p, ok := prefixOf(a.IPNet)
		if !ok || keep[p] || p.Addr().IsLinkLocalUnicast() && p.Addr().Is6() {
			continue
		}
		if err := netlink.AddrDel(l, &a); err != nil {
			return fmt.Errorf("remove %v from %s: %w", p, l.Attrs().Name, err)
		}
	}
	for _, p := range want {
		if err := netlink.AddrReplace(l, &netlink.Addr{IPNet: ipNet(p)}); err != nil {
			return fmt.Errorf("add %v to %s: %w", p, l.Attrs().Name, err)
		}
	}
	return nil
}

// prefixOf converts a netlink address; false for none.
func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, bits := n.Mask.Size()
	if bits == 0 || bits != a.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}

// ipNet converts a prefix for netlink, keeping the address's host bits.
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// exists tells whether a file exists.
func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}
