package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/qemu/qemutest"
)

// hpFake is QEMU's end of a monitor on a unix socket pair, so that
// descriptors sent with a command (add-fd) arrive as they would.
type hpFake struct {
	t    *testing.T
	conn *net.UnixConn
	buf  []byte
	fds  []int // descriptors received, not yet taken
}

type hpCommand struct {
	Execute   string         `json:"execute"`
	Arguments map[string]any `json:"arguments"`
	ID        json.RawMessage
	fds       []int
}

func (f *hpFake) send(msg string) {
	if _, err := io.WriteString(f.conn, msg+"\n"); err != nil {
		f.t.Logf("fake qmp: send: %v", err)
	}
}

// recv reads the next command, with the descriptors that came with it.
func (f *hpFake) recv() (hpCommand, error) {
	for {
		if i := bytes.IndexByte(f.buf, '\n'); i >= 0 {
			line := f.buf[:i]
			f.buf = f.buf[i+1:]
			var c hpCommand
			if err := json.Unmarshal(line, &c); err != nil {
				return c, fmt.Errorf("%q: %w", line, err)
			}
			c.fds, f.fds = f.fds, nil
			return c, nil
		}
		b, oob := make([]byte, 4096), make([]byte, 256)
		n, oobn, _, _, err := f.conn.ReadMsgUnix(b, oob)
		if err != nil {
			return hpCommand{}, err
		}
		if oobn > 0 {
			msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
			if err != nil {
				return hpCommand{}, err
			}
			for _, m := range msgs {
				fds, err := unix.ParseUnixRights(&m)
				if err != nil {
					return hpCommand{}, err
				}
				f.fds = append(f.fds, fds...)
			}
		}
		f.buf = append(f.buf, b[:n]...)
	}
}

func (f *hpFake) reply(c hpCommand, ret string) {
	f.send(fmt.Sprintf(`{"return": %s, "id": %s}`, ret, c.ID))
}

func (f *hpFake) fail(c hpCommand, class, desc string) {
	f.send(fmt.Sprintf(`{"error": {"class": %q, "desc": %q}, "id": %s}`, class, desc, c.ID))
}

func (f *hpFake) event(name, data string) {
	f.send(fmt.Sprintf(`{"event": %q, "data": %s, "timestamp": {"seconds": 1, "microseconds": 2}}`, name, data))
}

// expect reads the next command and fails the test unless it is
// command with exactly args (nil: none).
func (f *hpFake) expect(command string, args map[string]any) (hpCommand, error) {
	c, err := f.recv()
	if err != nil {
		return c, err
	}
	if c.Execute != command || !reflect.DeepEqual(c.Arguments, args) {
		return c, fmt.Errorf("got %s %v, want %s %v", c.Execute, c.Arguments, command, args)
	}
	return c, nil
}

// hotplugVM is a vm whose monitor is a fake run by serve; the test waits
// for serve to return when it ends. commands lists what the fake got
// after the handshake.
func hotplugVM(t *testing.T, serve func(f *hpFake) error) *vm {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]*net.UnixConn, 2)
	for i, fd := range fds {
		file := os.NewFile(uintptr(fd), "qmp")
		c, err := net.FileConn(file)
		file.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c.(*net.UnixConn)
	}
	f := &hpFake{t: t, conn: conns[1]}
	done := make(chan error, 1)
	go func() {
		f.send(testGreeting)
		c, err := f.recv()
		if err == nil {
			f.reply(c, "{}")
			err = serve(f)
		}
		for _, fd := range f.fds {
			unix.Close(fd)
		}
		done <- err
	}()
	qmp, err := newClient(testContext(t), conns[0])
	if err != nil {
		t.Fatal(err)
	}
	v := &vm{log: slog.New(slog.DiscardHandler), qmp: qmp, done: make(chan struct{}), stop: make(chan struct{})}
	go v.logEvents(qmp)
	t.Cleanup(func() {
		qmp.Close()
		conns[1].Close()
		if err := <-done; err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
			t.Errorf("fake qmp: %v", err)
		}
	})
	return v
}

