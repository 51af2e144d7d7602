package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
)

var _ hypervisor.Hotplugger = (*vm)(nil)

// cleanupTimeout bounds what undoes half a hot-plug after its caller's
// context ended or the hot-plug failed: a monitor that does not answer,
// or a guest that does not let go, must not hold the call for ever.
const cleanupTimeout = 20 * time.Second

// Hot-plugged devices are named after their slot or port, so that a
// restarted cabind finds them by what its record keeps.
func nicDeviceID(slot int) string { return "hpnic" + strconv.Itoa(slot) }
func nicNetdevID(slot int) string { return "hpnet" + strconv.Itoa(slot) }
func usbDeviceID(port int) string { return "hpusb" + strconv.Itoa(port) }
func checkSlot(slot int) error    { return checkRange("slot", slot, 0, hypervisor.HotplugSlots-1) }
func checkUSBPort(port int) error { return checkRange("port", port, 1, hypervisor.USBPorts) }
func checkRange(field string, v, lo, hi int) error {
	if v < lo || v > hi {
		return errdefs.InvalidArgument(field, fmt.Sprintf("%d is not %d to %d", v, lo, hi))
	}
	return nil
}

// AttachNIC adds a tap netdev and a virtio-net-pci device on it in the
// root port of slot (netdev_add, device_add), then reads the bus number
// the guest's firmware gave that port (query-pci). A device that cannot
// be added leaves no netdev behind.
//
// vhost is left off: it needs KVM, which these hosts cannot use, and a
// hot-plugged NIC is for reaching a network rather than for speed.
func (v *vm) AttachNIC(ctx context.Context, slot int, nic hypervisor.NIC) (int, error) {
	if err := checkSlot(slot); err != nil {
		return 0, err
	}
	if err := hypervisor.CheckTapName(nic.Tap); err != nil {
		return 0, errdefs.InvalidArgument("tap", err.Error())
	}
	if err := hypervisor.CheckMAC(nic.MAC); err != nil {
		return 0, errdefs.InvalidArgument("mac", err.Error())
	}
	qmp, err := v.monitor()
	if err != nil {
		return 0, qmpFailure("attach nic", err)
	}
	netdev := map[string]any{
		"type": "tap", "id": nicNetdevID(slot), "ifname": nic.Tap,
		"script": "no", "downscript": "no",
	}
	if err := qmp.Execute(ctx, "netdev_add", netdev, nil); err != nil {
		return 0, qmpFailure("attach nic", err)
	}
	dev := map[string]any{
		"driver": "virtio-net-pci", "id": nicDeviceID(slot), "netdev": nicNetdevID(slot),
		"mac": nic.MAC.String(), "bus": rootPortID(slot),
	}
	if err := qmp.Execute(ctx, "device_add", dev, nil); err != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		if derr := qmp.Execute(dctx, "netdev_del", map[string]any{"id": nicNetdevID(slot)}, nil); derr != nil {
			v.log.Warn("remove the netdev of a nic that could not be added", "slot", slot, "err", derr)
		}
		return 0, qmpFailure("attach nic", err)
	}
	bus, err := secondaryBus(ctx, qmp, rootPortID(slot))
	if err != nil {
		// The NIC is in; only its bus number is unknown. Take it out
		// again rather than report a NIC that cannot be named.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		if derr := v.DetachNIC(dctx, slot); derr != nil {
			v.log.Warn("remove a nic whose bus is unknown", "slot", slot, "err", derr)
		}
		return 0, err
	}
	return bus, nil
}

// pciInfo is what query-pci says of the buses and devices cabin looks
// for (QEMU's PciInfo, PciDeviceInfo and PciBridgeInfo, in part).
type pciInfo struct {
	Bus     int             `json:"bus"`
	Devices []pciDeviceInfo `json:"devices"`
}

type pciDeviceInfo struct {
	QdevID    string `json:"qdev_id"`
	PCIBridge *struct {
		Bus struct {
			Number    int `json:"number"`
			Secondary int `json:"secondary"`
		} `json:"bus"`
		Devices []pciDeviceInfo `json:"devices"`
	} `json:"pci_bridge"`
}

// secondaryBus is the number of the bus behind the bridge id, as the
// guest's firmware numbered it at boot: the bus a device plugged into
// that root port is on, which upstream answers as its guest_bus.
func secondaryBus(ctx context.Context, qmp *Client, id string) (int, error) {
	var buses []pciInfo
	if err := qmp.Execute(ctx, "query-pci", nil, &buses); err != nil {
		return 0, qmpFailure("query the pci buses", err)
	}
	return findSecondaryBus(buses, id)
}

