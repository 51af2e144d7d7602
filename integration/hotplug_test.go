package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/statedir"
)

// nsCabind runs a cabind of its own with --net tap in a network namespace
// the test makes (named after tag), so that its taps are never the
// host's, with the guest image the shared cabind built. inNS runs ip in
// the namespace.
func nsCabind(t *testing.T, e *env, tag string) (c *env, inNS func(args ...string) (string, error)) {
	t.Helper()
	for _, p := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("needs %s (iproute2, util-linux): %v", p, err)
		}
	}
	ns := fmt.Sprintf("cit-%s-%d", tag, os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Skipf("cannot make a network namespace here: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", ns).CombinedOutput(); err != nil {
			t.Errorf("delete the network namespace %s: %v: %s", ns, err, out)
		}
	})
	inNS = func(args ...string) (string, error) {
		out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := inNS("link", "set", "lo", "up"); err != nil {
		t.Fatalf("loopback up in %s: %v: %s", ns, err, out)
	}
	dir, err := os.MkdirTemp("", "cht")
	if err != nil {
		t.Fatal(err)
	}
	reapAfter(dir)
	t.Cleanup(func() { os.RemoveAll(dir) })
	c = &env{
		dir: dir, bin: e.bin,
		stateDir: filepath.Join(dir, "state"),
		socket:   filepath.Join(dir, "cabind.sock"),
		logPath:  filepath.Join(dir, "cabind.log"),
		wrap:     []string{"nsenter", "--net=" + filepath.Join("/run/netns", ns), "--"},
		net:      "tap",
	}
	if err := os.MkdirAll(c.stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", filepath.Join(e.stateDir, "image"), c.stateDir).CombinedOutput(); err != nil {
		t.Fatalf("copy the guest image: %v: %s", err, out)
	}
	if err := c.startDaemon(testContext(t, 3*time.Minute)); err != nil {
		log, _ := os.ReadFile(c.logPath)
		t.Fatalf("start cabind in %s: %v\n%s", ns, err, log)
	}
	t.Cleanup(func() {
		if c.daemonRunning() {
			if err := c.stopDaemon(); err != nil {
				t.Errorf("stop the namespace's cabind: %v", err)
			}
		}
		if left := killQEMUs(c.stateDir); len(left) > 0 {
			t.Errorf("QEMU processes %v of the namespace's cabind were left running; killed them", left)
		}
		if c.cc != nil {
			c.cc.Close()
		}
		if t.Failed() {
			log, _ := os.ReadFile(c.logPath)
			t.Logf("the namespace's cabind's log:\n%s", log)
		}
	})
	return c, inNS
}

// bootHotplugVM starts the VM name with hot-plug through cabin.v1 and
// waits until it is up; it returns its pid and how long the boot took.
func bootHotplugVM(ctx context.Context, cc grpc.ClientConnInterface, name string, hotplug bool) (int, time.Duration, error) {
	w, err := watchEvents(ctx, cc, name)
	if err != nil {
		return 0, 0, err
	}
	defer w.close()
	start := time.Now()
	resp, err := cabinv1.NewVmsClient(cc).StartVm(ctx, &cabinv1.StartVmRequest{
		Request: &concierge.StartVmRequest{Name: name, Cpus: 1}, Hotplug: hotplug})
	if err != nil {
		return 0, 0, fmt.Errorf("StartVm %s: %w", name, err)
	}
	if !resp.GetSuccess() {
		return 0, 0, fmt.Errorf("StartVm %s: %s", name, resp.GetFailureReason())
	}
	ev, err := w.next(bootTimeout, func(ev *cabinv1.Event) bool {
		return ev.GetVmStarted() != nil || ev.GetVmStopped() != nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("boot %s: %w", name, err)
	}
	if ev.GetVmStopped() != nil {
		return 0, 0, fmt.Errorf("boot %s: stopped while starting (%v)", name, ev.GetVmStopped().GetReason())
	}
	return int(resp.GetVmInfo().GetPid()), time.Since(start), nil
}

// guestLinks is the guest's `ip -o link` output.
func guestLinks(t *testing.T, c *env, name string) string {
	return mustExec(t, c, name, "ip", "-o", "link")
}

// waitGuest polls the guest's links until has says yes, for at most
// 30 s: a PCI device appears (and goes) in the guest some time after
// QEMU has it.
func waitGuest(t *testing.T, c *env, name string, has func(links string) bool) (string, bool) {
	var links string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if links = guestLinks(t, c, name); has(links) {
			return links, true
		}
	}
	return links, false
}

