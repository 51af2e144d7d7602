package hypervisor

import (
	"context"
	"errors"
	"os"
)

// Hot-plug capacity of a MachineQ35 VM: the PCIe root ports kept free
// for NICs, and the USB controller's ports.
const (
	// HotplugSlots is how many NICs may be hot-plugged at once: each
	// takes a PCIe root port of its own (slots 0 to HotplugSlots-1).
	HotplugSlots = 4
	// USBPorts is how many USB devices may be attached at once: the
	// ports of the VM's xHCI controller, numbered 1 to USBPorts.
	USBPorts = 8
)

// ErrNotDeleted is a device removal the guest did not finish in time:
// the device stays attached (a guest must let go of a PCI device before
// it is removed).
var ErrNotDeleted = errors.New("the guest did not release the device")

// Hotplugger is a VM that takes devices while it runs. Only a
// MachineQ35 VM is one; the manager finds it by type assertion. Slots
// and ports are the caller's to hand out: the hypervisor names its
// devices after them, so a restarted daemon finds them again.
type Hotplugger interface {
	// AttachNIC plugs a virtio-net device on nic's tap (which must
	// exist) into the free root port slot, and returns the guest's PCI
	// bus number of the device (the root port's secondary bus).
	AttachNIC(ctx context.Context, slot int, nic NIC) (bus int, err error)
	// DetachNIC unplugs the NIC in slot: it asks the guest to release
	// it, waits (until ctx ends) for the hypervisor to report it gone,
	// then drops its backend. A slot with no device is no error. When
	// the guest does not release it in time the error wraps
	// ErrNotDeleted and the NIC stays.
	DetachNIC(ctx context.Context, slot int) error
	// AttachUSB passes the open USB device node dev (/dev/bus/usb/...)
	// to the VM's USB controller at port (1 to USBPorts). The
	// hypervisor keeps its own descriptor; the caller may close dev.
	AttachUSB(ctx context.Context, port int, dev *os.File) error
	// DetachUSB unplugs the USB device at port, as DetachNIC does.
	DetachUSB(ctx context.Context, port int) error
}
