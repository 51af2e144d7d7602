package hostcgroup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/qemu"
	"github.com/cabinvm/cabin/internal/qemu/qemutest"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
	"github.com/cabinvm/cabin/internal/statedir/statedirtest"
	"github.com/cabinvm/cabin/internal/vmm"
)

// realGroup makes a group of the test's own in the host's cpu hierarchy
// and returns its name and the hierarchy; the group and everything below
// it are removed when the test ends. It skips the test, saying why, where
// cgroups cannot be made.
func realGroup(t *testing.T) (string, hierarchy) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to make cgroups")
	}
	h, err := findHierarchy(hostFS{})
	if err != nil {
		t.Skipf("no cpu cgroups here: %v", err)
	}
	group := fmt.Sprintf("cabin-test-%d-%d", os.Getpid(), time.Now().UnixNano()%1e9)
	if err := h.makeGroup(hostFS{}, group); err != nil {
		t.Skipf("cgroups are not writable here: %v", err)
	}
	t.Cleanup(func() { removeTree(t, h.path(group)) })
	return group, h
}

// removeTree removes the cgroup dir and those below it, deepest first.
func removeTree(t *testing.T, dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.IsDir() {
			removeTree(t, filepath.Join(dir, e.Name()))
		}
	}
	if err := unix.Rmdir(dir); err != nil && !errors.Is(err, unix.ENOENT) {
		t.Errorf("remove test cgroup %s: %v", dir, err)
	}
}

