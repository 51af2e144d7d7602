package vmm

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"time"

	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
)

// Hot-plug: NICs and USB devices added to a VM while it runs. Only a VM
// started with Spec.Hotplug can take them: it runs on q35, whose PCIe
// root ports and xHCI controller take devices at run time; microvm has
// no PCI bus. What is plugged in is kept in the VM's record, so that a
// restarted cabind can detach it and release the taps it made.

// detachTimeout bounds the wait for a guest to let go of a NIC or a USB
// device. Under TCG a guest takes about a second.
const detachTimeout = 20 * time.Second

// HotplugTaps makes and removes the host taps of hot-plugged NICs, and
// checks those a caller brings; internal/network's resource is one. The
// manager finds it among its resource kinds (Options.Resources).
type HotplugTaps interface {
	// MakeHotplugTap makes the tap of vm's NIC in slot, up and without
	// an address, replacing a stale one of that name, and returns its
	// name.
	MakeHotplugTap(vm resource.VM, slot int) (string, error)
	// RemoveHotplugTap removes a tap MakeHotplugTap made; one that is
	// gone is no error.
	RemoveHotplugTap(name string) error
	// CheckTap accepts an existing tap a caller asks to plug into a VM
	// (c nil: the daemon itself): a tap no VM of cabind's owns, which
	// the caller may use.
	CheckTap(name string, c *caller.Caller) error
}

// NetDevice is a NIC plugged into a running VM.
type NetDevice struct {
	// Bus is the guest's PCI bus number of the NIC, which names it to
	// DetachNIC (upstream's guest_bus).
	Bus int
	// Tap is the host's tap it is on; OwnTap says cabind made it (and
	// removes it with the NIC).
	Tap    string
	OwnTap bool
	MAC    net.HardwareAddr
}

// hotplugDevice is a hot-plugged device as a record keeps it.
type hotplugDevice struct {
	Kind string `json:"kind"` // "nic" or "usb"
	// A NIC's root port slot, guest bus, tap and MAC.
	Slot   int    `json:"slot,omitempty"`
	Bus    int    `json:"bus,omitempty"`
	Tap    string `json:"tap,omitempty"`
	OwnTap bool   `json:"own_tap,omitempty"`
	MAC    string `json:"mac,omitempty"`
	// A USB device's port and what it is.
	USB *USBDevice `json:"usb,omitempty"`
}

const (
	deviceNIC = "nic"
	deviceUSB = "usb"
)

// machineFor is the machine a VM runs on: q35 when it asks for hot-plug,
// else microvm, which boots faster.
func machineFor(spec Spec) hypervisor.Machine {
	if spec.Hotplug {
		return hypervisor.MachineQ35
	}
	return hypervisor.MachineMicroVM
}

// lockHotplug is the VM of key with its hot-plug lock taken (unlock
// lets go of it), if it can take or give back a device now: it runs (a
// VM still starting has a guest that may not have found its buses yet;
// one stopping is going), on a machine with hot-plug. It waits for a VM
// being launched or taken back first, without the lock: the launch's
// failure releases what the VM took, under the lock.
func (m *Manager) lockHotplug(ctx context.Context, key Key) (v *vm, hp hypervisor.Hotplugger, unlock func(), err error) {
	v = m.lookup(key)
	if v == nil {
		return nil, nil, nil, errNoVM(key)
	}
	if err := m.adoption(ctx, v); err != nil {
		return nil, nil, nil, err
	}
	if v.launchErr != nil {
		return nil, nil, nil, errNoVM(key)
	}
	v.hotplug.Lock()
	if hp, err = v.hotpluggable(); err != nil {
		v.hotplug.Unlock()
		return nil, nil, nil, err
	}
	return v, hp, v.hotplug.Unlock, nil
}