func findSecondaryBus(buses []pciInfo, id string) (int, error) {
	var walk func([]pciDeviceInfo) (int, bool)
	walk = func(devs []pciDeviceInfo) (int, bool) {
		for _, d := range devs {
			if d.PCIBridge == nil {
				continue
			}
			if d.QdevID == id {
				return d.PCIBridge.Bus.Secondary, true
			}
			if n, ok := walk(d.PCIBridge.Devices); ok {
				return n, true
			}
		}
		return 0, false
	}
	for _, b := range buses {
		n, ok := walk(b.Devices)
		if !ok {
			continue
		}
		if n <= 0 || n > 255 {
			return 0, fmt.Errorf("root port %s has bus number %d: the guest's firmware did not number it: %w", id, n, errdefs.ErrFailedPrecondition)
		}
		return n, nil
	}
	return 0, fmt.Errorf("no root port %s on the machine (not a hot-plug machine?): %w", id, errdefs.ErrFailedPrecondition)
}

// DetachNIC removes the NIC of slot (device_del), waits for QEMU's
// DEVICE_DELETED, which comes once the guest has let go of it, then
// removes its netdev (netdev_del), which closes the tap. A device or
// netdev already gone is no error, so a detach that timed out can be
// tried again.
func (v *vm) DetachNIC(ctx context.Context, slot int) error {
	if err := checkSlot(slot); err != nil {
		return err
	}
	if err := v.deleteDevice(ctx, nicDeviceID(slot)); err != nil {
		return fmt.Errorf("detach nic: %w", err)
	}
	qmp, err := v.monitor()
	if err != nil {
		return qmpFailure("detach nic", err)
	}
	err = qmp.Execute(ctx, "netdev_del", map[string]any{"id": nicNetdevID(slot)}, nil)
	if err != nil && !isNotFound(err) {
		return qmpFailure("detach nic", err)
	}
	return nil
}