var testNIC = hypervisor.NIC{MAC: net.HardwareAddr{0x06, 1, 2, 3, 4, 1}, Tap: "cbh0123456789a01"[:15]}

// A query-pci answer: two root ports numbered by the firmware, the
// second with a NIC behind it.
const testPCI = `[{"bus": 0, "devices": [
 {"bus": 0, "slot": 1, "function": 0, "qdev_id": "vser0"},
 {"bus": 0, "slot": 2, "function": 0, "qdev_id": "hp0", "pci_bridge": {"bus": {"number": 1, "secondary": 1, "subordinate": 1}, "devices": []}},
 {"bus": 0, "slot": 3, "function": 0, "qdev_id": "hp1", "pci_bridge": {"bus": {"number": 2, "secondary": 2, "subordinate": 2},
   "devices": [{"bus": 2, "slot": 0, "function": 0, "qdev_id": "hpnic1"}]}}]}]`

func TestAttachNIC(t *testing.T) {
	v := hotplugVM(t, func(f *hpFake) error {
		c, err := f.expect("netdev_add", map[string]any{
			"type": "tap", "id": "hpnet1", "ifname": testNIC.Tap, "script": "no", "downscript": "no"})
		if err != nil {
			return err
		}
		f.reply(c, "{}")
		if c, err = f.expect("device_add", map[string]any{
			"driver": "virtio-net-pci", "id": "hpnic1", "netdev": "hpnet1", "mac": "06:01:02:03:04:01", "bus": "hp1"}); err != nil {
			return err
		}
		f.reply(c, "{}")
		if c, err = f.expect("query-pci", nil); err != nil {
			return err
		}
		f.reply(c, testPCI)
		return nil
	})
	bus, err := v.AttachNIC(testContext(t), 1, testNIC)
	if err != nil {
		t.Fatal(err)
	}
	if bus != 2 {
		t.Errorf("bus %d, want 2 (the secondary bus of root port hp1)", bus)
	}
}

// A device QEMU refuses leaves no netdev: it is deleted again, and the
// error carries QEMU's reason as a failed precondition.
func TestAttachNICRefused(t *testing.T) {
	v := hotplugVM(t, func(f *hpFake) error {
		c, err := f.expect("netdev_add", map[string]any{
			"type": "tap", "id": "hpnet0", "ifname": testNIC.Tap, "script": "no", "downscript": "no"})
		if err != nil {
			return err
		}
		f.reply(c, "{}")
		if c, err = f.recv(); err != nil || c.Execute != "device_add" {
			return fmt.Errorf("got %s (%v), want device_add", c.Execute, err)
		}
		f.fail(c, "GenericError", "Bus 'hp0' does not support hotplugging")
		if c, err = f.expect("netdev_del", map[string]any{"id": "hpnet0"}); err != nil {
			return err
		}
		f.reply(c, "{}")
		return nil
	})
	_, err := v.AttachNIC(testContext(t), 0, testNIC)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "does not support hotplugging") {
		t.Fatalf("err %v, want a failed precondition with QEMU's reason", err)
	}
}

