package vmm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
)

// hpVM is a fake VM that takes devices, as a q35 QEMU does: it records
// each call, numbers a slot's bus 10+slot, and fails where told.
type hpVM struct {
	*fakeVM
	l *hpLauncher
}

func (v *hpVM) AttachNIC(_ context.Context, slot int, nic hypervisor.NIC) (int, error) {
	if err := v.l.call(fmt.Sprintf("attach nic %d %s %s", slot, nic.Tap, nic.MAC)); err != nil {
		return 0, err
	}
	return 10 + slot, nil
}

func (v *hpVM) DetachNIC(ctx context.Context, slot int) error {
	return v.l.call(fmt.Sprintf("detach nic %d", slot))
}

func (v *hpVM) AttachUSB(_ context.Context, port int, dev *os.File) error {
	return v.l.call(fmt.Sprintf("attach usb %d", port))
}

func (v *hpVM) DetachUSB(_ context.Context, port int) error {
	return v.l.call(fmt.Sprintf("detach usb %d", port))
}

// hpLauncher launches hpVMs for q35 configs, fakeVMs for the rest.
type hpLauncher struct {
	*fakeLauncher
	mu    sync.Mutex
	calls []string
	fail  error // what the next hot-plug call fails with
}

func (l *hpLauncher) call(s string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.fail; err != nil {
		l.fail = nil
		return err
	}
	l.calls = append(l.calls, s)
	return nil
}

func (l *hpLauncher) callsSoFar() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.calls)
}

func (l *hpLauncher) wrap(hv hypervisor.VM, err error) (hypervisor.VM, error) {
	if err != nil {
		return nil, err
	}
	f := hv.(*fakeVM)
	if f.cfg.Machine == hypervisor.MachineQ35 {
		return &hpVM{fakeVM: f, l: l}, nil
	}
	return f, nil
}

func (l *hpLauncher) Launch(ctx context.Context, c hypervisor.Claim, cfg hypervisor.Config) (hypervisor.VM, error) {
	return l.wrap(l.fakeLauncher.Launch(ctx, c, cfg))
}

func (l *hpLauncher) Adopt(ctx context.Context, dir statedir.VMDir, start uint64) (hypervisor.VM, error) {
	return l.wrap(l.fakeLauncher.Adopt(ctx, dir, start))
}

// fakeTaps makes taps in a set; "theirs" is a tap of uid 1000's.
type fakeTaps struct {
	mu   sync.Mutex
	taps map[string]bool
}

func (*fakeTaps) Name() string { return "taps" }
func (*fakeTaps) Prepare(context.Context, resource.VM, *hypervisor.Config) (resource.Hold, error) {
	return nopHold{}, nil
}
func (*fakeTaps) Adopt(context.Context, resource.VM, json.RawMessage) (resource.Hold, error) {
	return nopHold{}, nil
}

func (f *fakeTaps) MakeHotplugTap(vm resource.VM, slot int) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := fmt.Sprintf("cbh%s%02x", filepath.Base(vm.Dir.Path())[:10], slot)
	f.taps[name] = true
	return name, nil
}

func (f *fakeTaps) RemoveHotplugTap(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.taps, name)
	return nil
}

func (f *fakeTaps) CheckTap(name string, c *caller.Caller) error {
	if name != "theirs" {
		return errdefs.Errorf(errdefs.ErrNotFound, "no tap %q", name)
	}
	if !c.Trusted() && c.UID != 1000 {
		return errdefs.Errorf(errdefs.ErrPermissionDenied, "not the caller's")
	}
	return nil
}

