// Package network gives each VM its network, as a per-VM resource
// (resource.Kind), in the mode its start asked for or the daemon's default:
//
//   - tap: a persistent tap of its own on the host holding the gateway
//     (+1) of a /30 from the pool, the guest taking +2, routed, and NATed
//     out of the pool by a nftables table of cabind's own;
//   - user: QEMU's user-mode network (slirp): outbound only, no privilege;
//   - none: loopback only.
//
// Taps, addresses and the NAT table outlive cabind, as its VMs do: a
// restarted cabind takes them back from each VM's record (Adopt) and from
// the allocator's file, and releases them when the VM is gone.
package network

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sync"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/vmm"
)

// ModeAuto is the daemon's default mode that picks tap where cabind may
// make taps, else user.
const ModeAuto = "auto"

// Options configure the network of a cabind's VMs.
type Options struct {
	// Mode is the network of VMs that ask for none: ModeAuto (or
	// empty), vmm.NetworkTap, vmm.NetworkUser or vmm.NetworkNone.
	Mode string
	// Pool is where taps take their subnets from; DefaultPool when zero.
	Pool Pool
	// Allocations is the allocator's file
	// (statedir.Root.NetworkAllocations), in a directory of cabind's.
	Allocations string
	Log         *slog.Logger
}

// Resource is the network as a per-VM resource.
type Resource struct {
	// mode is the network of VMs that ask for none: tap, user or none.
	mode string
	// noTaps says why cabind cannot make taps here; "" when it can.
	noTaps string
	pool   Pool
	alloc  *allocator
	log    *slog.Logger

	mu sync.Mutex
	// hostReady is set once the NAT table is made and forwarding is on.
	hostReady bool
}

var _ resource.Kind = (*Resource)(nil)

// New sets up the network for a cabind: it picks the default mode, reads
// the allocator's file, checks the pool against the host's routes where
// cabind may make taps, and, when taps are the default, makes the NAT
// table and turns forwarding on. A pool that overlaps a route of the host
// is refused, as is a default of tap where cabind may not make taps or
// set up their NAT; auto then picks user, saying why.
func New(opts Options) (*Resource, error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pool := opts.Pool
	if pool == (Pool{}) {
		pool = DefaultPool
	}
	if err := pool.check(); err != nil {
		return nil, fmt.Errorf("pool %s: %w", pool, err)
	}
	r := &Resource{pool: pool, noTaps: tapsUnavailable(), log: log}
	mode, err := defaultMode(opts.Mode, r.noTaps)
	if err != nil {
		return nil, err
	}
	if auto(opts.Mode) && mode == vmm.NetworkUser {
		log.Info("VMs get QEMU's user-mode network by default (outbound only): cabind cannot make taps", "reason", r.noTaps)
	}
	r.mode = mode
	alloc, err := openAllocator(pool, opts.Allocations)
	if err != nil {
		return nil, err
	}
	r.alloc = alloc
	if r.noTaps == "" {
		if err := checkRoutes(pool); err != nil {
			return nil, errdefs.Errorf(errdefs.ErrFailedPrecondition, "%w", err)
		}
	}
	if r.mode == vmm.NetworkTap {
		if err := r.prepareHost(); err != nil {
			if !auto(opts.Mode) {
				return nil, err
			}
			// What auto picks must work: without NAT a tap would
			// reach the host alone.
			r.noTaps = "cannot set up NAT for taps: " + err.Error()
			r.mode = vmm.NetworkUser
			log.Warn("VMs get QEMU's user-mode network by default (outbound only)", "reason", r.noTaps)
		}
	}
	log.Info("network", "default", r.mode, "pool", pool, "subnets", pool.Size())
	return r, nil
}

// auto tells whether setting (Options.Mode) leaves the default to cabind.
func auto(setting string) bool { return setting == ModeAuto || setting == "" }

// defaultMode is the network of VMs that ask for none, as setting
// (Options.Mode) says where noTaps says why taps cannot be made ("" when
// they can): auto is tap where taps can be made, else user.
func defaultMode(setting, noTaps string) (string, error) {
	switch {
	case auto(setting):
		if noTaps != "" {
			return vmm.NetworkUser, nil
		}
		return vmm.NetworkTap, nil
	case setting == vmm.NetworkTap:
		if noTaps != "" {
			return "", errdefs.Errorf(errdefs.ErrFailedPrecondition, "--net=tap: %s", noTaps)
		}
		return setting, nil
	case setting == vmm.NetworkUser, setting == vmm.NetworkNone:
		return setting, nil
	}
	return "", errdefs.InvalidArgument("net", fmt.Sprintf("%q: want auto, tap, user or none", setting))
}

