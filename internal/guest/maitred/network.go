package maitred

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math/bits"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/guest/netconf"
)

// NetworkConfig is what ConfigureNetwork sets: the VM's IPv4 address,
// netmask and gateway, and its resolver (nil leaves resolv.conf).
type NetworkConfig struct {
	Address, Netmask, Gateway netip.Addr
	Resolv                    *ResolvConfig
}

// ConfigureNetwork configures the VM's card (eth0, its first virtio-net
// link) and lo, turns forwarding on, records the gateway, the host's
// address, in /run/host_ip (as upstream, for LXD's containers and
// garcon), and writes resolv.conf. Everything
// is checked before anything changes: a zero address, netmask or gateway,
// a netmask that is not contiguous, a gateway outside the subnet, a bad
// nameserver are InvalidArgument. A VM without a card is
// FailedPrecondition.
func (m *Maitred) ConfigureNetwork(ctx context.Context, c NetworkConfig) error {
	for _, f := range []struct {
		name string
		addr netip.Addr
	}{{"address", c.Address}, {"netmask", c.Netmask}, {"gateway", c.Gateway}} {
		if !f.addr.Is4() || f.addr.IsUnspecified() {
			return errdefs.InvalidArgument("ipv4_config."+f.name, fmt.Sprintf("%v: must be set, and not 0.0.0.0", f.addr))
		}
	}
	ones, ok := maskBits(c.Netmask)
	if !ok {
		return errdefs.InvalidArgument("ipv4_config.netmask", fmt.Sprintf("%v is not a contiguous netmask", c.Netmask))
	}
	u := netconf.Uplink{Address: netip.PrefixFrom(c.Address, ones), Gateway: c.Gateway}
	if err := u.Check(); err != nil {
		return fmt.Errorf("ipv4_config.%w", err)
	}
	var resolv string
	if c.Resolv != nil {
		var err error
		if resolv, err = c.Resolv.render(); err != nil {
			return err
		}
	}
	if m.cfg.Net == nil {
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "this agent configures no network")
	}
	if err := m.cfg.Net.ConfigureUplink(ctx, u); err != nil {
		return err
	}
	if err := m.recordHostIP(c.Gateway); err != nil {
		return err
	}
	if c.Resolv != nil {
		return m.writeResolvConf(resolv)
	}
	return nil
}

// maskBits returns the length of a contiguous netmask.
func maskBits(mask netip.Addr) (int, bool) {
	b := mask.As4()
	v := binary.BigEndian.Uint32(b[:])
	ones := bits.LeadingZeros32(^v)
	return ones, v == ^uint32(0)<<(32-ones)
}

// HostNetworkChanged is what upstream maitred does when the host's network
// changed (OnHostNetworkChanged, and the older ResetIPv6): the card
// renegotiates IPv6 (SLAAC), and dnsmasq, if any runs, is told to drop
// its cache (SIGHUP).
func (m *Maitred) HostNetworkChanged(ctx context.Context) error {
	if m.cfg.Net == nil {
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "this agent configures no network")
	}
	if err := m.cfg.Net.ResetIPv6(ctx); err != nil {
		return err
	}
	for _, pid := range m.processesNamed("dnsmasq") {
		if err := syscall.Kill(pid, syscall.SIGHUP); err != nil && !errors.Is(err, syscall.ESRCH) {
			m.log.Warn("flush dnsmasq's cache", "pid", pid, "err", err)
		}
	}
	return nil
}

// processesNamed lists the processes whose command name is name.
func (m *Maitred) processesNamed(name string) []int {
	entries, err := os.ReadDir(m.cfg.Proc)
	if err != nil {
		m.log.Warn("list processes", "err", err)
		return nil
	}
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		comm, err := os.ReadFile(filepath.Join(m.cfg.Proc, e.Name(), "comm"))
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				m.log.Debug("read comm", "pid", pid, "err", err)
			}
			continue
		}
		if strings.TrimSuffix(string(comm), "\n") == name {
			out = append(out, pid)
		}
	}
	return out
}