func (f *fakeTaps) list() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for n := range f.taps {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

type hpEnv struct {
	*env
	hl   *hpLauncher
	taps *fakeTaps
}

func newHotplugEnv(t *testing.T) *hpEnv {
	e := newEnv(t)
	e.m.Close()
	h := &hpEnv{env: e, hl: &hpLauncher{fakeLauncher: e.launcher}, taps: &fakeTaps{taps: map[string]bool{}}}
	h.reopen()
	return h
}

// reopen starts a new manager on the env's state dir, as a restarted
// cabind.
func (h *hpEnv) reopen() {
	h.t.Helper()
	opts := h.options()
	opts.Launcher = h.hl
	opts.Resources = append(opts.Resources, h.taps)
	opts.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := New(opts)
	if err != nil {
		h.t.Fatal(err)
	}
	m.ladder = ladder{shutdownRPC: 2 * time.Second, step: 200 * time.Millisecond}
	h.m = m
	h.t.Cleanup(m.Close)
	if err := m.Adopt(context.Background()); err != nil {
		h.t.Fatal(err)
	}
	settle(h.t, m)
}

// startRunning starts a VM and waits until it runs.
func (h *hpEnv) startRunning(s Spec) {
	h.t.Helper()
	events, cancel := watch(h.m)
	defer cancel()
	if _, _, err := h.m.Start(context.Background(), s); err != nil {
		h.t.Fatal(err)
	}
	events.await(h.t, EventStarted, s.Name)
}

func hotplugSpec(name string) Spec { s := spec(name); s.Hotplug = true; return s }

// A VM that asks for hot-plug runs on q35; NICs go into free slots, with
// taps cabind makes or the caller's own, and come out by bus, their
// taps removed with them; the record keeps them across a restart.
func TestHotplugNIC(t *testing.T) {
	h := newHotplugEnv(t)
	h.startRunning(hotplugSpec("hp"))
	key := Key{Name: "hp"}
	f := h.launcher.get(h.root.VM(statedir.VMID("", "hp")))
	if f.cfg.Machine != hypervisor.MachineQ35 {
		t.Fatalf("machine %q, want q35", f.cfg.Machine)
	}
	ctx := context.Background()
	own, err := h.m.AttachNIC(ctx, key, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if own.Bus != 10 || !own.OwnTap || !strings.HasPrefix(own.Tap, "cbh") || own.MAC[0] != 0x06 || own.MAC[5] != 0 {
		t.Errorf("first nic %+v", own)
	}
	theirs, err := h.m.AttachNIC(ctx, key, "theirs", &caller.Caller{UID: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if theirs.Bus != 11 || theirs.OwnTap || theirs.Tap != "theirs" {
		t.Errorf("second nic %+v", theirs)
	}
	if got := h.taps.list(); !slices.Equal(got, []string{own.Tap}) {
		t.Errorf("taps %q, want only cabind's own %q", got, own.Tap)
	}
	// The same tap twice is refused; so is a tap the caller may not use.
	if _, err := h.m.AttachNIC(ctx, key, "theirs", nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("same tap twice: %v", err)
	}
	if _, err := h.m.AttachNIC(ctx, key, "other", nil); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("missing tap: %v", err)
	}

	// A restarted cabind knows them.
	h.m.Close()
	h.reopen()
	devs, err := h.m.NetDevices(key)
	if err != nil || len(devs) != 2 || devs[0].Bus != 10 || devs[1].Bus != 11 {
		t.Fatalf("after a restart: %+v, %v", devs, err)
	}
	if err := h.m.DetachNIC(ctx, key, 10); err != nil {
		t.Fatal(err)
	}
	if got := h.taps.list(); len(got) != 0 {
		t.Errorf("taps after detaching cabind's nic: %q", got)
	}
	if err := h.m.DetachNIC(ctx, key, 10); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("detach twice: %v", err)
	}
	// The freed slot is taken again.
	if again, err := h.m.AttachNIC(ctx, key, "", nil); err != nil || again.Bus != 10 {
		t.Errorf("attach again: %+v, %v", again, err)
	}
	want := []string{
		"attach nic 0 " + own.Tap + " " + own.MAC.String(),
		"attach nic 1 theirs " + theirs.MAC.String(),
		"detach nic 0",
		"attach nic 0 " + own.Tap + " " + own.MAC.String(),
	}
	if got := h.hl.callsSoFar(); !slices.Equal(got, want) {
		t.Errorf("calls\n%q\nwant\n%q", got, want)
	}
}

// Slots run out; a failed plug removes the tap it made; a guest that
// does not let go keeps the NIC, and its tap.
func TestHotplugNICFailures(t *testing.T) {
	h := newHotplugEnv(t)
	h.startRunning(hotplugSpec("hp"))
	key := Key{Name: "hp"}
	ctx := context.Background()
	h.hl.fail = errdefs.Errorf(errdefs.ErrFailedPrecondition, "qemu says no")
	if _, err := h.m.AttachNIC(ctx, key, "", nil); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("refused attach: %v", err)
	}
	if got := h.taps.list(); len(got) != 0 {
		t.Errorf("a refused attach left taps %q", got)
	}
	for i := 0; i < hypervisor.HotplugSlots; i++ {
		if _, err := h.m.AttachNIC(ctx, key, "", nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.m.AttachNIC(ctx, key, "", nil); !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Errorf("a nic past the slots: %v", err)
	}
	h.hl.fail = fmt.Errorf("hpnic0: %w", hypervisor.ErrNotDeleted)
	if err := h.m.DetachNIC(ctx, key, 10); !errors.Is(err, hypervisor.ErrNotDeleted) {
		t.Errorf("a guest that holds on: %v", err)
	}
	if devs, _ := h.m.NetDevices(key); len(devs) != hypervisor.HotplugSlots {
		t.Errorf("nics after a failed detach: %d", len(devs))
	}
	if got := h.taps.list(); len(got) != hypervisor.HotplugSlots {
		t.Errorf("taps after a failed detach: %q", got)
	}
}

// The VM's taps go with it, however it ends; a new VM of the name starts.
func TestHotplugTapsReleasedWithVM(t *testing.T) {
	h := newHotplugEnv(t)
	h.startRunning(hotplugSpec("hp"))
	key := Key{Name: "hp"}
	if _, err := h.m.AttachNIC(context.Background(), key, "", nil); err != nil {
		t.Fatal(err)
	}
	events, cancel := watch(h.m)
	defer cancel()
	h.launcher.get(h.root.VM(statedir.VMID("", "hp"))).Signal(9)
	if ev := events.await(t, EventStopped, "hp"); ev.Reason != StopExited {
		t.Errorf("stop reason %v", ev.Reason)
	}
	if got := h.taps.list(); len(got) != 0 {
		t.Errorf("taps of a killed vm: %q", got)
	}
	h.startRunning(hotplugSpec("hp"))
	if devs, err := h.m.NetDevices(key); err != nil || len(devs) != 0 {
		t.Errorf("nics of the new vm: %+v, %v", devs, err)
	}
}

// A microvm refuses, naming why; so does a VM not running, and an
// unknown one.
func TestHotplugRefusals(t *testing.T) {
	h := newHotplugEnv(t)
	h.startRunning(spec("micro"))
	ctx := context.Background()
	_, err := h.m.AttachNIC(ctx, Key{Name: "micro"}, "", nil)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "microvm") || !strings.Contains(err.Error(), "hot-plug") {
		t.Errorf("microvm: %v", err)
	}
	if err := h.m.DetachUSB(ctx, Key{Name: "micro"}, 1); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("microvm usb: %v", err)
	}
	if devs, err := h.m.USBDevices(ctx, Key{Name: "micro"}); err != nil || len(devs) != 0 {
		t.Errorf("microvm usb list: %v, %v", devs, err)
	}
	if _, err := h.m.AttachNIC(ctx, Key{Name: "nope"}, "", nil); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("unknown vm: %v", err)
	}
	if _, err := h.m.AttachNIC(ctx, Key{Name: "micro"}, "a,b", nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("bad tap name: %v", err)
	}

	// Starting: the guest has not reported in.
	h.guests.reportReady = false
	if _, _, err := h.m.Start(ctx, hotplugSpec("slow")); err != nil {
		t.Fatal(err)
	}
	if _, err := h.m.AttachNIC(ctx, Key{Name: "slow"}, "", nil); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "starting") {
		t.Errorf("starting vm: %v", err)
	}
	if got := h.taps.list(); len(got) != 0 {
		t.Errorf("refusals made taps %q", got)
	}
}