// A NIC whose bus the firmware did not number cannot be named to a
// detach: it is taken out again, netdev and all.
func TestAttachNICUnnumbered(t *testing.T) {
	v := hotplugVM(t, func(f *hpFake) error {
		for _, want := range []string{"netdev_add", "device_add"} {
			c, err := f.recv()
			if err != nil || c.Execute != want {
				return fmt.Errorf("got %s (%v), want %s", c.Execute, err, want)
			}
			f.reply(c, "{}")
		}
		c, err := f.expect("query-pci", nil)
		if err != nil {
			return err
		}
		f.reply(c, `[{"bus": 0, "devices": [{"qdev_id": "hp0", "pci_bridge": {"bus": {"number": 0, "secondary": 0}}}]}]`)
		if c, err = f.expect("device_del", map[string]any{"id": "hpnic0"}); err != nil {
			return err
		}
		f.reply(c, "{}")
		f.event("DEVICE_DELETED", `{"device": "hpnic0"}`)
		if c, err = f.expect("netdev_del", map[string]any{"id": "hpnet0"}); err != nil {
			return err
		}
		f.reply(c, "{}")
		return nil
	})
	_, err := v.AttachNIC(testContext(t), 0, testNIC)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "did not number") {
		t.Fatalf("err %v, want a failed precondition: not numbered", err)
	}
}

// A tap QEMU cannot open fails at netdev_add: nothing more is sent.
func TestAttachNICTapBusy(t *testing.T) {
	v := hotplugVM(t, func(f *hpFake) error {
		c, err := f.recv()
		if err != nil || c.Execute != "netdev_add" {
			return fmt.Errorf("got %s (%v), want netdev_add", c.Execute, err)
		}
		f.fail(c, "GenericError", "could not configure /dev/net/tun (x): Device or resource busy")
		if c, err := f.recv(); err == nil {
			return fmt.Errorf("unexpected %s after a failed netdev_add", c.Execute)
		}
		return nil
	})
	_, err := v.AttachNIC(testContext(t), 0, testNIC)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "busy") {
		t.Fatalf("err %v, want a failed precondition: busy", err)
	}
}

// Bad slots, taps and MACs are refused before QEMU hears of them.
func TestAttachNICBadInput(t *testing.T) {
	v := hotplugVM(t, func(f *hpFake) error {
		if c, err := f.recv(); err == nil {
			return fmt.Errorf("unexpected %s", c.Execute)
		}
		return nil
	})
	for _, tc := range []struct {
		name string
		slot int
		nic  hypervisor.NIC
	}{
		{"slot below", -1, testNIC},
		{"slot above", hypervisor.HotplugSlots, testNIC},
		{"tap with a comma", 0, hypervisor.NIC{MAC: testNIC.MAC, Tap: "a,b"}},
		{"no tap", 0, hypervisor.NIC{MAC: testNIC.MAC}},
		{"tap too long", 0, hypervisor.NIC{MAC: testNIC.MAC, Tap: strings.Repeat("a", 16)}},
		{"multicast mac", 0, hypervisor.NIC{MAC: net.HardwareAddr{0x07, 1, 2, 3, 4, 5}, Tap: "t"}},
		{"short mac", 0, hypervisor.NIC{MAC: net.HardwareAddr{0x06, 1}, Tap: "t"}},
	} {
		if _, err := v.AttachNIC(testContext(t), tc.slot, tc.nic); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: err %v, want invalid argument", tc.name, err)
		}
	}
}