// Mode is the network of VMs that ask for none: tap, user or none.
func (r *Resource) Mode() string { return r.mode }

// Name is "network".
func (*Resource) Name() string { return "network" }

// prepareHost makes the NAT table and turns forwarding on, once: at
// start when taps are the default, else for the first VM with a tap.
func (r *Resource) prepareHost() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hostReady {
		return nil
	}
	if err := applyNAT(r.pool); err != nil {
		return err
	}
	if err := enableForwarding(r.log); err != nil {
		return err
	}
	r.log.Info("NAT for VMs' taps", "table", "ip "+TableName, "pool", r.pool)
	r.hostReady = true
	return nil
}

// Prepare gives vm the network it asked for, or the default: a NIC on a
// tap of its own, holding the gateway of a subnet of the pool; a NIC on
// the user-mode network; or none.
func (r *Resource) Prepare(_ context.Context, vm resource.VM, cfg *hypervisor.Config) (resource.Hold, error) {
	mode := vm.Network
	if mode == "" {
		mode = r.mode
	}
	switch mode {
	case vmm.NetworkNone:
		return noneHold{}, nil
	case vmm.NetworkUser:
		id, err := vmID(vm)
		if err != nil {
			return nil, err
		}
		h := userHold{mac: macOf(id)}
		cfg.NICs = append(cfg.NICs, hypervisor.NIC{MAC: h.mac})
		return h, nil
	case vmm.NetworkTap:
		return r.prepareTap(vm, cfg)
	}
	return nil, errdefs.InvalidArgument("network", fmt.Sprintf("%q: want tap, user or none", mode))
}

func (r *Resource) prepareTap(vm resource.VM, cfg *hypervisor.Config) (resource.Hold, error) {
	if r.noTaps != "" {
		return nil, errdefs.Errorf(errdefs.ErrFailedPrecondition,
			"a tap network: %s (the user-mode network needs no privilege)", r.noTaps)
	}
	id, err := vmID(vm)
	if err != nil {
		return nil, err
	}
	if err := r.prepareHost(); err != nil {
		return nil, err
	}
	subnet, err := r.alloc.allocate(id)
	if err != nil {
		return nil, err
	}
	h := &tapHold{r: r, id: id, tap: tapName(id), subnet: subnet, mac: macOf(id)}
	mine := func(p netip.Prefix) bool { holder := r.alloc.holder(p); return holder == "" || holder == id }
	if err := makeTap(h.tap, netip.PrefixFrom(gateway(subnet), 30), mine); err != nil {
		if ferr := r.alloc.free(id, subnet); ferr != nil {
			vm.Log.Warn("free the subnet after a failed tap", "subnet", subnet, "err", ferr)
		}
		return nil, err
	}
	vm.Log.Info("network", "tap", h.tap, "address", guest(subnet), "gateway", gateway(subnet), "mac", h.mac.String())
	cfg.NICs = append(cfg.NICs, hypervisor.NIC{MAC: h.mac, Tap: h.tap})
	return h, nil
}

// state is what a VM's record keeps of its network.
type state struct {
	Mode   string       `json:"mode"`
	Tap    string       `json:"tap,omitempty"`
	Subnet netip.Prefix `json:"subnet,omitzero"`
	MAC    string       `json:"mac,omitempty"`
}

