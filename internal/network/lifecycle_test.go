package network

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/network/netnstest"
	"github.com/cabinvm/cabin/internal/qemu"
	"github.com/cabinvm/cabin/internal/qemu/qemutest"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
	"github.com/cabinvm/cabin/internal/statedir/statedirtest"
	"github.com/cabinvm/cabin/internal/vmm"
)

// haltKernel gives every VM the test's halting kernel: QEMU runs, the
// guest does nothing, no agent reports in.
type haltKernel struct{ path string }

func (haltKernel) Name() string { return "kernel" }

func (k haltKernel) Prepare(_ context.Context, _ resource.VM, cfg *hypervisor.Config) (resource.Hold, error) {
	cfg.Kernel = k.path
	return nopHold{}, nil
}

func (haltKernel) Adopt(context.Context, resource.VM, json.RawMessage) (resource.Hold, error) {
	return nopHold{}, nil
}

type nopHold struct{}

func (nopHold) State() json.RawMessage        { return nil }
func (nopHold) Release(context.Context) error { return nil }

// noGuests links to no agent.
type noGuests struct{}

func (noGuests) Dial(resource.VM) vmm.GuestLink { return noLink{} }

// noLink is a link whose calls fail at once. The VM manager makes no
// other calls of a guest that never reported in.
type noLink struct{ vmm.GuestLink }

var errNoAgent = errors.New("no agent in this test")

func (noLink) SetTime(context.Context, time.Time) error                 { return errNoAgent }
func (noLink) SetTimezone(context.Context, string) error                { return errNoAgent }
func (noLink) Shutdown(context.Context) error                           { return errNoAgent }
func (noLink) ConfigureNetwork(context.Context, vmm.GuestNetwork) error { return errNoAgent }
func (noLink) SetDNS(context.Context, vmm.DNS) error                    { return errNoAgent }
func (noLink) Close()                                                   {}

// cabind is a VM manager running real QEMU with the network resource,
// as cabind's composition root builds it.
type cabind struct {
	m   *vmm.Manager
	net *Resource
}

// openCabind starts a "cabind" on root; it detaches from its VMs when
// the test ends, unless closed before.
func openCabind(t *testing.T, root statedir.Root, kernel string) *cabind {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	r := newTapResource(t, root, testLog(t))
	m, err := vmm.New(vmm.Options{
		Root: root, Launcher: &qemu.Launcher{Log: log},
		Resources: []resource.Kind{haltKernel{kernel}, r}, Guests: noGuests{},
		Accel: hypervisor.AccelTCG, Host: vmm.Host{CPUs: 2, MemoryMiB: 1024}, DefaultMemoryMiB: 64, Log: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	if err := m.Adopt(context.Background()); err != nil {
		t.Fatal(err)
	}
	return &cabind{m: m, net: r}
}

// start starts the VM name on the network asked for, and returns its
// QEMU's pid.
func (c *cabind) start(t *testing.T, name, network string) int {
	t.Helper()
	info, _, err := c.m.Start(context.Background(), vmm.Spec{
		Key: vmm.Key{Name: name}, CPUs: 1, MemoryMiB: 64, Network: network,
		// The halting kernel never reports in.
		Timeout: 10 * time.Minute,
	})
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	return info.PID
}

// await waits for the VM name's event of kind.
func await(t *testing.T, events <-chan vmm.Event, kind vmm.EventKind, name string) {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.Kind == kind && ev.Info.Key.Name == name {
				return
			}
		case <-timeout:
			t.Fatalf("no event %v for %s", kind, name)
		}
	}
}

// qemuNetdev is the -netdev argument QEMU pid was started with.
func qemuNetdev(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(string(b), "\x00")
	if i := slices.Index(args, "-netdev"); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}