func TestDetachNIC(t *testing.T) {
	for _, eventFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("event before reply %v", eventFirst), func(t *testing.T) {
			v := hotplugVM(t, func(f *hpFake) error {
				c, err := f.expect("device_del", map[string]any{"id": "hpnic2"})
				if err != nil {
					return err
				}
				if eventFirst {
					f.event("DEVICE_DELETED", `{"device": "hpnic2", "path": "/machine/peripheral/hpnic2"}`)
					f.reply(c, "{}")
				} else {
					f.reply(c, "{}")
					// Another device's, and the backend's, which has
					// no id: neither is the one waited for.
					f.event("DEVICE_DELETED", `{"device": "hpnic1", "path": "/machine/peripheral/hpnic1"}`)
					f.event("DEVICE_DELETED", `{"path": "/machine/peripheral/hpnic2/virtio-backend"}`)
					f.event("DEVICE_DELETED", `{"device": "hpnic2", "path": "/machine/peripheral/hpnic2"}`)
				}
				if c, err = f.expect("netdev_del", map[string]any{"id": "hpnet2"}); err != nil {
					return err
				}
				f.reply(c, "{}")
				return nil
			})
			if err := v.DetachNIC(testContext(t), 2); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A guest that does not let go of the NIC: the wait ends with ctx,
// ErrNotDeleted, and the netdev is left for the NIC still there.
func TestDetachNICGuestIgnores(t *testing.T) {
	v := hotplugVM(t, func(f *hpFake) error {
		c, err := f.expect("device_del", map[string]any{"id": "hpnic0"})
		if err != nil {
			return err
		}
		f.reply(c, "{}")
		f.event("DEVICE_DELETED", `{"device": "hpnic1"}`)
		if c, err := f.recv(); err == nil {
			return fmt.Errorf("unexpected %s while the nic is still there", c.Execute)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := v.DetachNIC(ctx, 0)
	if !errors.Is(err, hypervisor.ErrNotDeleted) || !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("err %v, want ErrNotDeleted, unavailable", err)
	}
}

// A NIC and netdev already gone (a detach that timed out, then
// finished): the detach succeeds.
func TestDetachNICGone(t *testing.T) {
	v := hotplugVM(t, func(f *hpFake) error {
		c, err := f.expect("device_del", map[string]any{"id": "hpnic3"})
		if err != nil {
			return err
		}
		f.fail(c, "DeviceNotFound", "Device 'hpnic3' not found")
		if c, err = f.expect("netdev_del", map[string]any{"id": "hpnet3"}); err != nil {
			return err
		}
		f.fail(c, "GenericError", "Device 'hpnet3' not found")
		return nil
	})
	if err := v.DetachNIC(testContext(t), 3); err != nil {
		t.Fatal(err)
	}
}

// QEMU dies while the guest is asked to let go: the wait ends at once,
// unavailable.
func TestDetachNICQEMUDies(t *testing.T) {
	v := hotplugVM(t, func(f *hpFake) error {
		c, err := f.expect("device_del", map[string]any{"id": "hpnic0"})
		if err != nil {
			return err
		}
		f.reply(c, "{}")
		return f.conn.Close()
	})
	err := v.DetachNIC(testContext(t), 0)
	if !errors.Is(err, errdefs.ErrUnavailable) || !errors.Is(err, ErrDisconnected) {
		t.Fatalf("err %v, want unavailable: disconnected", err)
	}
}

func TestHotplugWithoutMonitor(t *testing.T) {
	v := &vm{log: slog.New(slog.DiscardHandler)}
	if _, err := v.AttachNIC(testContext(t), 0, testNIC); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("AttachNIC: %v, want unavailable", err)
	}
	if err := v.DetachUSB(testContext(t), 1); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("DetachUSB: %v, want unavailable", err)
	}
}

// The device node goes to QEMU with add-fd, as a descriptor of the same
// file; usb-host opens it through its fd set, which is removed after.
func TestAttachUSB(t *testing.T) {
	dev, err := os.Create(filepath.Join(t.TempDir(), "001"))
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	var want unix.Stat_t
	if err := unix.Fstat(int(dev.Fd()), &want); err != nil {
		t.Fatal(err)
	}
	v := hotplugVM(t, func(f *hpFake) error {
		c, err := f.expect("add-fd", nil)
		if err != nil {
			return err
		}
		if len(c.fds) != 1 {
			return fmt.Errorf("add-fd came with %d descriptors, want 1", len(c.fds))
		}
		var got unix.Stat_t
		if err := unix.Fstat(c.fds[0], &got); err != nil || got.Dev != want.Dev || got.Ino != want.Ino {
			return fmt.Errorf("add-fd's descriptor is not the device's file (%v)", err)
		}
		unix.Close(c.fds[0])
		f.reply(c, `{"fdset-id": 7, "fd": 42}`)
		if c, err = f.expect("device_add", map[string]any{
			"driver": "usb-host", "id": "hpusb5", "bus": "xhci.0", "port": "5", "hostdevice": "/dev/fdset/7"}); err != nil {
			return err
		}
		f.reply(c, "{}")
		if c, err = f.expect("remove-fd", map[string]any{"fdset-id": float64(7)}); err != nil {
			return err
		}
		f.reply(c, "{}")
		return nil
	})
	if err := v.AttachUSB(testContext(t), 5, dev); err != nil {
		t.Fatal(err)
	}
}

// A device QEMU cannot use: its fd set is removed all the same.
func TestAttachUSBRefused(t *testing.T) {
	dev, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	got := make(chan string, 8)
	v := hotplugVM(t, func(f *hpFake) error {
		for {
			c, err := f.recv()
			if err != nil {
				return nil
			}
			got <- c.Execute
			for _, fd := range c.fds {
				unix.Close(fd)
			}
			switch c.Execute {
			case "add-fd":
				f.reply(c, `{"fdset-id": 0, "fd": 9}`)
			case "device_add":
				f.fail(c, "GenericError", "failed to open /dev/fdset/0")
			default:
				f.reply(c, "{}")
			}
		}
	})
	err = v.AttachUSB(testContext(t), 1, dev)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "failed to open") {
		t.Fatalf("err %v, want a failed precondition with QEMU's reason", err)
	}
	// The fd set is removed before AttachUSB returns.
	var cmds []string
	for range 3 {
		cmds = append(cmds, <-got)
	}
	if want := []string{"add-fd", "device_add", "remove-fd"}; !slices.Equal(cmds, want) {
		t.Errorf("commands %v, want %v", cmds, want)
	}
}

func TestDetachUSB(t *testing.T) {
	v := hotplugVM(t, func(f *hpFake) error {
		c, err := f.expect("device_del", map[string]any{"id": "hpusb2"})
		if err != nil {
			return err
		}
		f.reply(c, "{}")
		f.event("DEVICE_DELETED", `{"device": "hpusb2", "path": "/machine/peripheral/hpusb2"}`)
		return nil
	})
	if err := v.DetachUSB(testContext(t), 2); err != nil {
		t.Fatal(err)
	}
	for _, port := range []int{0, hypervisor.USBPorts + 1} {
		if err := v.DetachUSB(testContext(t), port); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("port %d: err %v, want invalid argument", port, err)
		}
	}
}