// AttachUSB hands QEMU the open device node dev in a new fd set
// (add-fd, the descriptor travelling with the command), and adds a
// usb-host device at port that opens it (hostdevice=/dev/fdset/N: QEMU
// 7.2's usb-host has no fd property, and opens hostdevice with
// qemu_open, which takes fd sets). The fd set is removed again at once:
// the device holds a descriptor of its own, and QEMU closes the set's
// once nothing uses it.
func (v *vm) AttachUSB(ctx context.Context, port int, dev *os.File) error {
	if err := checkUSBPort(port); err != nil {
		return err
	}
	if dev == nil {
		return errdefs.InvalidArgument("device", "no open device")
	}
	qmp, err := v.monitor()
	if err != nil {
		return qmpFailure("attach usb", err)
	}
	var fdset struct {
		FDSetID int `json:"fdset-id"`
	}
	if err := qmp.ExecuteWithFile(ctx, "add-fd", nil, dev, &fdset); err != nil {
		return qmpFailure("attach usb", err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		err := qmp.Execute(rctx, "remove-fd", map[string]any{"fdset-id": fdset.FDSetID}, nil)
		if err != nil {
			v.log.Warn("remove the fd set of a usb device", "fdset", fdset.FDSetID, "err", err)
		}
	}()
	args := map[string]any{
		"driver": "usb-host", "id": usbDeviceID(port), "bus": xhciID + ".0",
		"port": strconv.Itoa(port), "hostdevice": "/dev/fdset/" + strconv.Itoa(fdset.FDSetID),
	}
	if err := qmp.Execute(ctx, "device_add", args, nil); err != nil {
		return qmpFailure("attach usb", err)
	}
	return nil
}

// DetachUSB removes the USB device at port and waits for QEMU to report
// it gone. A USB device needs no guest's consent, but the event is what
// says the device (and its descriptor) is released.
func (v *vm) DetachUSB(ctx context.Context, port int) error {
	if err := checkUSBPort(port); err != nil {
		return err
	}
	if err := v.deleteDevice(ctx, usbDeviceID(port)); err != nil {
		return fmt.Errorf("detach usb: %w", err)
	}
	return nil
}

// deleteDevice asks QEMU to remove device id and waits (until ctx ends)
// for its DEVICE_DELETED. One that does not exist is gone already.
func (v *vm) deleteDevice(ctx context.Context, id string) error {
	qmp, err := v.monitor()
	if err != nil {
		return qmpFailure("device_del", err)
	}
	// Before device_del: the event may come before its reply.
	deleted, forget := v.events.await("DEVICE_DELETED", func(data json.RawMessage) bool {
		var d struct {
			Device string `json:"device"`
		}
		return json.Unmarshal(data, &d) == nil && d.Device == id
	})
	defer forget()
	if err := qmp.Execute(ctx, "device_del", map[string]any{"id": id}, nil); err != nil {
		if isNotFound(err) {
			return nil
		}
		return qmpFailure("device_del", err)
	}
	select {
	case <-deleted:
		return nil
	case <-qmp.Done():
		return qmpFailure("device_del", qmp.Err())
	case <-ctx.Done():
		return fmt.Errorf("%s: %w (%w)", id, hypervisor.ErrNotDeleted, errdefs.Errorf(errdefs.ErrUnavailable, "%w", ctx.Err()))
	}
}

// isNotFound tells a QMP error about a device or netdev that does not
// exist: class DeviceNotFound, or (netdev_del in QEMU 7.2) a
// GenericError "Device 'x' not found".
func isNotFound(err error) bool {
	var qe *QMPError
	if !errors.As(err, &qe) {
		return false
	}
	if qe.Class == "DeviceNotFound" {
		return true
	}
	return qe.Class == "GenericError" && len(qe.Desc) > len("not found") && qe.Desc[len(qe.Desc)-len("not found"):] == "not found"
}

// qmpFailure classifies a failed hot-plug exchange: QEMU's refusal is a
// precondition of the VM's (a tap in use, a port taken), a monitor that
// is not there is unavailable.
func qmpFailure(op string, err error) error {
	var qe *QMPError
	switch {
	case errors.As(err, &qe):
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "%s: %w", op, err)
	case errors.Is(err, ErrDisconnected), errors.Is(err, hypervisor.ErrNotConnected):
		return errdefs.Errorf(errdefs.ErrUnavailable, "%s: %w", op, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// eventWaiters hands QMP events to those waiting for them. The monitor's
// events are read by one goroutine (vm.logEvents), which dispatches each
// here.
type eventWaiters struct {
	mu      sync.Mutex
	next    int
	waiters map[int]eventWaiter
}

type eventWaiter struct {
	name  string
	match func(json.RawMessage) bool
	ch    chan struct{}
}

// await returns a channel closed at the first event called name whose
// data match accepts, and a func to stop waiting.
func (w *eventWaiters) await(name string, match func(json.RawMessage) bool) (<-chan struct{}, func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.waiters == nil {
		w.waiters = map[int]eventWaiter{}
	}
	id := w.next
	w.next++
	ch := make(chan struct{})
	w.waiters[id] = eventWaiter{name: name, match: match, ch: ch}
	return ch, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		delete(w.waiters, id)
	}
}

// dispatch wakes the waiters ev is for, each once.
func (w *eventWaiters) dispatch(ev Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for id, wt := range w.waiters {
		if wt.name == ev.Name && wt.match(ev.Data) {
			close(wt.ch)
			delete(w.waiters, id)
		}
	}
}

// ExecuteWithFile is Execute with f's descriptor sent along with the
// command (SCM_RIGHTS), as add-fd and getfd take it: QEMU takes the
// descriptors that come with a message for the command in it. It needs a
// unix socket connection.
func (c *Client) ExecuteWithFile(ctx context.Context, command string, args any, f *os.File, result any) error {
	uc, ok := c.conn.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("qmp %s: passing a file needs a unix socket", command)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	return c.execute(ctx, command, args, result, func(ctx context.Context, b []byte) error {
		c.wmu.Lock()
		defer c.wmu.Unlock()
		deadline, _ := ctx.Deadline()
		if err := c.conn.SetWriteDeadline(deadline); err != nil {
			c.fail(err)
			return c.Err()
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		var n int
		var werr error
		if cerr := rc.Control(func(fd uintptr) {
			n, _, werr = uc.WriteMsgUnix(b, unix.UnixRights(int(fd)), nil)
			if werr == nil && n < len(b) {
				var m int
				m, werr = uc.Write(b[n:])
				n += m
			}
		}); cerr != nil {
			// Nothing was sent: f is closed.
			return cerr
		}
		return c.wrote(n, werr)
	})
}