// openReal opens the resource on the host's cgroups, in group.
func openReal(t *testing.T, group, file string) *Resource {
	t.Helper()
	r, err := New(Options{Restrictions: file, Group: group, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	if r.Unavailable() != "" {
		t.Fatalf("unavailable: %s", r.Unavailable())
	}
	return r
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// cgroupOf is the cgroup of the cpu hierarchy h that task (a pid, or
// pid/task/tid) is in, from /proc.
func cgroupOf(t *testing.T, h hierarchy, task string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", task, "cgroup"))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		f := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(f) != 3 {
			continue
		}
		if (h.v2 && f[0] == "0" && f[1] == "") || (!h.v2 && slices.Contains(strings.Split(f[1], ","), "cpu")) {
			return f[2]
		}
	}
	t.Fatalf("/proc/%s/cgroup has no line for the cpu hierarchy: %s", task, b)
	return ""
}

// realFile is the cgroup file rel of h, without its newline.
func realFile(t *testing.T, h hierarchy, rel string) string {
	t.Helper()
	b, err := os.ReadFile(h.path(rel))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// realLimits is limits on the host's files.
func realLimits(t *testing.T, h hierarchy, group string, class Class) string {
	t.Helper()
	dir := filepath.Join(group, string(class))
	if h.v2 {
		return "weight=" + realFile(t, h, filepath.Join(dir, weightFile)) + " max=" + realFile(t, h, filepath.Join(dir, maxFile))
	}
	return "shares=" + realFile(t, h, filepath.Join(dir, sharesFile)) + " period=" + realFile(t, h, filepath.Join(dir, periodFile)) +
		" quota=" + realFile(t, h, filepath.Join(dir, quotaFile))
}

// On the host's cgroups: restrictions are written; a process goes into
// its VM's cgroup; the cgroup cannot be removed while it lives, and can
// once it was killed.
func TestRealCgroups(t *testing.T) {
	group, h := realGroup(t)
	ctx := context.Background()
	r := openReal(t, group, filepath.Join(t.TempDir(), "cpu.json"))
	t.Logf("cpu hierarchy %s (%s)", h.mount, h.version())
	if err := r.Restrict(ctx, Termina, Background); err != nil {
		t.Fatal(err)
	}
	if err := r.Restrict(ctx, ARCVM, BackgroundWithQuota); err != nil {
		t.Fatal(err)
	}
	if got := realLimits(t, h, group, Termina); got != want(h.v2, 64, 0) {
		t.Errorf("termina: %s", got)
	}
	if got := realLimits(t, h, group, ARCVM); got != want(h.v2, 64, DefaultQuota) {
		t.Errorf("arcvm: %s", got)
	}
	if err := r.RestrictQuota(ctx, ARCVM, 0); err == nil {
		t.Error("quota 0 accepted")
	}
	if got := realLimits(t, h, group, ARCVM); got != want(h.v2, 64, DefaultQuota) {
		t.Errorf("arcvm after a refused quota: %s", got)
	}

	sleep := exec.Command("sleep", "600")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer sleep.Process.Kill()
	hd := prepare(t, r, testVM(t, "a", vmm.VMTypeTermina))
	if err := hd.Start(ctx, fakeHV{pid: sleep.Process.Pid}); err != nil {
		t.Fatal(err)
	}
	leaf := "/" + filepath.Join(group, "termina", statedir.VMID("", "a"))
	if got := cgroupOf(t, h, strconv.Itoa(sleep.Process.Pid)); got != leaf {
		t.Errorf("the process is in %s, want %s", got, leaf)
	}
	r.removeWait = 100 * time.Millisecond
	if err := hd.Release(ctx); !errors.Is(err, unix.EBUSY) {
		t.Errorf("release with the process alive: %v", err)
	}
	sleep.Process.Signal(syscall.SIGKILL)
	sleep.Wait()
	r.removeWait = removeWait
	if err := hd.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(h.path(leaf)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the VM's cgroup after release: %v", err)
	}
}

// haltKernel gives every VM the test's halting kernel: QEMU runs, the
// guest does nothing, no agent reports in.
type haltKernel struct{ path string }

func (haltKernel) Name() string { return "kernel" }

func (k haltKernel) Prepare(_ context.Context, _ resource.VM, cfg *hypervisor.Config) (resource.Hold, error) {
	cfg.Kernel = k.path
	return noHold{}, nil
}

func (haltKernel) Adopt(context.Context, resource.VM, json.RawMessage) (resource.Hold, error) {
	return noHold{}, nil
}

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

// openCabind starts a "cabind" running real QEMU with the cgroups in
// group, as cabind's composition root builds it; it detaches from its VMs
// when the test ends, unless closed before.
func openCabind(t *testing.T, root statedir.Root, kernel, group string) (*vmm.Manager, *Resource) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	r := openReal(t, group, root.CPURestrictions())
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
	return m, r
}

// startVM starts the VM name of type typ and returns its QEMU's pid.
func startVM(t *testing.T, m *vmm.Manager, name string, typ vmm.VMType) int {
	t.Helper()
	info, _, err := m.Start(context.Background(), vmm.Spec{
		Key: vmm.Key{Name: name}, CPUs: 1, MemoryMiB: 64, Type: typ,
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

// assertIn checks that every thread of process pid is in the cgroup
// want.
func assertIn(t *testing.T, h hierarchy, pid int, want string) {
	t.Helper()
	tasks, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		if got := cgroupOf(t, h, filepath.Join(strconv.Itoa(pid), "task", task.Name())); got != want {
			t.Errorf("thread %s of QEMU %d is in %s, want %s", task.Name(), pid, got, want)
		}
	}
	if len(tasks) < 2 {
		t.Errorf("QEMU %d has %d threads: it should have its vCPU's and its main one at least", pid, len(tasks))
	}
}

// assertGone checks that the cgroup dir is removed, waiting a moment: the
// manager releases a VM's resources just after it reports it stopped.
func assertGone(t *testing.T, h hierarchy, dir string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := os.Stat(h.path(dir))
		if errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("cgroup %s still there (%v)", dir, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// With real QEMU through the VM manager, on the host's cgroups: every
// thread of a VM's QEMU is in its cgroup, below its class's, which holds
// the class's restriction; a QEMU killed with SIGKILL has its cgroup
// removed, and a new VM of the same name starts in a new one; a restarted
// cabind keeps the restrictions and the cgroups, puts an adopted QEMU
// back in its cgroup when someone moved it out, and removes the cgroup
// when the VM stops.
func TestRealQEMU(t *testing.T) {
	group, h := realGroup(t)
	qemutest.SkipWithoutQEMU(t)
	root := statedirtest.New(t)
	kernel := qemutest.HaltKernel(t)
	m, r := openCabind(t, root, kernel, group)
	events, cancel := m.Subscribe()
	defer cancel()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		m.StopAll(ctx, nil)
	})
	ctx := context.Background()
	if err := r.Restrict(ctx, Termina, Background); err != nil {
		t.Fatal(err)
	}

	leafA := filepath.Join(group, "termina", statedir.VMID("", "a"))
	pidA := startVM(t, m, "a", vmm.VMTypeTermina)
	assertIn(t, h, pidA, "/"+leafA)
	leafArc := filepath.Join(group, "arcvm", statedir.VMID("", "arc"))
	pidArc := startVM(t, m, "arc", vmm.VMTypeARC)
	assertIn(t, h, pidArc, "/"+leafArc)
	if err := r.Restrict(ctx, ARCVM, BackgroundWithQuota); err != nil {
		t.Fatal(err)
	}
	if got := realLimits(t, h, group, ARCVM); got != want(h.v2, 64, DefaultQuota) {
		t.Errorf("arcvm: %s", got)
	}
	if got := realLimits(t, h, group, Termina); got != want(h.v2, 64, 0) {
		t.Errorf("termina: %s", got)
	}

	// Killed: its cgroup goes once the manager sees it stop.
	if err := syscall.Kill(pidA, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	await(t, events, vmm.EventStopped, "a")
	assertGone(t, h, leafA)
	// A new VM of the same name starts, in a cgroup of its own again.
	pidA = startVM(t, m, "a", vmm.VMTypeTermina)
	assertIn(t, h, pidA, "/"+leafA)

	// cabind stops: the VMs and their cgroups stay.
	m.Close()
	assertIn(t, h, pidA, "/"+leafA)
	// Someone moves arc's QEMU out, and resets termina's weight.
	host := hostFS{}
	if err := host.WriteFile(h.path(procsFile), strconv.Itoa(pidArc)); err != nil {
		t.Fatal(err)
	}
	shares := filepath.Join(group, "termina", sharesFile)
	if h.v2 {
		shares = filepath.Join(group, "termina", weightFile)
	}
	reset := "1024"
	if h.v2 {
		reset = "100"
	}
	if err := host.WriteFile(h.path(shares), reset); err != nil {
		t.Fatal(err)
	}
	m, r = openCabind(t, root, kernel, group)
	events2, cancel2 := m.Subscribe()
	defer cancel2()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		m.StopAll(ctx, nil)
	})
	if got := realLimits(t, h, group, Termina); got != want(h.v2, 64, 0) {
		t.Errorf("termina after the restart: %s", got)
	}
	waitAdopted(t, m, "arc")
	assertIn(t, h, pidArc, "/"+leafArc)
	assertIn(t, h, pidA, "/"+leafA)

	stopCtx, cancelStop := context.WithTimeout(ctx, time.Minute)
	defer cancelStop()
	if err := m.Stop(stopCtx, vmm.Key{Name: "arc"}); err != nil {
		t.Fatal(err)
	}
	await(t, events2, vmm.EventStopped, "arc")
	assertGone(t, h, leafArc)
	if err := m.StopAll(stopCtx, nil); err != nil {
		t.Fatal(err)
	}
	assertGone(t, h, leafA)
	if got, want := r.Restrictions()[ARCVM], (Restriction{State: BackgroundWithQuota, Quota: DefaultQuota}); got != want {
		t.Errorf("arcvm %+v", got)
	}
}

// waitAdopted waits until the restarted manager took the VM name back.
func waitAdopted(t *testing.T, m *vmm.Manager, name string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		info, err := m.Get(vmm.Key{Name: name})
		if err == nil && info.Adopted && info.State != vmm.StateAdopting {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not adopted: %+v, %v", name, info, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