func TestFindSecondaryBus(t *testing.T) {
	var buses []pciInfo
	if err := json.Unmarshal([]byte(testPCI), &buses); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]int{"hp0": 1, "hp1": 2} {
		if got, err := findSecondaryBus(buses, id); err != nil || got != want {
			t.Errorf("%s: %d, %v; want %d", id, got, err, want)
		}
	}
	if _, err := findSecondaryBus(buses, "hp3"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("missing port: %v, want failed precondition", err)
	}
	unnumbered := `[{"bus": 0, "devices": [{"qdev_id": "hp0", "pci_bridge": {"bus": {"number": 0, "secondary": 0}}}]}]`
	json.Unmarshal([]byte(unnumbered), &buses)
	if _, err := findSecondaryBus(buses, "hp0"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("unnumbered port: %v, want failed precondition", err)
	}
}

// q35 gets the hot-plug root ports and the USB controller; microvm none.
func TestCmdlineQ35Hotplug(t *testing.T) {
	dir := vmDir(t)
	cfg := Config{Config: hypervisor.Config{
		Name: "hp", Dir: dir, Machine: hypervisor.MachineQ35, Accel: hypervisor.AccelTCG,
		CPUs: 1, MemoryMiB: 256, Kernel: "/k",
	}}
	args, err := Cmdline(cfg)
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Join(args, " ")
	for _, want := range []string{
		"-M " + q35Machine,
		"-device pcie-root-port,id=hp0,bus=pcie.0,chassis=1",
		"-device pcie-root-port,id=hp3,bus=pcie.0,chassis=4",
		"-device qemu-xhci,id=xhci,p2=4,p3=4",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("q35 command line lacks %q:\n%s", want, line)
		}
	}
	cfg.Machine = hypervisor.MachineMicroVM
	args, err = Cmdline(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if line := strings.Join(args, " "); strings.Contains(line, "pcie-root-port") || strings.Contains(line, "xhci") {
		t.Errorf("microvm command line has hot-plug devices:\n%s", line)
	}
}

