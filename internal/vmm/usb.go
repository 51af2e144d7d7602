package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
)

// USBDevice is a host USB device passed to a running VM.
type USBDevice struct {
	// Port is the guest's USB port it is on (1 to hypervisor.USBPorts),
	// which names it to DetachUSB (upstream's guest_port).
	Port int `json:"port"`
	// Path is its node on the host, /dev/bus/usb/BBB/DDD.
	Path      string `json:"path"`
	VendorID  uint16 `json:"vendor_id"`
	ProductID uint16 `json:"product_id"`
	// Name is the device's product string, as the host's kernel read it.
	Name string `json:"name,omitempty"`
}

// usbMajor is the major number of the host's USB device nodes
// (USB_DEVICE_MAJOR).
const usbMajor = 189

// usbPath is the one form of path AttachUSB takes: a device node of the
// host's USB file system, bus and device as three digits each.
var usbPath = regexp.MustCompile(`^/dev/bus/usb/[0-9]{3}/[0-9]{3}$`)

// usb2Ports is how many of a VM's USB ports (the first) are USB 2; the
// rest are USB 3. Must match the hypervisor's controller (internal/qemu).
const usb2Ports = hypervisor.USBPorts / 2

// AttachUSB passes the host's USB device at path (/dev/bus/usb/BBB/DDD,
// nothing else) to the running VM key. The device is opened on the
// caller's behalf (caller.Caller.OpenDevice: it must be a USB device
// node the caller may read and write itself) and the hypervisor is
// given the open file, never the path. It goes on a free port of its
// speed: USB 3 for a super speed device, else USB 2.
func (m *Manager) AttachUSB(ctx context.Context, key Key, path string, c *caller.Caller) (USBDevice, error) {
	if !usbPath.MatchString(path) {
		return USBDevice{}, errdefs.InvalidArgument("device_path", fmt.Sprintf("%q is not /dev/bus/usb/BBB/DDD", path))
	}
	// The VM first: whether it can take a device says more than whether
	// the caller may open one.
	v, hp, unlock, err := m.lockHotplug(ctx, key)
	if err != nil {
		return USBDevice{}, err
	}
	defer unlock()
	f, err := c.OpenDevice(path, usbMajor)
	switch {
	case errors.Is(err, caller.ErrNotCharDevice):
		return USBDevice{}, errdefs.InvalidArgument("device_path", fmt.Sprintf("%q is not a USB device node", path))
	case errors.Is(err, os.ErrNotExist):
		return USBDevice{}, errdefs.Errorf(errdefs.ErrNotFound, "device_path: %q: no such device", path)
	case errors.Is(err, caller.ErrPermission):
		return USBDevice{}, errdefs.Errorf(errdefs.ErrPermissionDenied, "device_path: %q: the caller may not read and write it", path)
	case err != nil:
		return USBDevice{}, errdefs.InvalidArgument("device_path", fmt.Sprintf("%q: %v", path, err))
	}
	defer f.Close()
	dev, superSpeed, err := usbDeviceInfo(f)
	if err != nil {
		return USBDevice{}, err
	}
	dev.Path = path

	devs := v.hotplugDevices()
	if slices.ContainsFunc(devs, func(d hotplugDevice) bool { return d.Kind == deviceUSB && d.USB.Path == path }) {
		return USBDevice{}, errdefs.Errorf(errdefs.ErrAlreadyExists, "%s is already attached to vm %s", path, key)
	}
	first, last := 1, usb2Ports
	if superSpeed {
		first, last = usb2Ports+1, hypervisor.USBPorts
	}
	for p := first; p <= last && dev.Port == 0; p++ {
		if !slices.ContainsFunc(devs, func(d hotplugDevice) bool { return d.Kind == deviceUSB && d.USB.Port == p }) {
			dev.Port = p
		}
	}
	if dev.Port == 0 {
		return USBDevice{}, fmt.Errorf("vm %s has a device on each of its %d USB ports of that speed: %w", key, last-first+1, errdefs.ErrResourceExhausted)
	}
	if err := hp.AttachUSB(ctx, dev.Port, f); err != nil {
		return USBDevice{}, fmt.Errorf("vm %s: %w", key, err)
	}
	log := m.log.With("vm", key.String())
	d := dev
	v.addHotplug(hotplugDevice{Kind: deviceUSB, USB: &d}, log)
	log.Info("usb device attached", "port", dev.Port, "path", path, "vendor", dev.VendorID, "product", dev.ProductID)
	return dev, nil
}