// hotpluggable is v's hypervisor, if v can take a device now (see
// lockHotplug).
func (v *vm) hotpluggable() (hypervisor.Hotplugger, error) {
	key := v.key
	v.mu.Lock()
	defer v.mu.Unlock()
	switch v.state {
	case StateRunning:
		if v.suspended {
			// Its guest cannot find a new device or let one go, and a
			// detach would wait for it in vain.
			return nil, errdefs.Errorf(errdefs.ErrFailedPrecondition, "vm %s is suspended: resume it to plug devices in or out", key)
		}
	case StateStarting, StateAdopting:
		return nil, fmt.Errorf("vm %s is starting; devices are plugged in once it runs: %w", key, errdefs.ErrFailedPrecondition)
	case StateUnreachable:
		return nil, fmt.Errorf("vm %s is unreachable: %s: %w", key, v.problem, errdefs.ErrUnavailable)
	default:
		return nil, fmt.Errorf("vm %s is stopping: %w", key, errdefs.ErrFailedPrecondition)
	}
	if v.rec == nil || v.rec.Machine != string(hypervisor.MachineQ35) {
		machine := hypervisor.MachineMicroVM
		if v.rec != nil && v.rec.Machine != "" {
			machine = hypervisor.Machine(v.rec.Machine)
		}
		return nil, fmt.Errorf("vm %s runs on %s, which has no PCI or USB hot-plug; start it with hot-plug (cabin vm start --hotplug): %w",
			key, machine, errdefs.ErrFailedPrecondition)
	}
	hp, ok := v.hv.(hypervisor.Hotplugger)
	if !ok {
		return nil, fmt.Errorf("vm %s: its hypervisor cannot plug devices in: %w", key, errdefs.ErrFailedPrecondition)
	}
	return hp, nil
}

// hotplugTaps is the resource kind that makes taps for NICs, if any.
func (m *Manager) hotplugTaps() (HotplugTaps, bool) {
	for _, k := range m.opts.Resources {
		if t, ok := k.(HotplugTaps); ok {
			return t, true
		}
	}
	return nil, false
}

// AttachNIC plugs a virtio-net NIC into the running VM key, in its first
// free hot-plug slot. With tap empty cabind makes the NIC a tap of its
// own (up, without an address, removed with the NIC); otherwise the NIC
// is on the caller's existing tap, which the caller must be allowed to
// use (HotplugTaps.CheckTap) and which stays the caller's.
func (m *Manager) AttachNIC(ctx context.Context, key Key, tap string, c *caller.Caller) (NetDevice, error) {
	if tap != "" {
		if err := hypervisor.CheckTapName(tap); err != nil {
			return NetDevice{}, errdefs.InvalidArgument("tap_name", err.Error())
		}
	}
	v, hp, unlock, err := m.lockHotplug(ctx, key)
	if err != nil {
		return NetDevice{}, err
	}
	defer unlock()
	taps, ok := m.hotplugTaps()
	if !ok {
		return NetDevice{}, fmt.Errorf("cabind has no host network to make or check taps with: %w", errdefs.ErrFailedPrecondition)
	}
	devs := v.hotplugDevices()
	slot := -1
	for s := 0; s < hypervisor.HotplugSlots && slot < 0; s++ {
		if !slices.ContainsFunc(devs, func(d hotplugDevice) bool { return d.Kind == deviceNIC && d.Slot == s }) {
			slot = s
		}
	}
	if slot < 0 {
		return NetDevice{}, fmt.Errorf("vm %s has a NIC in each of its %d hot-plug slots: %w", key, hypervisor.HotplugSlots, errdefs.ErrResourceExhausted)
	}
	log := m.log.With("vm", key.String())
	dev := NetDevice{Tap: tap, MAC: hotplugMAC(v.dir.Path(), slot)}
	if tap == "" {
		if dev.Tap, err = taps.MakeHotplugTap(v.ref(log), slot); err != nil {
			return NetDevice{}, err
		}
		dev.OwnTap = true
	} else {
		if slices.ContainsFunc(devs, func(d hotplugDevice) bool { return d.Kind == deviceNIC && d.Tap == tap }) {
			return NetDevice{}, errdefs.InvalidArgument("tap_name", fmt.Sprintf("%q is already a NIC of vm %s", tap, key))
		}
		if err := taps.CheckTap(tap, c); err != nil {
			return NetDevice{}, err
		}
	}
	dev.Bus, err = hp.AttachNIC(ctx, slot, hypervisor.NIC{MAC: dev.MAC, Tap: dev.Tap})
	if err != nil {
		if dev.OwnTap {
			if rerr := taps.RemoveHotplugTap(dev.Tap); rerr != nil {
				log.Warn("remove the tap of a nic that could not be plugged in", "tap", dev.Tap, "err", rerr)
			}
		}
		return NetDevice{}, fmt.Errorf("vm %s: %w", key, err)
	}
	v.addHotplug(hotplugDevice{Kind: deviceNIC, Slot: slot, Bus: dev.Bus, Tap: dev.Tap, OwnTap: dev.OwnTap, MAC: dev.MAC.String()}, log)
	log.Info("nic plugged in", "slot", slot, "bus", dev.Bus, "tap", dev.Tap, "mac", dev.MAC.String())
	return dev, nil
}