// USB paths are checked before anything else: the one form, then a USB
// device node the caller may open.
func TestAttachUSBRefusals(t *testing.T) {
	h := newHotplugEnv(t)
	h.startRunning(hotplugSpec("hp"))
	ctx := context.Background()
	key := Key{Name: "hp"}
	for _, p := range []string{"", "/dev/null", "/dev/bus/usb/001", "/dev/bus/usb/001/../../../null",
		"/dev/bus/usb/1/2", "/dev/bus/usb/001/002/", "dev/bus/usb/001/002", "/dev/bus/usb/001/002,x"} {
		if _, err := h.m.AttachUSB(ctx, key, p, nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%q: %v, want invalid argument", p, err)
		}
	}
	// A path of the form with nothing there (this host has no USB bus
	// 255).
	if _, err := h.m.AttachUSB(ctx, key, "/dev/bus/usb/255/255", nil); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("no such device: %v", err)
	}
	if got := h.hl.callsSoFar(); len(got) != 0 {
		t.Errorf("refusals reached the hypervisor: %q", got)
	}
	if err := h.m.DetachUSB(ctx, key, 1); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("detach of nothing: %v", err)
	}
}

func TestFindUSBRefusals(t *testing.T) {
	for _, c := range []struct{ bus, port int }{{0, 1}, {1, 0}, {256, 1}, {1, 256}} {
		if _, err := FindUSB(c.bus, c.port, 0, 0); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%d-%d: %v, want invalid argument", c.bus, c.port, err)
		}
	}
	if _, err := FindUSB(255, 255, 0, 0); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("no such device: %v", err)
	}
}

