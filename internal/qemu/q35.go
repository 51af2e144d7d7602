package qemu

import (
	"strconv"

	"github.com/cabinvm/cabin/internal/hypervisor"
)

// The q35 machine is for VMs that take devices while they run (see
// hypervisor.Hotplugger): microvm has no PCI bus, so nothing can be
// plugged into it. Its cold-plugged devices are the -pci variants of
// microvm's (portArgs, shareArgs, nicArgs), on the root bus, and it adds
// what hot-plug needs (q35Args).

// USB2Ports is how many of the xHCI controller's ports are USB 2 (1 to
// USB2Ports, for low, full and high speed devices); the rest, up to
// hypervisor.USBPorts, are USB 3 (super speed). QEMU's xHCI attaches a
// device only to a port of its speed.
const USB2Ports = hypervisor.USBPorts / 2

// rootPortID is the id of the PCIe root port of hot-plug slot i; a NIC
// plugged there is on bus rootPortID(i).
func rootPortID(slot int) string { return "hp" + strconv.Itoa(slot) }

// xhciID is the id of the USB controller; its bus is xhciID+".0".
const xhciID = "xhci"

// q35Args are the devices a q35 VM gets for hot-plug: hypervisor.
// HotplugSlots PCIe root ports left empty (a PCIe device can be plugged
// only into a port, one per port; the root bus of q35 takes none while
// the machine runs), and an xHCI USB controller with
// hypervisor.USBPorts ports, half USB 2, half USB 3.
//
// Each root port needs a chassis number of its own (its slot number is
// 0, the default); they count from 1. Which port a NIC is in is what
// DetachNIC finds it by, so the order is fixed.
func q35Args() []string {
	var args []string
	for i := 0; i < hypervisor.HotplugSlots; i++ {
		args = append(args, "-device",
			"pcie-root-port,id="+rootPortID(i)+",bus=pcie.0,chassis="+strconv.Itoa(i+1))
	}
	args = append(args, "-device",
		"qemu-xhci,id="+xhciID+",p2="+strconv.Itoa(USB2Ports)+",p3="+strconv.Itoa(hypervisor.USBPorts-USB2Ports))
	return args
}

// q35Machine is the -M of a q35 VM: ACPI on (the guest finds the root
// ports' hot-plug through it), and the chipset's SATA controller, SMBus
// and VMware port off, which no cabin guest uses and which the guest
// would otherwise probe at boot.
const q35Machine = "q35,acpi=on,sata=off,smbus=off,vmport=off"
