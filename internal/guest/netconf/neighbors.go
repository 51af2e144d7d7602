package netconf

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Neighbor is an entry of a link's neighbour (ARP or NDP) table (Kata's
// ARPNeighbor).
type Neighbor struct {
	IP           netip.Addr
	Device       string
	HardwareAddr net.HardwareAddr // may be empty
	// State is NUD_*; 0 means permanent, as Kata's agent takes it.
	State int
	Flags int // NTF_*
}

// AddNeighbors adds each neighbour, replacing an entry for the same
// address and link. All are checked, and their links found, before any
// is added.
func (n *Net) AddNeighbors(ctx context.Context, neighbors []Neighbor) error {
	for i, nb := range neighbors {
		f := fmt.Sprintf("neighbors[%d]", i)
		if !nb.IP.IsValid() {
			return errdefs.InvalidArgument(f+".toIPAddress", "must be set")
		}
		if nb.Device == "" {
			return errdefs.InvalidArgument(f+".device", "must be set")
		}
		if nb.State < 0 || nb.State > 0xffff {
			return errdefs.InvalidArgument(f+".state", fmt.Sprintf("%d is not a NUD state", nb.State))
		}
		if nb.Flags < 0 || nb.Flags > 0xff {
			return errdefs.InvalidArgument(f+".flags", fmt.Sprintf("%d is not a set of NTF flags", nb.Flags))
		}
	}
	return n.do(func() error {
		var entries []netlink.Neigh
		for i, nb := range neighbors {
			l, err := linkByName(fmt.Sprintf("neighbors[%d].device", i), nb.Device)
			if err != nil {
				return err
			}
			family := netlink.FAMILY_V4
			if nb.IP.Is6() {
				family = netlink.FAMILY_V6
			}
			state := nb.State
			if state == 0 {
				state = netlink.NUD_PERMANENT
			}
			entries = append(entries, netlink.Neigh{
				LinkIndex:    l.Attrs().Index,
				Family:       family,
				State:        state,
				Flags:        nb.Flags,
				IP:           net.IP(nb.IP.AsSlice()),
				HardwareAddr: nb.HardwareAddr,
			})
		}
		for i := range entries {
			if err := netlink.NeighSet(&entries[i]); err != nil {
				return fmt.Errorf("neighbors[%d]: %v on %s: %w", i, neighbors[i].IP, neighbors[i].Device, err)
			}
		}
		return nil
	})
}
