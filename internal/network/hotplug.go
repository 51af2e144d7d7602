package network

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/vmm"
)

// The taps of NICs plugged into running VMs (vmm.HotplugTaps).
//
// A hot-plugged NIC is a link between the guest and a tap of the host,
// nothing more: its tap gets no address from the pool and no NAT (its
// name is not of the form the NAT rules match). Upstream's concierge
// does the same: it plugs in a tap that patchpanel made and addressed,
// and the guest's side is configured by whoever asked for it. The pool's
// /30s (ten by default) stay one per VM, for its first NIC.

var _ vmm.HotplugTaps = (*Resource)(nil)

// hotplugTapPrefix starts the names of the taps cabind makes for
// hot-plugged NICs: "cbh", 10 hex digits of the VM's id and the slot in
// two, 15 characters.
const hotplugTapPrefix = "cbh"

var hotplugTapForm = regexp.MustCompile(`^` + hotplugTapPrefix + `[0-9a-f]{12}$`)

func hotplugTapName(id string, slot int) string {
	return fmt.Sprintf("%s%s%02x", hotplugTapPrefix, id[:10], slot)
}

// MakeHotplugTap makes the tap of vm's hot-plugged NIC in slot: up, with
// no address. A tap of that name left by an earlier run of the VM is
// made anew; an interface of that name that is no tap is refused.
func (r *Resource) MakeHotplugTap(vm resource.VM, slot int) (string, error) {
	if r.noTaps != "" {
		return "", errdefs.Errorf(errdefs.ErrFailedPrecondition, "a tap for a hot-plugged NIC: %s", r.noTaps)
	}
	if slot < 0 || slot > 0xff {
		return "", errdefs.InvalidArgument("slot", fmt.Sprintf("%d is not 0 to 255", slot))
	}
	id, err := vmID(vm)
	if err != nil {
		return "", err
	}
	name := hotplugTapName(id, slot)
	if l, err := netlink.LinkByName(name); err == nil {
		if _, ok := l.(*netlink.Tuntap); !ok {
			return "", errdefs.Errorf(errdefs.ErrAlreadyExists, "interface %s exists and is no tap of cabind's", name)
		}
		if err := netlink.LinkDel(l); err != nil {
			return "", fmt.Errorf("remove the stale tap %s: %w", name, err)
		}
	} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
		return "", fmt.Errorf("tap %s: %w", name, err)
	}
	tap := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: name},
		Mode:      netlink.TUNTAP_MODE_TAP,
		Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
	}
	if err := netlink.LinkAdd(tap); err != nil {
		return "", fmt.Errorf("make tap %s: %w", name, err)
	}
	if err := netlink.LinkSetUp(tap); err != nil {
		deleteTap(name)
		return "", fmt.Errorf("tap %s: up: %w", name, err)
	}
	vm.Log.Info("tap for a hot-plugged nic", "tap", name, "slot", slot)
	return name, nil
}

// RemoveHotplugTap removes a tap MakeHotplugTap made. It touches nothing
// else: a name not of that form is refused.
func (r *Resource) RemoveHotplugTap(name string) error {
	if !hotplugTapForm.MatchString(name) {
		return fmt.Errorf("%q is not a hot-plugged nic's tap: %w", name, errdefs.ErrInternal)
	}
	return deleteTap(name)
}

// CheckTap accepts the existing tap name for a NIC a caller plugs into
// its VM: it must be a tap, not one cabind made for a VM, and, for a
// caller other than root, one its owner set to the caller's uid (the
// kernel lets that user attach to it without privilege; cabind, which
// could attach to any, does no more for it).
func (r *Resource) CheckTap(name string, c *caller.Caller) error {
	if isTapName(name) || strings.HasPrefix(name, hotplugTapPrefix) {
		return errdefs.Errorf(errdefs.ErrPermissionDenied, "tap_name: %q is cabind's own tap of a VM", name)
	}
	l, err := netlink.LinkByName(name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return errdefs.Errorf(errdefs.ErrNotFound, "tap_name: no interface %q on the host", name)
	}
	if err != nil {
		return fmt.Errorf("tap %s: %w", name, err)
	}
	t, ok := l.(*netlink.Tuntap)
	if !ok || t.Mode != netlink.TUNTAP_MODE_TAP {
		return errdefs.InvalidArgument("tap_name", fmt.Sprintf("%q is not a tap", name))
	}
	if !c.Trusted() && t.Owner != c.UID {
		return errdefs.Errorf(errdefs.ErrPermissionDenied, "tap_name: %q is not a tap of the caller's (its owner must be uid %d)", name, c.UID)
	}
	return nil
}