// TestHotplugNIC plugs NICs into a q35 VM started with hot-plug, as a
// client of the seed protos would (AttachNetDevice/DetachNetDevice): the
// guest sees each on the bus the call answers, and not after it is
// unplugged; the tap cabind made goes with it, a caller's own tap stays;
// a restarted cabind still unplugs what the last one plugged. Killed
// with SIGKILL with a NIC in, the VM's tap is removed and a VM of the
// name starts again. Refusals: a microvm VM, a missing tap, no such USB
// device; ListUsbDevices answers an empty list.
func TestHotplugNIC(t *testing.T) {
	e := needEnv(t)
	c, inNS := nsCabind(t, e, "hp")
	const name, micro = "cit-hp", "cit-hp-micro"
	ctx := testContext(t, 10*time.Minute)
	pid, q35Boot, err := bootHotplugVM(ctx, c.cc, name, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if c.daemonRunning() && listed(t, c, name) {
			stopVM(t, c, name)
		}
	})
	_, microBoot, err := bootHotplugVM(ctx, c.cc, micro, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("boot to started: q35 with hot-plug %v, microvm %v", q35Boot.Round(time.Millisecond), microBoot.Round(time.Millisecond))
	client := concierge.NewVmConciergeClient(c.cc)

	// A microvm VM has nothing to plug into.
	_, err = client.AttachNetDevice(ctx, &concierge.AttachNetDeviceRequest{VmName: micro})
	wantCode(t, err, codes.FailedPrecondition, "microvm", "hot-plug")
	vms := cabinv1.NewVmsClient(c.cc)
	_, err = vms.AttachUsbDevice(ctx, &cabinv1.AttachUsbDeviceRequest{VmName: micro, DevicePath: "/dev/bus/usb/001/001"})
	wantCode(t, err, codes.FailedPrecondition, "microvm", "hot-plug")
	stopVM(t, c, micro)

	before := guestLinks(t, c, name)
	resp, err := client.AttachNetDevice(ctx, &concierge.AttachNetDeviceRequest{VmName: name})
	if err != nil || !resp.GetSuccess() {
		t.Fatalf("AttachNetDevice: %v, %v", resp, err)
	}
	bus := resp.GetGuestBus()
	if bus == 0 || bus > 255 {
		t.Errorf("guest_bus %d, want a bus behind a root port (1 to 255)", bus)
	}
	tap := "cbh" + statedir.VMID("", name)[:10] + "00"
	if out, err := inNS("-o", "link", "show", "dev", tap); err != nil || !strings.Contains(out, "UP") {
		t.Errorf("tap %s in the namespace: %v: %q; want it up", tap, err, out)
	}
	mac := "link/ether 06:" + statedir.VMID("", name)[:2] // the first byte of the VM's id follows 06
	links, ok := waitGuest(t, c, name, func(l string) bool { return strings.Count(l, "link/ether") > strings.Count(before, "link/ether") })
	if !ok {
		t.Fatalf("the guest has no new interface 30 s after AttachNetDevice:\n%s", links)
	}
	if !strings.Contains(links, mac) {
		t.Errorf("the guest's new interface has not the MAC cabind gave it (%s...):\n%s", mac, links)
	}
	// The bus the call answered is where the guest found it.
	if nets := mustExec(t, c, name, "ls", "-l", "/sys/class/net/"); !strings.Contains(nets, fmt.Sprintf("/0000:%02x:00.0/", bus)) {
		t.Errorf("no interface of the guest is on bus %d:\n%s", bus, nets)
	}

	// A caller's own tap: used, and left to it.
	if out, err := inNS("tuntap", "add", "dev", "cit-own", "mode", "tap"); err != nil {
		t.Fatalf("make a tap: %v: %s", err, out)
	}
	own, err := client.AttachNetDevice(ctx, &concierge.AttachNetDeviceRequest{VmName: name, TapName: "cit-own"})
	if err != nil || !own.GetSuccess() || own.GetGuestBus() == bus {
		t.Fatalf("AttachNetDevice of the caller's tap: %v, %v", own, err)
	}
	_, err = client.AttachNetDevice(ctx, &concierge.AttachNetDeviceRequest{VmName: name, TapName: "cit-none"})
	wantCode(t, err, codes.NotFound, "cit-none")
	_, err = client.AttachNetDevice(ctx, &concierge.AttachNetDeviceRequest{VmName: name, TapName: "bad,name"})
	wantCode(t, err, codes.InvalidArgument, "tap_name")

	// A restarted cabind unplugs what the last one plugged.
	if err := c.stopDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := c.startDaemon(ctx); err != nil {
		t.Fatal(err)
	}
	client, vms = concierge.NewVmConciergeClient(c.cc), cabinv1.NewVmsClient(c.cc)
	for _, b := range []uint32{bus, own.GetGuestBus()} {
		var det *concierge.SuccessFailureResponse
		// The VM is taken back in the background; calls about it wait.
		det, err = client.DetachNetDevice(ctx, &concierge.DetachNetDeviceRequest{VmName: name, GuestBus: b})
		if err != nil || !det.GetSuccess() {
			t.Fatalf("DetachNetDevice bus %d after a restart: %v, %v", b, det, err)
		}
	}
	if links, ok := waitGuest(t, c, name, func(l string) bool { return strings.Count(l, "link/ether") == strings.Count(before, "link/ether") }); !ok {
		t.Errorf("the guest still has the unplugged interfaces 30 s later:\n%s", links)
	}
	if out, err := inNS("link", "show", "dev", tap); err == nil {
		t.Errorf("tap %s still there after DetachNetDevice:\n%s", tap, out)
	}
	if _, err := inNS("link", "show", "dev", "cit-own"); err != nil {
		t.Errorf("the caller's tap went with its NIC: %v", err)
	}
	_, err = client.DetachNetDevice(ctx, &concierge.DetachNetDeviceRequest{VmName: name, GuestBus: bus})
	wantCode(t, err, codes.NotFound, "bus")

	// USB: the guest drives the controller (its root hubs are there), so
	// a device passed in would be found. No such device (this host has no
	// bus 255), bad input, an empty list.
	if out := mustExec(t, c, name, "ls", "/sys/bus/usb/devices"); !strings.Contains(out, "usb1") || !strings.Contains(out, "usb2") {
		t.Errorf("the guest has no USB root hubs (xhci_pci): /sys/bus/usb/devices holds %q", out)
	}
	_, err = client.AttachUsbDevice(ctx, &concierge.AttachUsbDeviceRequest{VmName: name, BusNumber: 255, PortNumber: 255})
	wantCode(t, err, codes.NotFound, "port 255 of bus 255")
	_, err = client.AttachUsbDevice(ctx, &concierge.AttachUsbDeviceRequest{VmName: name, BusNumber: 0, PortNumber: 1})
	wantCode(t, err, codes.InvalidArgument, "bus_number")
	_, err = client.AttachUsbDevice(ctx, &concierge.AttachUsbDeviceRequest{VmName: name, BusNumber: 1, PortNumber: 300})
	wantCode(t, err, codes.InvalidArgument, "port_number")
	_, err = vms.AttachUsbDevice(ctx, &cabinv1.AttachUsbDeviceRequest{VmName: name, DevicePath: "/dev/null"})
	wantCode(t, err, codes.InvalidArgument, "device_path")
	_, err = vms.AttachUsbDevice(ctx, &cabinv1.AttachUsbDeviceRequest{VmName: name, DevicePath: "/dev/bus/usb/255/255"})
	wantCode(t, err, codes.NotFound, "no such device")
	list, err := client.ListUsbDevices(ctx, &concierge.ListUsbDeviceRequest{VmName: name})
	if err != nil || !list.GetSuccess() || len(list.GetUsbDevices()) != 0 {
		t.Errorf("ListUsbDevices: %v, %v; want success and none", list, err)
	}
	_, err = client.DetachUsbDevice(ctx, &concierge.DetachUsbDeviceRequest{VmName: name, GuestPort: 1})
	wantCode(t, err, codes.NotFound, "port 1")

	// SIGKILL with a NIC in: its tap goes, and the name starts again.
	if resp, err = client.AttachNetDevice(ctx, &concierge.AttachNetDeviceRequest{VmName: name}); err != nil || !resp.GetSuccess() {
		t.Fatalf("AttachNetDevice again: %v, %v", resp, err)
	}
	w, err := watchEvents(ctx, c.cc, name)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	pid = int(vmInfo(t, c, name).GetVmInfo().GetPid())
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ev, err := w.next(30*time.Second, func(ev *cabinv1.Event) bool { return ev.GetVmStopped() != nil })
	if err != nil {
		t.Fatal(err)
	}
	if r := ev.GetVmStopped().GetReason(); r != concierge.VmStopReason_VM_EXITED {
		t.Errorf("stop reason %v, want VM_EXITED", r)
	}
	if out, err := inNS("link", "show", "dev", tap); err == nil {
		t.Errorf("tap %s of a killed VM still there:\n%s", tap, out)
	}
	if _, _, err := bootHotplugVM(ctx, c.cc, name, true); err != nil {
		t.Fatalf("a new VM of the name: %v", err)
	}
}
