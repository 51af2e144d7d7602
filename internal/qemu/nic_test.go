package qemu

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/network/netnstest"
	"github.com/cabinvm/cabin/internal/qemu/qemutest"
)

// QEMU 7.2 starts with a NIC on the user-mode network, its addresses
// spelled out (the build has slirp), and the guest's device has its MAC.
func TestLaunchWithUserNIC(t *testing.T) {
	qemutest.SkipWithoutQEMU(t)
	cfg := haltConfig(t, vmDir(t))
	cfg.NICs = []hypervisor.NIC{{MAC: testMAC}}
	v := launch(t, testLauncher(t), cfg)
	if s := queryStatus(t, v); s != "prelaunch" {
		t.Errorf("status %q", s)
	}
	assertGuestMAC(t, v, testMAC)
}

// QEMU starts with a NIC on an existing tap, which it attaches to (the
// tap's carrier comes on) without making or configuring it; in a network
// namespace of the test's own.
func TestLaunchWithTapNIC(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	qemutest.SkipWithoutQEMU(t)
	tap := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: "cbntest0"},
		Mode:      netlink.TUNTAP_MODE_TAP,
		Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
	}
	if err := netlink.LinkAdd(tap); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(tap); err != nil {
		t.Fatal(err)
	}
	cfg := haltConfig(t, vmDir(t))
	cfg.NICs = []hypervisor.NIC{{MAC: testMAC, Tap: "cbntest0"}}
	v := launch(t, testLauncher(t), cfg)
	assertGuestMAC(t, v, testMAC)
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := netlink.LinkByName("cbntest0")
		if err != nil {
			t.Fatal(err)
		}
		if l.Attrs().OperState == netlink.OperUp {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tap is %s with QEMU running: QEMU is not on it", l.Attrs().OperState)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// QEMU made no tap of its own.
	links, _ := netlink.LinkList()
	for _, l := range links {
		if l.Type() == "tuntap" && l.Attrs().Name != "cbntest0" {
			t.Errorf("another tap: %s", l.Attrs().Name)
		}
	}
}

// assertGuestMAC checks, over QMP, that the guest's first NIC has mac.
func assertGuestMAC(t *testing.T, v *vm, mac net.HardwareAddr) {
	t.Helper()
	qmp, err := v.monitor()
	if err != nil {
		t.Fatal(err)
	}
	var got string
	if err := qmp.Execute(testCtx(t), "human-monitor-command", map[string]string{"command-line": "info network"}, &got); err != nil {
		t.Fatal(err)
	}
	if want := "macaddr=" + mac.String(); !strings.Contains(got, want) {
		t.Errorf("info network:\n%s\nwant %s", got, want)
	}
}