// FuzzSecondaryBus reads query-pci answers, which come from QEMU: any
// answer gives a bus of 1 to 255 or an error, never a panic.
func FuzzSecondaryBus(f *testing.F) {
	f.Add([]byte(testPCI), "hp1")
	f.Add([]byte(`[{"bus":0,"devices":[{"qdev_id":"hp0","pci_bridge":{"bus":{"secondary":300}}}]}]`), "hp0")
	f.Add([]byte(`[{"devices":[{"pci_bridge":{"devices":[{"qdev_id":"hp0","pci_bridge":{"bus":{"secondary":-1}}}]}}]}]`), "hp0")
	f.Fuzz(func(t *testing.T, data []byte, id string) {
		var buses []pciInfo
		if json.Unmarshal(data, &buses) != nil {
			return
		}
		n, err := findSecondaryBus(buses, id)
		if err == nil && (n < 1 || n > 255) {
			t.Fatalf("bus %d accepted", n)
		}
	})
}

// On a real q35 QEMU (a guest that only halts), the hot-plug machine
// starts with its root ports and USB controller, a descriptor passed
// with add-fd reaches usb-host through its fd set (which opens it, and
// refuses /dev/null as a USB device), the fd set's descriptor is closed
// again, and a detach of nothing is no error.
func TestHotplugRealQEMU(t *testing.T) {
	qemutest.SkipWithoutQEMU(t)
	dir := vmDir(t)
	cfg := haltConfig(t, dir)
	cfg.Machine = hypervisor.MachineQ35
	v := launch(t, testLauncher(t), cfg)
	var buses []pciInfo
	qmp, err := v.monitor()
	if err != nil {
		t.Fatal(err)
	}
	if err := qmp.Execute(testCtx(t), "query-pci", nil, &buses); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < hypervisor.HotplugSlots; i++ {
		// The firmware has not run: the ports are there, unnumbered.
		if _, err := findSecondaryBus(buses, rootPortID(i)); err == nil || !strings.Contains(err.Error(), "did not number") {
			t.Errorf("root port %d: %v", i, err)
		}
	}
	// QEMU closes a removed fd set's descriptors only while the VM runs
	// (monitor_fdset_cleanup); a paused one keeps them until the next
	// clean-up.
	if err := v.Resume(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	err = v.AttachUSB(testCtx(t), 1, null)
	// "failed to open /dev/fdset/N: ..." would be QEMU failing to open
	// the fd set; this is libusb refusing what it found there.
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "host usb device /dev/fdset/") {
		t.Errorf("AttachUSB of /dev/null: %v, want QEMU's usb-host refusing the device in the fd set", err)
	}
	var fdsets []struct {
		FDs []json.RawMessage `json:"fds"`
	}
	if err := qmp.Execute(testCtx(t), "query-fdsets", nil, &fdsets); err != nil {
		t.Fatal(err)
	}
	for _, set := range fdsets {
		if len(set.FDs) != 0 {
			t.Errorf("an fd set still holds descriptors after the attach: %s", set.FDs)
		}
	}
	if err := v.DetachUSB(testCtx(t), 1); err != nil {
		t.Errorf("DetachUSB of nothing: %v", err)
	}
	if err := v.DetachNIC(testCtx(t), 0); err != nil {
		t.Errorf("DetachNIC of nothing: %v", err)
	}
}