// DetachNIC unplugs the NIC on the guest's PCI bus bus from the VM key,
// once the guest has let it go, and removes its tap if cabind made it.
func (m *Manager) DetachNIC(ctx context.Context, key Key, bus int) error {
	v, hp, unlock, err := m.lockHotplug(ctx, key)
	if err != nil {
		return err
	}
	defer unlock()
	i := slices.IndexFunc(v.hotplugDevices(), func(d hotplugDevice) bool { return d.Kind == deviceNIC && d.Bus == bus })
	if i < 0 {
		return fmt.Errorf("vm %s has no hot-plugged NIC on bus %d: %w", key, bus, errdefs.ErrNotFound)
	}
	d := v.hotplugDevices()[i]
	dctx, cancel := context.WithTimeout(ctx, detachTimeout)
	defer cancel()
	if err := hp.DetachNIC(dctx, d.Slot); err != nil {
		return fmt.Errorf("vm %s: %w", key, err)
	}
	log := m.log.With("vm", key.String())
	if d.OwnTap {
		if taps, ok := m.hotplugTaps(); ok {
			if err := taps.RemoveHotplugTap(d.Tap); err != nil {
				log.Warn("remove the tap of an unplugged nic", "tap", d.Tap, "err", err)
			}
		}
	}
	v.removeHotplug(func(x hotplugDevice) bool { return x.Kind == deviceNIC && x.Slot == d.Slot }, log)
	log.Info("nic unplugged", "slot", d.Slot, "bus", bus, "tap", d.Tap)
	return nil
}

// NetDevices lists the NICs plugged into the VM key while it ran.
func (m *Manager) NetDevices(key Key) ([]NetDevice, error) {
	v := m.lookup(key)
	if v == nil {
		return nil, errNoVM(key)
	}
	var out []NetDevice
	for _, d := range v.hotplugDevices() {
		if d.Kind == deviceNIC {
			mac, _ := net.ParseMAC(d.MAC)
			out = append(out, NetDevice{Bus: d.Bus, Tap: d.Tap, OwnTap: d.OwnTap, MAC: mac})
		}
	}
	return out, nil
}

// hotplugMAC is the MAC of the guest's side of the NIC in slot of the VM
// in dir: 06 (unicast, locally administered, and apart from the 02 of
// the VM's first NIC), four bytes of the VM's id, and the slot.
func hotplugMAC(dir string, slot int) net.HardwareAddr {
	id, err := hex.DecodeString(filepath.Base(dir)[:8])
	if err != nil || len(id) != 4 {
		id = []byte{0, 0, 0, 0}
	}
	return append(append(net.HardwareAddr{0x06}, id...), byte(slot))
}

// hotplugDevices is a copy of what the VM's record says is plugged in.
func (v *vm) hotplugDevices() []hotplugDevice {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.rec == nil {
		return nil
	}
	return slices.Clone(v.rec.Hotplug)
}

func (v *vm) addHotplug(d hotplugDevice, log *slog.Logger) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.rec.Hotplug = append(v.rec.Hotplug, d)
	if err := writeRecord(v.dir, v.rec); err != nil {
		log.Warn("record", "err", err)
	}
}

func (v *vm) removeHotplug(match func(hotplugDevice) bool, log *slog.Logger) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.rec.Hotplug = slices.DeleteFunc(v.rec.Hotplug, match)
	if err := writeRecord(v.dir, v.rec); err != nil {
		log.Warn("record", "err", err)
	}
}

// releaseHotplug removes the taps cabind made for the NICs of v, whose
// hypervisor is gone (or never ran): with it went every device plugged
// into it.
func (m *Manager) releaseHotplug(v *vm) {
	v.hotplug.Lock()
	defer v.hotplug.Unlock()
	devs := v.hotplugDevices()
	if len(devs) == 0 {
		return
	}
	taps, ok := m.hotplugTaps()
	var errs []error
	for _, d := range devs {
		if d.Kind == deviceNIC && d.OwnTap && ok {
			if err := taps.RemoveHotplugTap(d.Tap); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		m.log.Warn("remove the taps of hot-plugged nics", "vm", v.key.String(), "err", err)
	}
	v.mu.Lock()
	v.rec.Hotplug = nil
	v.mu.Unlock()
}
