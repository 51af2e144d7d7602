package network

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// tapsUnavailable says why cabind cannot make taps here, or "" when it
// can: that takes CAP_NET_ADMIN (root has it) and /dev/net/tun.
func tapsUnavailable() string {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Sprintf("cannot read cabind's capabilities: %v", err)
	}
	if data[0].Effective&(1<<unix.CAP_NET_ADMIN) == 0 {
		return "cabind lacks CAP_NET_ADMIN (run it as root)"
	}
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return fmt.Sprintf("cannot open /dev/net/tun: %v", err)
	}
	f.Close()
	return ""
}

// ipForward is the sysctl that routes IPv4 between interfaces, for the
// network namespace of whoever opens it.
const ipForward = "/proc/sys/net/ipv4/ip_forward"

// enableForwarding turns IPv4 forwarding on, which VMs' traffic through
// the host needs, and says so when it was off.
func enableForwarding(log *slog.Logger) error {
	b, err := os.ReadFile(ipForward)
	if err != nil {
		return fmt.Errorf("ipv4 forwarding: %w", err)
	}
	was := string(bytes.TrimSpace(b))
	if was == "1" {
		return nil
	}
	if err := os.WriteFile(ipForward, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("turn ipv4 forwarding on: %w", err)
	}
	log.Info("turned IPv4 forwarding on, for VMs' traffic through the host", "sysctl", "net.ipv4.ip_forward", "was", was)
	return nil
}

// checkRoutes refuses a pool that overlaps a route of the host, in any
// routing table: VMs' addresses would then be ambiguous. Default routes
// overlap everything and do not count, nor do the routes of cabind's own
// taps, which an earlier cabind made from the same pool.
func checkRoutes(pool Pool) error {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list the host's routes: %w", err)
	}
	names := map[int]string{}
	linkName := func(index int) string {
		if n, ok := names[index]; ok {
			return n
		}
		n := ""
		if l, err := netlink.LinkByIndex(index); err == nil {
			n = l.Attrs().Name
		}
		names[index] = n
		return n
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		dst, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok || ones == 0 {
			continue
		}
		prefix := netip.PrefixFrom(dst.Unmap(), ones)
		if !pool.Overlaps(prefix) {
			continue
		}
		dev := linkName(r.LinkIndex)
		if isTapName(dev) {
			continue
		}
		return fmt.Errorf("the pool %s overlaps the host's route %s: give cabind's --net-pool one no route of the host covers",
			pool, describeRoute(r, prefix, dev))
	}
	return nil
}

// describeRoute says what ip route would of a route.
func describeRoute(r netlink.Route, dst netip.Prefix, dev string) string {
	s := dst.String()
	if r.Gw != nil {
		s += " via " + r.Gw.String()
	}
	if dev != "" {
		s += " dev " + dev
	}
	switch r.Table {
	case unix.RT_TABLE_MAIN:
	case unix.RT_TABLE_LOCAL:
		s += " table local"
	default:
		s += " table " + strconv.Itoa(r.Table)
	}
	return "\"" + s + "\""
}