// Adopt takes back the network of a VM an earlier cabind started, as its
// record keeps it. A VM with a tap has its subnet marked held again, and
// its tap its address and up (someone may have taken them); a tap that is
// gone is not made again, since the VM's QEMU would not be on the new
// one: the VM has no network until it restarts, and its subnet stays held
// until then. A VM started before cabind had networks has none.
func (r *Resource) Adopt(_ context.Context, vm resource.VM, raw json.RawMessage) (resource.Hold, error) {
	if raw == nil {
		return noneHold{}, nil
	}
	var st state
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, fmt.Errorf("network state: %w", err)
	}
	switch st.Mode {
	case vmm.NetworkNone:
		return noneHold{}, nil
	case vmm.NetworkUser:
		mac, err := net.ParseMAC(st.MAC)
		if err != nil {
			return nil, fmt.Errorf("network state: %w", err)
		}
		return userHold{mac: mac}, nil
	case vmm.NetworkTap:
	default:
		return nil, fmt.Errorf("network state: unknown mode %q", st.Mode)
	}
	id, err := vmID(vm)
	if err != nil {
		return nil, err
	}
	mac, err := net.ParseMAC(st.MAC)
	if err != nil {
		return nil, fmt.Errorf("network state: %w", err)
	}
	if err := hypervisor.CheckTapName(st.Tap); err != nil {
		return nil, fmt.Errorf("network state: tap: %w", err)
	}
	if err := r.alloc.mark(id, st.Subnet); err != nil {
		return nil, fmt.Errorf("network state: %w", err)
	}
	h := &tapHold{r: r, id: id, tap: st.Tap, subnet: st.Subnet, mac: mac}
	if !r.pool.Contains(st.Subnet.Addr()) {
		vm.Log.Warn("the VM's subnet is outside the pool: its traffic leaves the host without NAT until it restarts",
			"subnet", st.Subnet, "pool", r.pool)
	}
	if r.noTaps != "" {
		vm.Log.Warn("cannot check the VM's tap", "tap", st.Tap, "reason", r.noTaps)
		return h, nil
	}
	if err := r.prepareHost(); err != nil {
		vm.Log.Warn("the VM's traffic is not NATed", "err", err)
	}
	switch ok, err := tapExists(st.Tap); {
	case err != nil:
		vm.Log.Warn("the VM's tap", "tap", st.Tap, "err", err)
	case !ok:
		vm.Log.Warn("the VM's tap is gone: it has no network until it restarts", "tap", st.Tap)
	default:
		if err := configureTap(st.Tap, netip.PrefixFrom(gateway(st.Subnet), 30)); err != nil {
			vm.Log.Warn("the VM's tap", "tap", st.Tap, "err", err)
		}
	}
	return h, nil
}

// vmID is the id of vm's directory, which names its tap and MAC.
func vmID(vm resource.VM) (string, error) {
	id := filepath.Base(vm.Dir.Path())
	if !validID(id) {
		return "", fmt.Errorf("vm directory %s: its name is not a VM's id: %w", vm.Dir.Path(), errdefs.ErrInternal)
	}
	return id, nil
}

// tapHold is a VM's tap and subnet.
type tapHold struct {
	r      *Resource
	id     string
	tap    string
	subnet netip.Prefix
	mac    net.HardwareAddr
}

var _ vmm.Networked = (*tapHold)(nil)

func (h *tapHold) State() json.RawMessage {
	b, _ := json.Marshal(state{Mode: vmm.NetworkTap, Tap: h.tap, Subnet: h.subnet, MAC: h.mac.String()})
	return b
}

// GuestNetwork is the guest's address (+2 of its subnet) and gateway
// (+1, the tap's).
func (h *tapHold) GuestNetwork() vmm.GuestNetwork {
	return vmm.GuestNetwork{Address: netip.PrefixFrom(guest(h.subnet), 30), Gateway: gateway(h.subnet)}
}

// Release removes the tap and then frees the subnet; while the tap
// cannot be removed, its subnet stays held, since the tap holds its
// gateway.
func (h *tapHold) Release(context.Context) error {
	if err := deleteTap(h.tap); err != nil {
		return err
	}
	return h.r.alloc.free(h.id, h.subnet)
}

// userHold is a NIC on the user-mode network, which holds nothing on the
// host.
type userHold struct{ mac net.HardwareAddr }

var _ vmm.Networked = userHold{}

func (h userHold) State() json.RawMessage {
	b, _ := json.Marshal(state{Mode: vmm.NetworkUser, MAC: h.mac.String()})
	return b
}

func (userHold) Release(context.Context) error { return nil }

// GuestNetwork is the user-mode network's guest address and gateway.
// GuestNetwork is slirp's. Its DNS is slirp's own resolver, which asks the
// host's (loopback ones included, which a guest could not reach itself).
func (userHold) GuestNetwork() vmm.GuestNetwork {
	u := hypervisor.UserNet()
	return vmm.GuestNetwork{
		Address: netip.PrefixFrom(u.Guest, u.Subnet.Bits()),
		Gateway: u.Gateway,
		DNS:     vmm.DNS{Nameservers: []string{u.DNS.String()}},
	}
}

// noneHold is no network: the guest has loopback only.
type noneHold struct{}

func (noneHold) State() json.RawMessage {
	b, _ := json.Marshal(state{Mode: vmm.NetworkNone})
	return b
}

func (noneHold) Release(context.Context) error { return nil }