// assertAttached checks that a QEMU holds the tap: the kernel puts a
// tap's carrier on only while a queue is attached.
func assertAttached(t *testing.T, tap string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := netlink.LinkByName(tap)
		if err != nil {
			t.Fatalf("tap %s: %v", tap, err)
		}
		if l.Attrs().OperState == netlink.OperUp {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("tap %s is %s: no QEMU on it", tap, l.Attrs().OperState)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Through the VM manager with real QEMU: a VM's QEMU is on its tap; a
// QEMU killed with SIGKILL has its tap and subnet released, and a new VM
// of the same name gets them again; a restarted cabind keeps the subnets
// of the VMs it adopts and releases them when they stop. A VM on the
// user-mode network starts with a user netdev.
func TestVMLifecycle(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	qemutest.SkipWithoutQEMU(t)
	root := statedirtest.New(t)
	kernel := qemutest.HaltKernel(t)
	c := openCabind(t, root, kernel)
	events, cancel := c.m.Subscribe()
	defer cancel()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c.m.StopAll(ctx, nil)
	})

	idA := statedir.VMID("", "a")
	tapA := tapName(idA)
	pid := c.start(t, "a", "")
	if got, want := qemuNetdev(t, pid), "tap,id=net0,ifname="+tapA+",script=no,downscript=no,vhost=off"; got != want {
		t.Errorf("QEMU's netdev %q, want %q", got, want)
	}
	assertAttached(t, tapA)
	if info, err := c.m.Get(vmm.Key{Name: "a"}); err != nil || info.IPv4.String() != "100.115.92.26" {
		t.Errorf("info: address %v (%v), want 100.115.92.26", info.IPv4, err)
	}

	upid := c.start(t, "u", vmm.NetworkUser)
	if got := qemuNetdev(t, upid); !strings.HasPrefix(got, "user,id=net0,") {
		t.Errorf("a user-mode VM's netdev %q", got)
	}
	if info, _ := c.m.Get(vmm.Key{Name: "u"}); info.IPv4.String() != "10.0.2.15" {
		t.Errorf("a user-mode VM's address %v", info.IPv4)
	}

	// Killed: its tap and subnet go once the manager sees it stop.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	await(t, events, vmm.EventStopped, "a")
	assertNoTap(t, tapA)
	if got := c.net.alloc.list(); len(got) != 0 {
		t.Errorf("held after a's QEMU was killed: %v", got)
	}
	// A new VM of the same name gets working network: its tap, attached.
	c.start(t, "a", "")
	assertAttached(t, tapA)
	if addrs, up := tapAddrs(t, tapA); len(addrs) != 1 || addrs[0] != "100.115.92.25/30" || !up {
		t.Errorf("tap %s: %v, up %v", tapA, addrs, up)
	}

	// cabind restarts: the VMs live on, and the new cabind keeps a's
	// subnet while it adopts it.
	c.m.Close()
	// What cabind made stays when it stops: the tap, with its QEMU on
	// it, and the NAT table.
	assertAttached(t, tapA)
	ruleset(t)
	c = openCabind(t, root, kernel)
	events2, cancel2 := c.m.Subscribe()
	defer cancel2()
	if got := c.net.alloc.holder(DefaultPool.Subnet(0)); got != idA {
		t.Errorf("after the restart the first subnet is held by %q, want a's %q", got, idA)
	}
	c.start(t, "b", vmm.NetworkTap)
	if info, _ := c.m.Get(vmm.Key{Name: "b"}); info.IPv4.String() != "100.115.92.30" {
		t.Errorf("b's address %v, want the second subnet's", info.IPv4)
	}
	if info, err := c.m.Get(vmm.Key{Name: "a"}); err != nil || !info.Adopted || info.IPv4.String() != "100.115.92.26" {
		t.Errorf("a after the restart: %+v, %v", info, err)
	}
	ctx, cancelStop := context.WithTimeout(context.Background(), time.Minute)
	defer cancelStop()
	if err := c.m.Stop(ctx, vmm.Key{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	await(t, events2, vmm.EventStopped, "a")
	assertNoTap(t, tapA)
	if got := c.net.alloc.list(); len(got) != 1 || got[0] != DefaultPool.Subnet(1) {
		t.Errorf("held after a stopped: %v, want b's only", got)
	}
	if err := c.m.StopAll(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if got := c.net.alloc.list(); len(got) != 0 {
		t.Errorf("held after every VM stopped: %v", got)
	}
	assertNoTap(t, tapName(statedir.VMID("", "b")))
}