func TestHotplugMAC(t *testing.T) {
	dir := "/var/lib/cabin/vms/0123456789abcdef"
	for slot := 0; slot < hypervisor.HotplugSlots; slot++ {
		mac := hotplugMAC(dir, slot)
		if err := hypervisor.CheckMAC(mac); err != nil || mac.String() != fmt.Sprintf("06:01:23:45:67:%02x", slot) {
			t.Errorf("slot %d: %s (%v)", slot, mac, err)
		}
	}
}

// A VM that is stopping takes no device; its NICs' taps still go once
// it is gone.
func TestHotplugWhileStopping(t *testing.T) {
	h := newHotplugEnv(t)
	h.launcher.configure = func(f *fakeVM) { f.obeyShutdown, f.obeyQuit, f.obeyTerm = false, false, false }
	h.startRunning(hotplugSpec("hp"))
	key := Key{Name: "hp"}
	if _, err := h.m.AttachNIC(context.Background(), key, "", nil); err != nil {
		t.Fatal(err)
	}
	events, cancel := watch(h.m)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- h.m.Stop(context.Background(), key) }()
	events.await(t, EventStopping, "hp")
	if _, err := h.m.AttachNIC(context.Background(), key, "", nil); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "stopping") {
		t.Errorf("attach while stopping: %v", err)
	}
	if err := h.m.DetachNIC(context.Background(), key, 10); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("detach while stopping: %v", err)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if got := h.taps.list(); len(got) != 0 {
		t.Errorf("taps of a stopped vm: %q", got)
	}
}

// A suspended VM's guest can neither find a new device nor let one go:
// plugging in or out is refused until it resumes, and changes nothing.
func TestHotplugWhileSuspended(t *testing.T) {
	h := newHotplugEnv(t)
	h.startRunning(hotplugSpec("hp"))
	key := Key{Name: "hp"}
	ctx := context.Background()
	nic, err := h.m.AttachNIC(ctx, key, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.m.Suspend(ctx, key); err != nil {
		t.Fatal(err)
	}
	if _, err := h.m.AttachNIC(ctx, key, "", nil); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "suspended") {
		t.Errorf("attach while suspended: %v", err)
	}
	if err := h.m.DetachNIC(ctx, key, nic.Bus); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("detach while suspended: %v", err)
	}
	if devs, _ := h.m.NetDevices(key); len(devs) != 1 {
		t.Errorf("devices after refused calls: %+v", devs)
	}
	if err := h.m.Resume(ctx, key); err != nil {
		t.Fatal(err)
	}
	if err := h.m.DetachNIC(ctx, key, nic.Bus); err != nil {
		t.Errorf("detach after resume: %v", err)
	}
}