// DetachUSB takes the USB device on port away from the VM key.
func (m *Manager) DetachUSB(ctx context.Context, key Key, port int) error {
	v, hp, unlock, err := m.lockHotplug(ctx, key)
	if err != nil {
		return err
	}
	defer unlock()
	match := func(d hotplugDevice) bool { return d.Kind == deviceUSB && d.USB.Port == port }
	if !slices.ContainsFunc(v.hotplugDevices(), match) {
		return fmt.Errorf("vm %s has no USB device on port %d: %w", key, port, errdefs.ErrNotFound)
	}
	dctx, cancel := context.WithTimeout(ctx, detachTimeout)
	defer cancel()
	if err := hp.DetachUSB(dctx, port); err != nil {
		return fmt.Errorf("vm %s: %w", key, err)
	}
	log := m.log.With("vm", key.String())
	v.removeHotplug(match, log)
	log.Info("usb device detached", "port", port)
	return nil
}

// USBDevices lists the USB devices attached to the VM key, by port. A
// VM without hot-plug has none.
func (m *Manager) USBDevices(ctx context.Context, key Key) ([]USBDevice, error) {
	v := m.lookup(key)
	if v == nil {
		return nil, errNoVM(key)
	}
	if err := m.adoption(ctx, v); err != nil {
		return nil, err
	}
	if _, ok := v.current(); !ok {
		return nil, errNoVM(key)
	}
	out := []USBDevice{}
	for _, d := range v.hotplugDevices() {
		if d.Kind == deviceUSB && d.USB != nil {
			out = append(out, *d.USB)
		}
	}
	slices.SortFunc(out, func(a, b USBDevice) int { return a.Port - b.Port })
	return out, nil
}

// usbDeviceInfo describes the open USB device node f from what the
// host's kernel says of it in sysfs (/sys/dev/char/MAJ:MIN): its ids,
// its product string, and whether it is super speed (5000 Mb/s or more).
func usbDeviceInfo(f *os.File) (USBDevice, bool, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return USBDevice{}, false, fmt.Errorf("usb device: %w", err)
	}
	dir := fmt.Sprintf("/sys/dev/char/%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(b))
	}
	vendor, verr := strconv.ParseUint(read("idVendor"), 16, 16)
	product, perr := strconv.ParseUint(read("idProduct"), 16, 16)
	if verr != nil || perr != nil {
		return USBDevice{}, false, errdefs.Errorf(errdefs.ErrFailedPrecondition,
			"usb device: the host's kernel does not describe it in %s (not a USB device, or gone)", dir)
	}
	dev := USBDevice{VendorID: uint16(vendor), ProductID: uint16(product), Name: usbName(read("product"))}
	speed, _ := strconv.ParseFloat(read("speed"), 64)
	return dev, speed >= 5000, nil
}

// usbName keeps a device's product string printable and short: the
// device itself says what it is.
func usbName(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return -1
		}
		return r
	}, s)
	if len(s) > 64 {
		s = s[:64]
	}
	return s
}

// usbSysfs is where the host's kernel lists its USB devices.
const usbSysfs = "/sys/bus/usb/devices"

// FindUSB is the node (/dev/bus/usb/BBB/DDD) of the host's USB device on
// port of bus (sysfs device BUS-PORT: one on a root hub's port; a device
// behind a further hub is named with dots and cannot be asked for so),
// whose vendor and product ids are vendor and product where those are
// not 0. It is what upstream's callers name a device by, having opened
// its node themselves.
func FindUSB(bus, port int, vendor, product uint16) (string, error) {
	if bus < 1 || bus > 255 {
		return "", errdefs.InvalidArgument("bus_number", fmt.Sprintf("%d is not 1 to 255", bus))
	}
	if port < 1 || port > 255 {
		return "", errdefs.InvalidArgument("port_number", fmt.Sprintf("%d is not 1 to 255", port))
	}
	dir := filepath.Join(usbSysfs, strconv.Itoa(bus)+"-"+strconv.Itoa(port))
	read := func(name string) (uint64, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return 0, err
		}
		base := 10
		if name == "idVendor" || name == "idProduct" {
			base = 16
		}
		return strconv.ParseUint(strings.TrimSpace(string(b)), base, 16)
	}
	busnum, err := read("busnum")
	if errors.Is(err, os.ErrNotExist) {
		return "", errdefs.Errorf(errdefs.ErrNotFound, "no USB device on port %d of bus %d", port, bus)
	}
	devnum, derr := read("devnum")
	vid, verr := read("idVendor")
	pid, perr := read("idProduct")
	if err = errors.Join(err, derr, verr, perr); err != nil {
		return "", fmt.Errorf("usb device %d-%d: %w", bus, port, err)
	}
	if busnum != uint64(bus) || devnum < 1 || devnum > 999 {
		return "", fmt.Errorf("usb device %d-%d: bus %d, device %d: %w", bus, port, busnum, devnum, errdefs.ErrInternal)
	}
	if (vendor != 0 && uint64(vendor) != vid) || (product != 0 && uint64(product) != pid) {
		return "", errdefs.Errorf(errdefs.ErrNotFound, "the USB device on port %d of bus %d is %04x:%04x, not %04x:%04x",
			port, bus, vid, pid, vendor, product)
	}
	return fmt.Sprintf("/dev/bus/usb/%03d/%03d", bus, devnum), nil
}
